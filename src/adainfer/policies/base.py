"""What every stop policy is: the `StopPolicy` base class, its file format and shared array checks.

AdaInfer (Fan et al., arXiv 2403.02181) trains a classic classifier on per-layer features
(`gap` = top-1 minus top-2 probability, `top_prob`, ...) labelled 1 where that layer's top-1
token already equals the gold answer. App. C of the paper compares an SVM (the default,
`policies.svm`) with a CRF (`policies.crf`), and the simplest policy is the fixed rule "stop when
gap > 0.8" (`policies.gap`).

Arrays, shared by every policy:
    X: (n_prompts, n_layers, n_features) float, columns exactly ``policy.features`` in order.
    y: (n_prompts, n_layers) in {0, 1}.
    predict(X): (n_prompts, n_layers) int, the *online* decision: the value at layer l only
    depends on layers 0..l, because that is all inference has seen when it must decide.

Persistence is a directory of ``config.json`` plus ``svm.skops`` (loaded by skops with an
explicit trusted-type list) or ``crf.crfsuite`` (sha256 checked before crfsuite reads it);
nothing is ever unpickled. `StopPolicy.save` writes it; `policies.io.load_policy` reads it back.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from sklearn.base import BaseEstimator

from adainfer.engine.schedule import policy_first_check
from adainfer.policies.decisions import first_accepted_layer

CONFIG_NAME = "config.json"


class PolicyFileError(ValueError):
    """A saved policy directory is missing, malformed, corrupted or untrusted."""


class PolicyMismatchError(ValueError):
    """A saved policy belongs to a different model than the one it is loaded for."""


def _adainfer_version() -> str:
    try:
        return importlib.metadata.version("adainfer")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def check_features(features: Sequence[str]) -> tuple[str, ...]:
    """A policy's feature names as a non-empty tuple of unique strings."""
    names = () if isinstance(features, str) else tuple(features)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"features must be a non-empty tuple of unique names; got {features!r}")
    return names


def check_X(X: Any, n_features: int) -> np.ndarray:
    """X as finite float64 of shape (n_prompts >= 1, n_layers >= 1, n_features)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must have shape (n_prompts, n_layers, n_features) with at least one "
                         f"prompt and layer; got shape {X.shape}")
    if X.shape[2] != n_features:
        raise ValueError(f"X has {X.shape[2]} features per layer but the policy uses {n_features}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    return X


def check_y(y: Any, X: np.ndarray) -> np.ndarray:
    """y as int64 0/1 labels of shape (n_prompts, n_layers), matching X."""
    y = np.asarray(y)
    if y.shape != X.shape[:2]:
        raise ValueError(f"y must have shape (n_prompts, n_layers) = {X.shape[:2]}; got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y must be binary 0/1; got values {np.unique(y)[:10].tolist()}")
    return y.astype(np.int64)


def check_both_classes(y: np.ndarray) -> None:
    """Refuse labels of one class, saying what that means for the traces."""
    if y.min() == y.max():
        if y[0, 0] == 1:
            why = ("every layer of every prompt already predicts the gold token, so there is "
                   "nothing to learn about when to stop; use harder prompts or "
                   "GapThresholdPolicy")
        else:
            why = ("no layer of any prompt ever predicts the gold token; check the answer-token "
                   "labels or use more/easier prompts")
        raise ValueError(f"y contains only label {int(y[0, 0])}: {why}")


def check_trace(trace: Any, n_features: int) -> np.ndarray:
    """A live trace of shape (n_layers_so_far >= 1, n_features)."""
    trace = np.asarray(trace)
    if trace.ndim != 2 or trace.shape[0] == 0 or trace.shape[1] != n_features:
        raise ValueError(f"trace must have shape (n_layers_so_far >= 1, {n_features}); "
                         f"got {trace.shape}")
    return trace


class StopPolicy(BaseEstimator):
    """Base of all policies: ``save`` and the hooks `load_policy` uses; subclasses `fit`, `predict` and
    `should_exit` (asked after each checked layer by `engine.walk`)."""

    kind: ClassVar[str]

    features: Sequence[str]
    # True for a policy that learns the model's own stable answers (`decisions.stable_labels`)
    # rather than gold labels: `eval.replay.training_labels` gives it those.
    label_free: ClassVar[bool] = False

    def predict(self, X: Any) -> np.ndarray:
        """Online exit decisions (n_prompts, n_layers) for features X (n_prompts, n_layers, n_features)."""
        raise NotImplementedError

    def should_exit(self, trace: Any) -> bool:
        """Decision after the last layer of ``trace`` (n_layers_so_far, n_features): what a live walk asks."""
        raise NotImplementedError

    def save(self, directory: str | Path, model_identity: dict) -> Path:
        """Write ``config.json`` (+ the model file) so `load_policy` can check what it loads."""
        if not isinstance(model_identity, dict):
            raise ValueError(f"model_identity must be a dict; got {type(model_identity).__name__}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "kind": self.kind,
            "params": self.get_params(deep=False),
            "features": list(self.features),
            "model_identity": model_identity,
            "n_layers": getattr(self, "n_layers_", None),
            "first_check": policy_first_check(self),
            "adainfer_version": _adainfer_version(),
        }
        config.update(self._save_state(directory))  # model file first: no config, no policy
        try:
            text = json.dumps(config, indent=2, sort_keys=True)
        except TypeError as error:
            message = f"params and model_identity must be JSON-serialisable: {error}"
            raise ValueError(message) from None
        (directory / CONFIG_NAME).write_text(text + "\n")
        return directory

    def _learn_first_check(self, X: np.ndarray) -> None:
        """The check schedule, `first_check_`: the earliest layer accepted on any training prompt."""
        self.first_check_ = first_accepted_layer(self.predict(X))

    def _save_state(self, directory: Path) -> dict:
        return {}

    def _load_state(self, directory: Path, config: dict) -> None:
        return None

    @classmethod
    def _params_from_config(cls, params: dict) -> dict:
        return params
