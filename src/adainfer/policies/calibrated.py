"""Stopping with a guarantee: choose an exit threshold so that few answers change, with confidence.

The user states a risk: at most ``epsilon`` of answers may differ from the full model's, with
probability at least ``1 - delta`` over the calibration sample. The reference is the model's own
last-layer answer, so calibration needs no labels.

Method: Learn then Test (Angelopoulos, Bates, Candès, Jordan and Lei, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control", arXiv 2110.01052), with fixed-sequence
testing. The hypotheses are thresholds on the scorer's margin, ordered from the most cautious to
the most aggressive. Fixed-sequence testing is only valid when that order does not depend on the
calibration data, so the grid (`threshold_grid`) is built from the scores of the TRAINING traces
(the ones the scorer was fitted on) and frozen before any calibration prompt is scored. For each
threshold in turn, the null hypothesis "its risk exceeds epsilon" is tested with the exact
binomial p-value of the observed number of changed answers among the n calibration prompts (the
loss is 0/1, so the count is Binomial(n, risk)). Testing stops at the first threshold that is not
rejected; the last rejected one is returned. Fixed-sequence testing controls the family-wise
error at delta, so P(risk(chosen) <= epsilon) >= 1 - delta for i.i.d. prompts from the
calibration distribution. When no threshold passes, the policy never exits early, which is always
safe (and promises nothing useful).

`first_check` is the first layer (1-based) whose lens is read, i.e. the earliest layer at which a
prompt may exit; it must be below the last layer, where exiting saves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binom

from adainfer.engine.schedule import check_first_check
from adainfer.policies.base import (PolicyFileError, check_both_classes, check_features, check_number, check_trace,
                                    check_X, check_y)
from adainfer.policies.decisions import answers_at, exit_layers, stable_labels
from adainfer.policies.stability import stability_names, stability_sources, with_stability
from adainfer.policies.svm import SVMPolicy


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


def threshold_grid(train_scores: np.ndarray, first_check: int = 1, size: int = 200) -> np.ndarray:
    """The hypotheses of fixed-sequence testing: thresholds, most cautious (highest) first, (<= size,).

    Quantiles of the TRAINING traces' scores (prompts, layers) at the layers where a prompt may exit
    (`first_check` .. L-1), so the order is fixed before any calibration prompt is seen; building
    it from the calibration scores would let the data choose its own tests.
    """
    train_scores = np.asarray(train_scores, dtype=np.float64)
    if train_scores.ndim != 2 or len(train_scores) == 0:
        raise ValueError(f"train_scores must be (prompts, layers) with at least one prompt, got {train_scores.shape}")
    check_first_check(first_check, train_scores.shape[1], allow_never=False)
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    eligible = train_scores[:, first_check - 1:-1]
    return np.unique(np.quantile(eligible, np.linspace(0, 1, size)))[::-1]


def learn_then_test(scores: np.ndarray, top1: np.ndarray, epsilon: float, delta: float, grid: np.ndarray,
                    first_check: int = 1) -> RiskCertificate:
    """The most aggressive threshold of `grid` reached while each one's risk is certified <= epsilon.

    `scores` and `top1` are the calibration prompts' (prompts, layers). A prompt exits at the first
    layer >= `first_check` whose score exceeds the threshold; its loss is 1 when that layer's top-1
    differs from the last layer's. `grid` (from `threshold_grid` on training scores) must be strictly
    descending: it is tested in that order and testing stops at the first threshold not certified,
    even if a later one would pass, which is what keeps the family-wise error at delta.
    """
    if not 0 < epsilon < 1 or not 0 < delta < 1:
        raise ValueError(f"epsilon and delta must be in (0, 1), got {epsilon} and {delta}")
    if scores.shape != top1.shape or scores.ndim != 2 or len(scores) == 0:
        raise ValueError(f"scores {scores.shape} and top1 {top1.shape} must be the same (prompts, layers)")
    check_first_check(first_check, scores.shape[1], allow_never=False)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or len(grid) == 0 or not np.isfinite(grid).all() or (np.diff(grid) >= 0).any():
        raise ValueError("grid must be a non-empty, finite, strictly descending 1-D array of thresholds "
                         "(most cautious first), built from training scores")
    n = len(scores)
    chosen = RiskCertificate(epsilon, delta, n, float("inf"), 0.0, 1.0, 0)
    for tested, threshold in enumerate(grid, start=1):
        changed = int(_changed(scores, top1, threshold, first_check).sum())
        p_value = binomial_p_value(changed, n, epsilon)
        if p_value > delta:
            return RiskCertificate(**{**asdict(chosen), "thresholds_tested": tested})
        chosen = RiskCertificate(epsilon, delta, n, float(threshold), changed / n, p_value, tested)
    return chosen


def exits_at(scores: np.ndarray, threshold: float, first_check: int = 1) -> np.ndarray:
    """Exit layer (1-based) per prompt, exiting at the first layer >= `first_check` scoring above `threshold`.

    (prompts, layers) -> (prompts,); the last layer when no eligible layer scores above it.
    """
    decisions = scores > threshold
    decisions[:, : first_check - 1] = False
    return exit_layers(decisions)


def resplit_exits(scores: np.ndarray, reference: np.ndarray, calibration_prompts: int, epsilon: float, delta: float,
                  grid: np.ndarray, first_check: int, splits: int, seed: int = 0
                  ) -> Iterator[tuple[np.ndarray, RiskCertificate, np.ndarray]]:
    """The check of the guarantee over random splits: per split, (test indices, certificate, test exits).

    `scores` and `reference` (prompts, layers) are the scorer's margins and the reference answers
    (the model's own per layer) of a pool of held-out prompts. Each split draws a permutation,
    calibrates the threshold on its first `calibration_prompts` with Learn then Test over the fixed
    `grid`, and exits the others (the test prompts) at that threshold.
    """
    rng = np.random.default_rng(seed)
    for _ in range(splits):
        order = rng.permutation(len(scores))
        calibration, test = order[:calibration_prompts], order[calibration_prompts:]
        certificate = learn_then_test(scores[calibration], reference[calibration], epsilon, delta, grid, first_check)
        yield test, certificate, exits_at(scores[test], certificate.threshold, first_check)


def _changed(scores: np.ndarray, top1: np.ndarray, threshold: float, first_check: int) -> np.ndarray:
    return answers_at(exits_at(scores, threshold, first_check), top1) != top1[:, -1]


class CalibratedScorer:
    """What every certified policy shares, whatever scores its layers: label-free fitting on the
    layers it will be asked at, a threshold grid frozen from training scores, Learn then Test, and
    saving the threshold with its certificate.

    A subclass (a `StopPolicy`) provides `_fit_scorer(rows, labels)`, `_window_scores(rows)` and
    `_trace_score(trace)` over `_scorer_rows`: the features, plus the stability columns
    (`policies.stability`) when `stability` is set. `predict`, `decision_function` and
    `should_exit` take what a walk shows the policy: the rows from `first_check` on (a schedule
    the walk and replay apply, `engine.schedule`); `margins` takes full-depth traces.
    """

    label_free = True
    features: Sequence[str]
    first_check: int
    stability: bool

    def _scorer_rows(self, X: np.ndarray) -> np.ndarray:
        """Rows shown to the policy (prompts, reads, features) -> what its scorer reads, float64."""
        X = check_X(X, len(self.features))
        return with_stability(X, self.features, self.n_layers_) if self.stability else X

    def _fit_scorer(self, rows: np.ndarray, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _window_scores(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _trace_score(self, trace: np.ndarray) -> float:
        raise NotImplementedError

    def fit(self, X: Any, y: Any) -> "CalibratedScorer":
        """`y` is either top-1 ids (prompts, layers), turned into stability labels, or 0/1 labels.

        The scorer learns from the layers it will be asked at (`first_check` on), seeing each
        prompt's rows as a walk shows them; the grid comes from its scores on the same traces.
        """
        self.check_params()
        X = check_X(X, len(check_features(self.features)))
        check_first_check(self.first_check, X.shape[1], allow_never=False)
        if self.stability:
            stability_sources(self.features)
        y = np.asarray(y)
        labels = check_y(y if set(np.unique(y)) <= {0, 1} else stable_labels(y), X)
        self.n_layers_ = X.shape[1]
        self.threshold_ = 0.0  # the scorer's own cut until `calibrate`
        window = slice(self.first_check - 1, None)
        check_both_classes(labels[:, window])
        self._fit_scorer(self._scorer_rows(X[:, window]), labels[:, window])
        self.first_check_ = self.first_check
        self.threshold_grid_ = threshold_grid(self.margins(X), self.first_check)
        return self

    def calibrate(self, X: Any, top1: np.ndarray, epsilon: float, delta: float) -> RiskCertificate:
        """Set `threshold_` from calibration traces X and their top-1 ids; returns the certificate.

        Only `threshold_grid_`, fixed at `fit`, is tested: the calibration traces choose among
        those thresholds, never which thresholds there are.
        """
        if not hasattr(self, "threshold_grid_"):
            raise ValueError("this policy has no threshold grid: fit it first (a policy saved before grids "
                             "were stored must be refitted on its training traces)")
        certificate = learn_then_test(self.margins(X), np.asarray(top1), epsilon, delta, self.threshold_grid_,
                                      self.first_check)
        self.threshold_ = certificate.threshold
        self.certificate_ = certificate
        return certificate

    def margins(self, X: Any) -> np.ndarray:
        """The scorer's score per (prompt, layer) of full-depth traces X, before any threshold: what
        calibration ranks. Layers before `first_check` are never asked and score -inf."""
        X = check_X(X, len(self.features))
        scores = np.full(X.shape[:2], -np.inf)
        if self.first_check <= X.shape[1]:
            scores[:, self.first_check - 1:] = self._window_scores(X[:, self.first_check - 1:])
        return scores

    def decision_function(self, X: Any) -> np.ndarray:
        """Score minus threshold for the rows a walk shows the policy (its first row is `first_check`)."""
        return self._window_scores(X) - self.threshold_

    def predict(self, X: Any) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(np.int64)

    def should_exit(self, trace: Any) -> bool:
        return self._trace_score(check_trace(trace, len(self.features))) > self.threshold_

    def _trace_rows(self, trace: np.ndarray) -> np.ndarray:
        """A live trace (reads, features) -> the scorer's columns of its last row, (1, columns)."""
        if not self.stability:
            return np.asarray(trace[-1:], dtype=np.float64)
        return with_stability(trace[None], self.features, self.n_layers_)[0, -1:]

    def _scorer_width(self, config: dict) -> int:
        if not self.stability:
            return len(self.features)
        if not isinstance(config.get("n_layers"), int):
            raise PolicyFileError("a policy on stability features needs n_layers in its config")
        self.n_layers_ = config["n_layers"]
        return len(self.features) + len(stability_names(self.n_layers_))

    def _save_state(self, directory: Path) -> dict:
        state = super()._save_state(directory)
        state["calibration"] = {"threshold": None if np.isinf(self.threshold_) else self.threshold_,
                                "threshold_grid": (self.threshold_grid_.tolist()
                                                   if hasattr(self, "threshold_grid_") else None),
                                "certificate": getattr(self, "certificate_", None) and self.certificate_.to_dict()}
        return state

    def _load_state(self, directory: Path, config: dict) -> None:
        super()._load_state(directory, config)
        self.first_check_ = self.first_check
        try:
            self._load_calibration(config.get("calibration"))
        except (TypeError, ValueError, KeyError) as error:
            raise PolicyFileError(f"{directory / 'config.json'}: bad calibration: {error}") from None

    def _load_calibration(self, calibration: Any) -> None:
        """The threshold, its grid and certificate from config.json's `calibration`, each checked."""
        if not isinstance(calibration, dict) or not set(calibration) <= {"threshold", "threshold_grid", "certificate"}:
            raise ValueError("expected an object of threshold, threshold_grid (older policies have none) and certificate")
        threshold = calibration.get("threshold")
        if threshold is not None:
            check_number("threshold", threshold)
        self.threshold_ = float("inf") if threshold is None else float(threshold)
        grid = calibration.get("threshold_grid")
        if grid is not None:  # JSON floats round-trip float64 exactly
            if not isinstance(grid, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in grid):
                raise ValueError("threshold_grid must be a list of numbers")
            grid = np.asarray(grid, dtype=np.float64)
            if grid.ndim != 1 or len(grid) == 0 or not np.isfinite(grid).all() or (np.diff(grid) >= 0).any():
                raise ValueError("threshold_grid must be finite and strictly descending")
            self.threshold_grid_ = grid
        if calibration.get("certificate"):
            record = dict(calibration["certificate"])
            record["threshold"] = self.threshold_
            for name in ("epsilon", "delta", "empirical_risk", "p_value"):
                check_number(name, record.get(name), minimum=0)
            for name in ("calibration_prompts", "thresholds_tested"):
                check_number(name, record.get(name), minimum=0, integer=True)
            self.certificate_ = RiskCertificate(**record)

    @classmethod
    def _params_from_config(cls, params: dict) -> dict:
        if "min_layer" in params:  # configs saved before the rename to first_check
            params["first_check"] = params.pop("min_layer")
        return super()._params_from_config(params)


class CalibratedPolicy(CalibratedScorer, SVMPolicy):
    """An SVM scorer trained to recognise stable layers, with a threshold certified by `calibrate`.

    `fit(X, top1)` needs no gold labels: it learns "this layer's top-1 is already the final one for
    good" from full-depth traces, and freezes the threshold grid (`threshold_grid_`) from its own
    margins on those training traces. `calibrate(X, top1, epsilon, delta)` then tests that grid on
    held-out traces with Learn then Test. Before `calibrate` it cuts at margin 0, like the plain SVM.
    `first_check` (1-based) is the earliest layer at which it may exit; with `stability` the SVM
    also reads the stability columns (`policies.stability`).
    """

    kind = "calibrated-svm"

    def __init__(self, features: Sequence[str] = ("gap", "top_prob", "depth"), kernel: str = "rbf",
                 C: float = 1.0, class_weight: dict | str | None = None, first_check: int = 1,
                 stability: bool = False) -> None:
        super().__init__(features, kernel, C, class_weight)
        self.first_check = first_check
        self.stability = stability

    def check_params(self) -> None:
        super().check_params()
        check_number("first_check", self.first_check, minimum=1, integer=True)
        if not isinstance(self.stability, bool):
            raise ValueError(f"stability must be true or false; got {self.stability!r}")

    def _fit_scorer(self, rows: np.ndarray, labels: np.ndarray) -> None:
        self._fit_pipeline(rows, labels)

    def _window_scores(self, X: np.ndarray) -> np.ndarray:
        return SVMPolicy.decision_function(self, self._scorer_rows(X))

    def _trace_score(self, trace: np.ndarray) -> float:
        return self._margin(self._trace_rows(trace))
