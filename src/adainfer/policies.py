"""Stop policies: after each decoder layer, decide from a few features whether to exit.

AdaInfer (Fan et al., arXiv 2403.02181) trains a classic classifier on per-layer features
(`gap` = top-1 minus top-2 probability, `top_prob`, ...) labelled 1 where that layer's top-1
token already equals the gold answer. App. C of the paper compares an SVM (the default) with a
CRF, and the simplest policy is the fixed rule "stop when gap > 0.8".

Arrays, shared by every policy:
    X: (n_prompts, n_layers, n_features) float, columns exactly ``policy.features`` in order.
    y: (n_prompts, n_layers) in {0, 1}.
    predict(X): (n_prompts, n_layers) int, the *online* decision: the value at layer l only
    depends on layers 0..l, because that is all inference has seen when it must decide.

Persistence is a directory of ``config.json`` plus ``svm.skops`` (loaded by skops with an
explicit trusted-type list) or ``crf.crfsuite`` (sha256 checked before crfsuite reads it);
nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pycrfsuite
import skops.io
import sklearn_crfsuite
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from adainfer.decisions import check_first_check, first_accepted_layer, policy_first_check

CONFIG_NAME = "config.json"
SVM_FILE = "svm.skops"
CRF_FILE = "crf.crfsuite"
# The only types an svm.skops file may hold besides skops' own builtins/numpy defaults.
SVM_TRUSTED_TYPES = [f"{t.__module__}.{t.__qualname__}" for t in (Pipeline, StandardScaler, SVC)]
_CRF_BIAS = "_bias"  # crfsuite float features have no intercept of their own


class PolicyFileError(ValueError):
    """A saved policy directory is missing, malformed, corrupted or untrusted."""


class PolicyMismatchError(ValueError):
    """A saved policy belongs to a different model than the one it is loaded for."""


def _adainfer_version() -> str:
    try:
        return importlib.metadata.version("adainfer")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _check_features(features: Sequence[str]) -> tuple[str, ...]:
    names = () if isinstance(features, str) else tuple(features)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"features must be a non-empty tuple of unique names; got {features!r}")
    return names


def _check_X(X: Any, n_features: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must have shape (n_prompts, n_layers, n_features) with at least one "
                         f"prompt and layer; got shape {X.shape}")
    if X.shape[2] != n_features:
        raise ValueError(f"X has {X.shape[2]} features per layer but the policy uses {n_features}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    return X


def _check_y(y: Any, X: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != X.shape[:2]:
        raise ValueError(f"y must have shape (n_prompts, n_layers) = {X.shape[:2]}; got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y must be binary 0/1; got values {np.unique(y)[:10].tolist()}")
    return y.astype(np.int64)


def _check_both_classes(y: np.ndarray) -> None:
    if y.min() == y.max():
        if y[0, 0] == 1:
            why = ("every layer of every prompt already predicts the gold token, so there is "
                   "nothing to learn about when to stop; use harder prompts or "
                   "GapThresholdPolicy")
        else:
            why = ("no layer of any prompt ever predicts the gold token; check the answer-token "
                   "labels or use more/easier prompts")
        raise ValueError(f"y contains only label {int(y[0, 0])}: {why}")


def _check_trace(trace: Any, n_features: int) -> np.ndarray:
    trace = np.asarray(trace)
    if trace.ndim != 2 or trace.shape[0] == 0 or trace.shape[1] != n_features:
        raise ValueError(f"trace must have shape (n_layers_so_far >= 1, {n_features}); "
                         f"got {trace.shape}")
    return trace


class StopPolicy(BaseEstimator):
    """Base of all policies: ``save`` and the hooks `load_policy` uses; subclasses decide."""

    kind: ClassVar[str]

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


class SVMPolicy(StopPolicy):
    """Per-layer SVM (RBF by default) on standardised features: the paper's default policy.

    There is no ``predict_proba``: SVC's Platt scaling refits by internal cross-validation and
    can disagree with ``predict``; use ``decision_function`` (> 0 means exit) to trade accuracy
    for speed instead.
    """

    kind = "svm"

    def __init__(self, features: Sequence[str] = ("gap", "top_prob"), kernel: str = "rbf",
                 C: float = 1.0, class_weight: dict | str | None = None) -> None:
        self.features = features
        self.kernel = kernel
        self.C = C
        self.class_weight = class_weight

    def fit(self, X: Any, y: Any) -> SVMPolicy:
        """Fit on every (prompt, layer) row independently."""
        X = _check_X(X, len(_check_features(self.features)))
        y = _check_y(y, X)
        _check_both_classes(y)
        svc = SVC(kernel=self.kernel, C=self.C, class_weight=self.class_weight)
        rows = X.reshape(-1, X.shape[2])
        self.pipeline_ = make_pipeline(StandardScaler(), svc).fit(rows, y.ravel())
        self.n_layers_ = X.shape[1]
        self.n_features_in_ = X.shape[2]
        self._prepare_fast_path()
        self._learn_first_check(X)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed margin per (prompt, layer), shape (n_prompts, n_layers); > 0 means exit."""
        check_is_fitted(self)
        X = _check_X(X, self.n_features_in_)
        return self.pipeline_.decision_function(X.reshape(-1, X.shape[2])).reshape(X.shape[:2])

    def predict(self, X: Any) -> np.ndarray:
        """Online exit decisions (per row, so trivially online), shape (n_prompts, n_layers)."""
        return (self.decision_function(X) > 0).astype(np.int64)

    def should_exit(self, trace: Any) -> bool:
        """Decision after the last layer of ``trace`` (n_layers_so_far, n_features)."""
        return self._margin(trace) > 0

    def _margin(self, trace: Any) -> float:
        """Signed margin of the last row of ``trace``, without sklearn's per-call validation."""
        check_is_fitted(self)
        row = _check_trace(trace, self.n_features_in_)[-1]
        if self._fast_terms is None:
            return float(self.pipeline_.decision_function(row[None, :])[0])
        mean, scale, support, dual, intercept, gamma = self._fast_terms
        x = (row - mean) / scale
        if gamma is None:
            kernel = support @ x
        else:
            diff = support - x
            kernel = np.exp(-gamma * np.einsum("ij,ij->i", diff, diff))
        return float(dual @ kernel + intercept)

    def _prepare_fast_path(self) -> None:
        # sklearn's validation costs ~200 us per call, more than a small decoder layer; for the
        # linear/RBF kernels the margin is a few numpy ops (tests check it equals predict).
        scaler, svc = self.pipeline_[0], self.pipeline_[-1]
        if svc.kernel not in ("linear", "rbf"):
            self._fast_terms = None
            return
        gamma = svc._gamma if svc.kernel == "rbf" else None  # "scale" resolved at fit time
        self._fast_terms = (scaler.mean_, scaler.scale_, svc.support_vectors_,
                            svc.dual_coef_[0], svc.intercept_[0], gamma)

    def _save_state(self, directory: Path) -> dict:
        check_is_fitted(self)
        skops.io.dump(self.pipeline_, directory / SVM_FILE)
        return {}

    def _load_state(self, directory: Path, config: dict) -> None:
        path = directory / SVM_FILE
        if not path.is_file():
            raise PolicyFileError(f"missing {path}")
        try:
            pipeline = skops.io.load(path, trusted=SVM_TRUSTED_TYPES)
        except Exception as error:  # skops raises many types on garbage; all mean "bad file"
            message = " ".join(str(error).split())
            message = f"cannot load {path}: {type(error).__name__}: {message}"
            raise PolicyFileError(message) from None
        # skops also trusts its defaults (any sklearn estimator), so check the structure too.
        if (not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2
                or type(pipeline[0]) is not StandardScaler or type(pipeline[-1]) is not SVC
                or pipeline.n_features_in_ != len(self.features)):
            raise PolicyFileError(f"{path} does not hold StandardScaler+SVC over "
                                  f"{len(self.features)} features")
        self.pipeline_ = pipeline
        self.n_features_in_ = len(self.features)
        self._prepare_fast_path()

    @classmethod
    def _params_from_config(cls, params: dict) -> dict:
        if isinstance(params.get("class_weight"), dict):  # JSON turned the int keys into str
            params["class_weight"] = {int(k): v for k, v in params["class_weight"].items()}
        return params


