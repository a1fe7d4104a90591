"""The paper's default stop policy: a per-layer SVM on standardised features."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import skops.io
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from adainfer.policies.base import (PolicyFileError, StopPolicy, check_archive_size, check_both_classes,
                                    check_features, check_number, check_trace, check_X, check_y)

SVM_FILE = "svm.skops"
# The only types an svm.skops file may hold besides skops' own builtins/numpy defaults.
SVM_TRUSTED_TYPES = [f"{t.__module__}.{t.__qualname__}" for t in (Pipeline, StandardScaler, SVC)]
SVM_KERNELS = ("linear", "rbf", "poly", "sigmoid")


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

    def check_params(self) -> None:
        check_features(self.features)
        if self.kernel not in SVM_KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(SVM_KERNELS)}; got {self.kernel!r}")
        check_number("C", self.C, minimum=1e-12)
        weights = self.class_weight
        if not (weights is None or weights == "balanced" or (
                isinstance(weights, dict) and set(weights) <= {0, 1}
                and all(not isinstance(v, bool) and isinstance(v, (int, float)) and np.isfinite(v) and v > 0
                        for v in weights.values()))):
            raise ValueError(f"class_weight must be None, 'balanced' or {{0: w, 1: w}} with w > 0; got {weights!r}")

    def fit(self, X: Any, y: Any) -> SVMPolicy:
        """Fit on every (prompt, layer) row independently."""
        self.check_params()
        X = check_X(X, len(check_features(self.features)))
        y = check_y(y, X)
        check_both_classes(y)
        self._fit_pipeline(X, y)
        self.n_layers_ = X.shape[1]
        self._learn_first_check(X)
        return self

    def _fit_pipeline(self, X: np.ndarray, y: np.ndarray) -> None:
        """The scaler + SVC on every (prompt, layer) row of checked X (prompts, layers, columns) and 0/1 y."""
        svc = SVC(kernel=self.kernel, C=self.C, class_weight=self.class_weight)
        rows = X.reshape(-1, X.shape[2])
        self.pipeline_ = make_pipeline(StandardScaler(), svc).fit(rows, y.ravel())
        self.n_features_in_ = X.shape[2]
        self._prepare_fast_path()

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed margin per (prompt, layer), shape (n_prompts, n_layers); > 0 means exit."""
        check_is_fitted(self)
        X = check_X(X, self.n_features_in_)
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
        row = check_trace(trace, self.n_features_in_)[-1]
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
        check_archive_size(path)
        try:
            pipeline = skops.io.load(path, trusted=SVM_TRUSTED_TYPES)
        except Exception as error:  # skops raises many types on garbage; all mean "bad file"
            message = " ".join(str(error).split())
            message = f"cannot load {path}: {type(error).__name__}: {message}"
            raise PolicyFileError(message) from None
        width = self._scorer_width(config)
        problem = _fitted_pipeline_problem(pipeline, width, self.kernel)
        if problem:
            raise PolicyFileError(f"{path} does not hold a fitted StandardScaler+SVC over "
                                  f"{width} features: {problem}")
        self.pipeline_ = pipeline
        self.n_features_in_ = width
        self._prepare_fast_path()

    def _scorer_width(self, config: dict) -> int:
        """Columns the saved scorer reads per layer: the features themselves."""
        return len(self.features)

    @classmethod
    def _params_from_config(cls, params: dict) -> dict:
        if isinstance(params.get("class_weight"), dict):  # JSON turned the int keys into str
            params["class_weight"] = {int(k): v for k, v in params["class_weight"].items()}
        return params


def _fitted_pipeline_problem(pipeline: Any, n_features: int, kernel: str) -> str | None:
    """What is wrong with a loaded pipeline, or None: skops also trusts its defaults (any sklearn
    estimator), and a crafted file can hold arrays of any shape, so every array `_margin` reads is checked."""
    if (not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2
            or type(pipeline[0]) is not StandardScaler or type(pipeline[-1]) is not SVC):
        return "another kind of model"
    scaler, svc = pipeline[0], pipeline[-1]
    if svc.kernel != kernel:
        return f"kernel {svc.kernel!r}, config says {kernel!r}"
    support = getattr(svc, "support_vectors_", None)
    arrays = {"mean_": (getattr(scaler, "mean_", None), (n_features,)),
              "scale_": (getattr(scaler, "scale_", None), (n_features,)),
              "support_vectors_": (support, (len(support) if isinstance(support, np.ndarray) else -1, n_features)),
              "dual_coef_": (getattr(svc, "dual_coef_", None), (1, len(support) if isinstance(support, np.ndarray) else -1)),
              "intercept_": (getattr(svc, "intercept_", None), (1,)),
              "classes_": (getattr(svc, "classes_", None), (2,))}
    for name, (array, shape) in arrays.items():
        if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype.kind not in "fiu":
            return f"{name} is {getattr(array, 'shape', type(array).__name__)}, expected shape {shape}"
        if not np.isfinite(array).all():
            return f"{name} holds NaN or infinite values"
    if svc.classes_.tolist() != [0, 1] or (scaler.scale_ <= 0).any() or len(support) == 0:
        return "classes are not [0, 1], a scale is not positive or there are no support vectors"
    if getattr(pipeline, "n_features_in_", None) != n_features:
        return f"n_features_in_ is {getattr(pipeline, 'n_features_in_', None)}"
    gamma = getattr(svc, "_gamma", None)
    if kernel != "linear" and (isinstance(gamma, bool) or not isinstance(gamma, (int, float))
                               or not np.isfinite(gamma) or gamma <= 0):
        return f"_gamma is {gamma!r}, expected a positive number"
    for name in ("_intercept_", "_dual_coef_", "_n_support", "support_", "fit_status_", "shape_fit_"):
        if not hasattr(svc, name):
            return f"the SVC lacks {name}"
    return None
