"""The paper's fixed rule: stop once the gap (top-1 minus top-2 probability) exceeds a threshold."""

from __future__ import annotations

from typing import Any

import numpy as np

from adainfer.policies.base import StopPolicy, check_number, check_trace, check_X, check_y


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

    def check_params(self) -> None:
        check_number("threshold", self.threshold)
        if not isinstance(self.feature, str) or not self.feature:
            raise ValueError(f"feature must be a feature name; got {self.feature!r}")

    def fit(self, X: Any, y: Any = None) -> GapThresholdPolicy:
        """Check X (and y if given) have the right shapes; nothing is learned."""
        self.check_params()
        X = check_X(X, 1)
        if y is not None:
            check_y(y, X)
        self.n_layers_ = X.shape[1]
        self.n_features_in_ = 1
        self._learn_first_check(X)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """``feature - threshold`` per (prompt, layer); > 0 means exit."""
        return check_X(X, 1)[..., 0] - self.threshold

    def predict(self, X: Any) -> np.ndarray:
        """Online exit decisions (per row), shape (n_prompts, n_layers)."""
        return (self.decision_function(X) > 0).astype(np.int64)

    def should_exit(self, trace: Any) -> bool:
        """Decision after the last layer of ``trace`` (n_layers_so_far, 1)."""
        return bool(check_trace(trace, 1)[-1, 0] > self.threshold)