class CRFPolicy(StopPolicy):
    """Linear-chain CRF over each prompt's layer sequence (App. C's alternative to the SVM).

    Early exit decides at layer l from layers 1..l alone, so the CRF is trained and decoded on
    prefixes: `fit` learns from every prefix 1..l of every training sequence, and the decision at
    layer l is P(y_l = 1 | layers 1..l) > 0.5, the marginal of the prefix's last label (a decision
    about that one label; the Viterbi path answers a question about the whole prefix). Later
    layers can never change an earlier decision.

    Why prefixes (benchmarks/results/crf_online_offline.md): crfsuite has no start or end
    transitions, so the last label of a prefix is scored by its state features and its incoming
    transition alone. Trained on whole sequences, the CRF kept "early layers are wrong" in the
    1 -> 0 transition (-3.0 on Gemma 3 270M 5-shot SST-2), which a prefix's last label never
    meets: layer 1 alone scored 0.24 higher as 1 than as 0 from its confident junk (mean gap 0.84),
    so the CRF exited there on all 200 eval prompts (-61 points), though its full-sequence path
    labels that layer 0 on every one. Trained on prefixes, it sees a sequence end at every depth.
    """

    kind = "crf"

    def __init__(self, features: Sequence[str] = ("gap", "top_prob"), c1: float = 0.1,
                 c2: float = 0.1, max_iterations: int = 100) -> None:
        self.features = features
        self.c1 = c1
        self.c2 = c2
        self.max_iterations = max_iterations

    def _items(self, rows: np.ndarray) -> list[dict[str, float]]:
        names = self.features
        return [{_CRF_BIAS: 1.0, **dict(zip(names, row))} for row in rows.tolist()]

    def fit(self, X: Any, y: Any) -> CRFPolicy:
        """Fit on every prefix 1..l of every layer sequence (l = 1..n_layers), the sequences
        `predict` decodes; labels become the crfsuite strings "0"/"1"."""
        X = _check_X(X, len(_check_features(self.features)))
        y = _check_y(y, X)
        _check_both_classes(y)
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / CRF_FILE
            crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=self.c1, c2=self.c2,
                                       max_iterations=self.max_iterations,
                                       model_filename=str(model_path))
            items, labels = [], []
            for seq, seq_labels in zip(X, y):
                seq_items, seq_tags = self._items(seq), [str(v) for v in seq_labels]
                for end in range(1, len(seq_items) + 1):
                    items.append(seq_items[:end])
                    labels.append(seq_tags[:end])
            crf.fit(items, labels)
            model_bytes = model_path.read_bytes()
        self._open_tagger(model_bytes)
        self.n_layers_ = X.shape[1]
        self.n_features_in_ = X.shape[2]
        self._learn_first_check(X)
        return self

    def _open_tagger(self, model_bytes: bytes) -> None:
        tagger = pycrfsuite.Tagger()
        tagger.open_inmemory(model_bytes)  # ValueError on an invalid model
        if sorted(tagger.labels()) != ["0", "1"]:
            raise ValueError(f"CRF model labels are {tagger.labels()}, expected ['0', '1']")
        self.model_bytes_ = model_bytes  # crfsuite reads from this buffer: keep it alive
        self._tagger = tagger

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # may be the live __dict__: never mutate it
        state.pop("_tagger", None)  # a C object; rebuilt from model_bytes_ (deepcopy, clone)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "model_bytes_" in state:
            self._open_tagger(state["model_bytes_"])

    def predict(self, X: Any) -> np.ndarray:
        """Online exit decisions, shape (n_prompts, n_layers): one prefix tagged per layer."""
        check_is_fitted(self)
        X = _check_X(X, self.n_features_in_)
        decisions = np.empty(X.shape[:2], dtype=np.int64)
        for prompt, seq in enumerate(X):
            items = self._items(seq)
            for layer in range(len(items)):
                decisions[prompt, layer] = self._exit_last(items[: layer + 1])
        return decisions

    def should_exit(self, trace: Any) -> bool:
        """Decision after the last layer of ``trace`` (n_layers_so_far, n_features)."""
        check_is_fitted(self)
        trace = _check_trace(trace, self.n_features_in_)
        return self._exit_last(self._items(trace))

    def _exit_last(self, items: list[dict[str, float]]) -> bool:
        """P(last label = 1 | items) > 0.5, by forward-backward over the prefix ``items``."""
        self._tagger.set(items)
        return self._tagger.marginal("1", len(items) - 1) > 0.5

    def _save_state(self, directory: Path) -> dict:
        check_is_fitted(self)
        (directory / CRF_FILE).write_bytes(self.model_bytes_)
        return {"crf_sha256": hashlib.sha256(self.model_bytes_).hexdigest()}

    def _load_state(self, directory: Path, config: dict) -> None:
        path = directory / CRF_FILE
        if not path.is_file():
            raise PolicyFileError(f"missing {path}")
        model_bytes = path.read_bytes()
        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest != config.get("crf_sha256"):
            raise PolicyFileError(f"{path} is corrupted: sha256 {digest} != "
                                  f"{config.get('crf_sha256')} recorded in {CONFIG_NAME}")
        try:
            self._open_tagger(model_bytes)
        except ValueError as error:
            raise PolicyFileError(f"cannot open {path}: {error}") from None
        self.n_features_in_ = len(self.features)


