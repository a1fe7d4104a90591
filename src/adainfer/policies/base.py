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
explicit trusted-type list, after a size check) or ``crf.npz`` (plain float arrays, read with
``allow_pickle=False``); nothing is ever unpickled and no file reaches a C parser unchecked.
`config.json` records the sha256 of every other part, so parts of different saves never mix.
`StopPolicy.save` writes the whole directory beside its destination and renames it into place;
`policies.io.load_policy` reads it back and validates every field.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from filelock import FileLock
from sklearn.base import BaseEstimator

from adainfer.engine.files import check_output_directory, lock_path
from adainfer.engine.schedule import policy_first_check
from adainfer.policies.decisions import first_accepted_layer

CONFIG_NAME = "config.json"
# A saved part expands to at most this many bytes: policies hold a few thousand numbers, and a
# crafted archive must be refused before it is inflated, not after.
MAX_PART_BYTES = 64 * 2**20


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


def check_number(name: str, value: Any, minimum: float | None = None, integer: bool = False) -> None:
    """Refuse a parameter that is not a finite real number (bools and strings included) >= `minimum`."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not np.isfinite(value) or (
            minimum is not None and value < minimum):
        what = "an integer" if integer else "a finite number"
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be {what}{bound}; got {value!r}")


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

    def save(self, directory: str | Path, model_identity: dict,
             candidate_ids: Sequence[int] | None = None, extra_parts: dict[str, str | bytes] | None = None) -> Path:
        """Write ``config.json`` (+ the model file) so `load_policy` can check what it loads.

        The directory is written beside ``directory`` and renamed into place under a lock, so a
        reader sees the old policy or the new one, never parts of both. `candidate_ids`, the
        closed answer set's first tokens a policy on ``cand_*`` features was trained with, is
        recorded so that predicting with another answer set is refused. `extra_parts` (file name ->
        text or bytes, e.g. a fitted classifier's card and calibration arrays) are written and hashed with the other parts.
        """
        if not isinstance(model_identity, dict):
            raise ValueError(f"model_identity must be a dict; got {type(model_identity).__name__}")
        directory = Path(directory)
        check_output_directory(directory, CONFIG_NAME)
        config = {
            "kind": self.kind,
            "params": self.get_params(deep=False),
            "features": list(self.features),
            "model_identity": model_identity,
            "n_layers": getattr(self, "n_layers_", None),
            "first_check": policy_first_check(self),
            "candidate_ids": [int(i) for i in candidate_ids] if candidate_ids else None,
            "adainfer_version": _adainfer_version(),
        }
        directory.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path(directory)):
            staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
            staging.chmod(0o755)  # mkdtemp's 0o700 would hide the policy from other users
            try:
                config.update(self._save_state(staging))
                for name, content in (extra_parts or {}).items():
                    data = content if isinstance(content, bytes) else content.encode("utf-8")
                    (staging / name).write_bytes(data)
                config["parts"] = {part.name: file_sha256(part) for part in sorted(staging.iterdir())}
                try:
                    text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"params and model_identity must be JSON-serialisable: {error}") from None
                (staging / CONFIG_NAME).write_text(text + "\n")
                _replace_directory(staging, directory)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return directory

    def _learn_first_check(self, X: np.ndarray) -> None:
        """The check schedule, `first_check_`: the earliest layer accepted on any training prompt."""
        self.first_check_ = first_accepted_layer(self.predict(X))

    def check_params(self) -> None:
        """Raise ValueError for a constructor argument no fit or load could use (called by both)."""

    def _save_state(self, directory: Path) -> dict:
        return {}

    def _load_state(self, directory: Path, config: dict) -> None:
        return None

    @classmethod
    def _params_from_config(cls, params: dict) -> dict:
        return params


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _replace_directory(staging: Path, directory: Path) -> None:
    """Move the finished `staging` folder to `directory`, replacing an older policy there.

    A directory cannot be replaced in one step: the old one is renamed aside first, so a crash in
    between leaves it as ``.<name>.old`` next to a missing `directory`, never a mixed one.
    """
    for part in staging.iterdir():
        with open(part, "rb") as stream:
            os.fsync(stream.fileno())
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.rename(directory, old)
    os.rename(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


def check_archive_size(path: Path) -> None:
    """Refuse a zip archive (`.npz`, `.skops`) whose members would inflate past `MAX_PART_BYTES`."""
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise PolicyFileError(f"{path} is not a readable archive: {error}") from None
    if inflated > MAX_PART_BYTES:
        raise PolicyFileError(f"{path} would inflate to {inflated} bytes (limit {MAX_PART_BYTES}); "
                              f"a policy is a few kilobytes")


def read_npz_arrays(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Exactly the arrays `shapes` names from the `.npz` at `path`: finite float64 of those shapes.

    Read with ``allow_pickle=False``; anything else in the file, or a wrong name, dtype or shape,
    is a `PolicyFileError`.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(f"missing {path}")
    check_archive_size(path)
    try:
        with np.load(path, allow_pickle=False) as stored:
            if sorted(stored.files) != sorted(shapes):
                raise PolicyFileError(f"{path} holds arrays {sorted(stored.files)}, expected {sorted(shapes)}")
            arrays = {name: stored[name] for name in shapes}
    except PolicyFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise PolicyFileError(f"cannot read {path}: {error}") from None
    for name, shape in shapes.items():
        array = arrays[name]
        if array.dtype != np.float64 or array.shape != shape or not np.isfinite(array).all():
            raise PolicyFileError(f"{path}: {name} must be finite float64 of shape {shape}; "
                                  f"got {array.dtype} {array.shape}")
    return arrays
