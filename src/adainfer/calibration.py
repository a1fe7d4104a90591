"""Stopping with a guarantee: choose an exit threshold so that few answers change, with confidence.

The user states a risk: at most ``epsilon`` of answers may differ from the full model's, with
probability at least ``1 - delta`` over the calibration sample. The reference is the model's own
last-layer answer, so calibration needs no labels.

Method: Learn then Test (Angelopoulos, Bates, Candès, Jordan and Lei, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control", arXiv 2110.01052), with fixed-sequence
testing. Thresholds are ordered from the most cautious to the most aggressive, fixed before
looking at the calibration data. For each one, the null hypothesis "its risk exceeds epsilon"
is tested with the exact binomial p-value of the observed number of changed answers among the n
calibration prompts (the loss is 0/1, so the count is Binomial(n, risk)). Testing stops at the
first threshold that is not rejected; the last rejected one is returned. Fixed-sequence testing
controls the family-wise error at delta, so P(risk(chosen) <= epsilon) >= 1 - delta for i.i.d.
prompts from the calibration distribution. When no threshold passes, the policy never exits
early, which is always safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binom

from adainfer.evaluate import exit_layers, oracle_exit_layers, stable_labels
from adainfer.policies import SVMPolicy, register_policy_kind


@dataclass(frozen=True)
class RiskCertificate:
    """What was promised and what the calibration sample showed."""

    epsilon: float
    delta: float
    calibration_prompts: int
    threshold: float  # +inf: no threshold passed, the policy never exits early
    empirical_risk: float  # fraction of calibration answers that differ from the full model's
    p_value: float  # of "risk > epsilon" at the chosen threshold (1.0 when none passed)
    thresholds_tested: int

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["threshold"] = None if np.isinf(self.threshold) else self.threshold
        return values


def binomial_p_value(changed: int, n: int, epsilon: float) -> float:
    """P(Binomial(n, epsilon) <= changed): small when a risk above epsilon would rarely show so few."""
    return float(binom.cdf(changed, n, epsilon))


def learn_then_test(scores: np.ndarray, top1: np.ndarray, epsilon: float, delta: float,
                    min_layer: int = 1, grid_size: int = 200) -> RiskCertificate:
    """The most aggressive threshold on `scores` (prompts, layers) whose risk is certified <= epsilon.

    A prompt exits at the first layer >= `min_layer` whose score exceeds the threshold; its loss is
    1 when that layer's top-1 differs from the last layer's. The grid is the calibration scores'
    quantiles, tested from the highest (most cautious) down.
    """
    if not 0 < epsilon < 1 or not 0 < delta < 1:
        raise ValueError(f"epsilon and delta must be in (0, 1), got {epsilon} and {delta}")
    if scores.shape != top1.shape or scores.ndim != 2 or len(scores) == 0:
        raise ValueError(f"scores {scores.shape} and top1 {top1.shape} must be the same (prompts, layers)")
    n = len(scores)
    eligible = scores[:, min_layer - 1:-1]
    grid = np.unique(np.quantile(eligible, np.linspace(0, 1, grid_size)))[::-1]
    chosen = RiskCertificate(epsilon, delta, n, float("inf"), 0.0, 1.0, 0)
    for tested, threshold in enumerate(grid, start=1):
        changed = int(_changed(scores, top1, threshold, min_layer).sum())
        p_value = binomial_p_value(changed, n, epsilon)
        if p_value > delta:
            return RiskCertificate(**{**asdict(chosen), "thresholds_tested": tested})
        chosen = RiskCertificate(epsilon, delta, n, float(threshold), changed / n, p_value, tested)
    return chosen


def exits_at(scores: np.ndarray, threshold: float, min_layer: int = 1) -> np.ndarray:
    """Exit layer (1-based) per prompt when exiting at the first layer >= `min_layer` scoring above `threshold`."""
    decisions = scores > threshold
    decisions[:, : min_layer - 1] = False
    return exit_layers(decisions)


def _changed(scores: np.ndarray, top1: np.ndarray, threshold: float, min_layer: int) -> np.ndarray:
    exits = exits_at(scores, threshold, min_layer)
    return top1[np.arange(len(exits)), exits - 1] != top1[:, -1]


@register_policy_kind
class CalibratedPolicy(SVMPolicy):
    """An SVM scorer trained to recognise stable layers, with a threshold certified by `calibrate`.

    `fit(X, top1)` needs no gold labels: it learns "this layer's top-1 is already the final one for
    good" from full-depth traces. `calibrate(X, top1, epsilon, delta)` then picks the exit threshold
    on held-out traces with Learn then Test. Before `calibrate` it behaves like the plain SVM.
    """

    kind = "calibrated-svm"

    def __init__(self, features: Sequence[str] = ("gap", "top_prob", "depth"), kernel: str = "rbf",
                 C: float = 1.0, class_weight: dict | str | None = None, min_layer: int = 1) -> None:
        super().__init__(features, kernel, C, class_weight)
        self.min_layer = min_layer

    def fit(self, X: Any, y: Any) -> CalibratedPolicy:
        """`y` is either top-1 ids (prompts, layers), turned into stability labels, or 0/1 labels."""
        y = np.asarray(y)
        labels = y if set(np.unique(y)) <= {0, 1} else stable_labels(y)
        super().fit(X, labels)
        self.threshold_ = 0.0
        return self

    def calibrate(self, X: Any, top1: np.ndarray, epsilon: float, delta: float) -> RiskCertificate:
        """Set `threshold_` from calibration traces X and their top-1 ids; returns the certificate."""
        certificate = learn_then_test(self.margins(X), np.asarray(top1), epsilon, delta, self.min_layer)
        self.threshold_ = certificate.threshold
        self.certificate_ = certificate
        return certificate

    def margins(self, X: Any) -> np.ndarray:
        """The scorer's SVM margin per (prompt, layer), before any threshold: what calibration ranks."""
        return super().decision_function(X)

    def decision_function(self, X: Any) -> np.ndarray:
        margin = self.margins(X) - self.threshold_
        margin[:, : self.min_layer - 1] = -np.inf
        return margin

    def should_exit(self, trace: Any) -> bool:
        if len(trace) < self.min_layer:
            return False
        return self._margin(trace) > self.threshold_

    def _save_state(self, directory: Path) -> dict:
        state = super()._save_state(directory)
        state["calibration"] = {"threshold": None if np.isinf(self.threshold_) else self.threshold_,
                                "certificate": getattr(self, "certificate_", None) and self.certificate_.to_dict()}
        return state

    def _load_state(self, directory: Path, config: dict) -> None:
        super()._load_state(directory, config)
        calibration = config.get("calibration") or {}
        threshold = calibration.get("threshold")
        self.threshold_ = float("inf") if threshold is None else float(threshold)
        if calibration.get("certificate"):
            record = dict(calibration["certificate"])
            record["threshold"] = self.threshold_
            self.certificate_ = RiskCertificate(**record)