class GapThresholdPolicy(StopPolicy):
    """The paper's fixed rule: exit once ``feature`` (gap) exceeds ``threshold``.

    Stateless: ``fit`` only validates shapes, and predicting without it is allowed.
    """

    kind = "gap"

    def __init__(self, threshold: float = 0.8, feature: str = "gap") -> None:
        self.threshold = threshold
        self.feature = feature

    @property
    def features(self) -> tuple[str]:
        """The single column X must hold."""
        return (self.feature,)

    def fit(self, X: Any, y: Any = None) -> GapThresholdPolicy:
        """Check X (and y if given) have the right shapes; nothing is learned."""
        X = _check_X(X, 1)
        if y is not None:
            _check_y(y, X)
        self.n_layers_ = X.shape[1]
        self.n_features_in_ = 1
        self._learn_first_check(X)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """``feature - threshold`` per (prompt, layer); > 0 means exit."""
        return _check_X(X, 1)[..., 0] - self.threshold

    def predict(self, X: Any) -> np.ndarray:
        """Online exit decisions (per row), shape (n_prompts, n_layers)."""
        return (self.decision_function(X) > 0).astype(np.int64)

    def should_exit(self, trace: Any) -> bool:
        """Decision after the last layer of ``trace`` (n_layers_so_far, 1)."""
        return bool(_check_trace(trace, 1)[-1, 0] > self.threshold)


_KINDS: dict[str, type[StopPolicy]] = {
    policy.kind: policy for policy in (SVMPolicy, CRFPolicy, GapThresholdPolicy)
}


def register_policy_kind(cls: type[StopPolicy]) -> type[StopPolicy]:
    """Let `load_policy` rebuild policies of `cls.kind` (for policy classes in other modules)."""
    _KINDS[cls.kind] = cls
    return cls


def _read_config(directory: Path) -> dict:
    import adainfer.calibration  # noqa: F401  registers its policy kind before configs are read

    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise PolicyFileError(f"policy directory {directory} does not exist")
    if not path.is_file():
        raise PolicyFileError(f"missing {path}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PolicyFileError(f"{path} is not valid JSON: {error}") from None
    keys = ("kind", "params", "features", "model_identity", "n_layers")
    if (not isinstance(config, dict) or any(k not in config for k in keys)
            or not isinstance(config["params"], dict)
            or not isinstance(config["model_identity"], dict)):
        raise PolicyFileError(f"{path} must be an object with keys {', '.join(keys)} "
                              f"(params and model_identity objects)")
    if not isinstance(config["kind"], str) or config["kind"] not in _KINDS:
        raise PolicyFileError(f"{path}: unknown policy kind {config['kind']!r}; "
                              f"known: {', '.join(sorted(_KINDS))}")
    return config


def _check_identity(saved: dict, expected: dict, directory: Path) -> None:
    expected = json.loads(json.dumps(expected))  # compare as stored (tuples -> lists, ...)
    missing = "<missing>"
    diffs = [f"{key}: saved {saved.get(key, missing)!r}, expected {expected.get(key, missing)!r}"
             for key in sorted(saved.keys() | expected.keys())
             if saved.get(key, missing) != expected.get(key, missing)]
    if diffs:
        raise PolicyMismatchError(f"policy in {directory} was trained for another model: "
                                  + "; ".join(diffs))


def load_policy(directory: str | Path, expected_identity: dict | None = None) -> StopPolicy:
    """Load a policy written by ``save``; fail before use if it is broken or for another model.

    Raises PolicyFileError for a missing/corrupt/untrusted directory and PolicyMismatchError
    when ``expected_identity`` differs from the saved ``model_identity``.
    """
    directory = Path(directory)
    config = _read_config(directory)
    if expected_identity is not None:
        _check_identity(config["model_identity"], expected_identity, directory)
    cls = _KINDS[config["kind"]]
    params = dict(config["params"])
    try:
        if "features" in params:
            params["features"] = tuple(params["features"])
        policy = cls(**cls._params_from_config(params))
    except (TypeError, ValueError) as error:
        raise PolicyFileError(f"{directory / CONFIG_NAME}: bad params for {cls.__name__}: "
                              f"{error}") from None
    if list(policy.features) != config["features"]:
        raise PolicyFileError(f"{directory / CONFIG_NAME}: features {config['features']} do not "
                              f"match params {list(policy.features)}")
    policy._load_state(directory, config)
    if config["n_layers"] is not None:
        policy.n_layers_ = config["n_layers"]
        if "first_check" in config:  # older policies have none: they check every layer
            try:
                policy.first_check_ = check_first_check(config["first_check"], config["n_layers"])
            except ValueError as error:
                raise PolicyFileError(f"{directory / CONFIG_NAME}: {error}") from None
    return policy
