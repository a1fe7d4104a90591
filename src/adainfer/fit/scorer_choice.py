"""Which scorer, and from which layer on: chosen by cross-validation on the train split alone.

The certificate does not care what scores the layers; the savings do. `choose_scorer` compares a
few scorers (`SCORERS`: the paper-style SVM, the SVM with the stability columns, boosted trees
with them) under a few check schedules (`first_check`), each by grouped k-fold cross-validation
over the TRAIN prompts (a prompt's layers never straddle folds). Every fold fits the candidate on
the other folds, freezes its threshold levels from its own training scores (quantiles, as
`threshold_grid` does) and scores its held-out prompts; pooled over folds, each level has an
out-of-fold disagreement and saving. Learn then Test is then simulated at the real calibration
size: levels are tested most cautious first, each "passes" while the binomial p-value of its
expected changed count is <= delta, and the candidate is worth what its last passing level saves
in time (layers plus the checks it reads, `schedule.lens_reads`). The best candidate wins; ties
go to the simpler one (earlier in `SCORERS`) and the later first check. Calibration and test
prompts never reach this choice, so the certificate stays as valid as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom

from adainfer.engine.schedule import lens_reads, reads_previous_lens
from adainfer.policies.calibrated import CalibratedPolicy, CalibratedScorer, exits_at
from adainfer.policies.calibrated_trees import CalibratedTreePolicy
from adainfer.policies.decisions import answers_at, oracle_exit_layers, stable_labels

SCORERS: dict[str, Callable[[tuple[str, ...], int], CalibratedScorer]] = {
    "svm": lambda features, first_check: CalibratedPolicy(features, first_check=first_check),
    "svm-stability": lambda features, first_check: CalibratedPolicy(features, first_check=first_check, stability=True),
    "gbt-stability": lambda features, first_check: CalibratedTreePolicy(features, first_check=first_check),
}
LEVELS = 200  # threshold levels per fold, as `threshold_grid`'s default size
FOLDS = 4
REPEATS = 2  # fold assignments, by seeds 0..REPEATS-1: the choice should not hinge on one split into folds


@dataclass(frozen=True)
class Candidate:
    """One (scorer, first check) pair's cross-validated worth on the train split."""

    scorer: str
    first_check: int
    time_saved: float  # 1 - (layers + checks) / (all layers + one check), at the simulated certified level
    layers_saved: float
    disagreement: float  # out-of-fold, at that level
    oracle_layers_saved: float
    calibration_needed: int | None  # fewest calibration prompts whose simulated certificate keeps this saving


@dataclass(frozen=True)
class ScorerChoice:
    """The winner, every candidate tried, and why (recorded on the card)."""

    scorer: str
    first_check: int
    candidates: list[Candidate]
    folds: int
    reason: str

    def build(self, features: Sequence[str]) -> CalibratedScorer:
        """An unfitted policy of the chosen kind and schedule."""
        return SCORERS[self.scorer](tuple(features), self.first_check)

    def to_dict(self) -> dict:
        return {"scorer": self.scorer, "first_check": self.first_check, "folds": self.folds, "reason": self.reason,
                "candidates": [{key: round(value, 4) if isinstance(value, float) else value
                                for key, value in asdict(candidate).items()} for candidate in self.candidates]}


def simulate_certificate(changed: np.ndarray, n: int, epsilon: float, delta: float) -> int:
    """The last level fixed-sequence testing would pass with `n` calibration prompts whose changed
    fraction at each level (levels,) is `changed`; -1 when the first level already fails."""
    p_values = binom.cdf(np.rint(np.asarray(changed) * n), n, epsilon)
    failing = np.flatnonzero(p_values > delta)
    return int(failing[0] if len(failing) else len(p_values)) - 1


def schedule_candidates(num_layers: int, cheapest: int, step: int = 3) -> list[int]:
    """First checks to try: every `step`-th layer from 1, and the cheapest for the oracle (`cheapest_first_check`)."""
    return sorted({*range(1, num_layers, step), cheapest})


def out_of_fold(make: Callable[[], CalibratedScorer], X: np.ndarray, reference: np.ndarray,
                folds: int = FOLDS, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Per threshold level (most cautious first) and train prompt: exit layer and whether the answer
    changed, each prompt scored by the fold model that did not see it. None when a fold cannot fit
    (its labels hold one class under this schedule)."""
    order = np.random.default_rng(seed).permutation(len(X))
    exits = np.zeros((LEVELS, len(X)), dtype=np.int64)
    for fold in range(folds):
        held = order[fold::folds]
        kept = np.setdiff1d(order, held)
        try:
            policy = make().fit(X[kept], stable_labels(reference[kept]))
        except ValueError:
            return None
        first_check = policy.first_check
        train_scores = policy.margins(X[kept])[:, first_check - 1:-1]
        levels = np.quantile(train_scores, np.linspace(1, 0, LEVELS))
        held_scores = policy.margins(X[held])
        for level, threshold in enumerate(levels):
            exits[level, held] = exits_at(held_scores, threshold, first_check)
    changed = np.stack([answers_at(level_exits, reference) != reference[:, -1] for level_exits in exits])
    return exits, changed


def choose_scorer(X: np.ndarray, reference: np.ndarray, features: Sequence[str], epsilon: float, delta: float,
                  calibration_prompts: int, check_cost: float, first_checks: Sequence[int],
                  scorers: Sequence[str] = tuple(SCORERS), folds: int = FOLDS) -> ScorerChoice:
    """The (scorer, first check) whose simulated certified threshold saves most time on the train split.

    `X` (prompts, layers, features) and `reference` (prompts, layers, the model's own answers) are
    the TRAIN traces only; `calibration_prompts` is the calibration split's size, at which the
    certificate is simulated; `check_cost` is one lens read in layers (`cheapest_first_check`'s).
    """
    unknown = [name for name in scorers if name not in SCORERS]
    if unknown or not scorers:
        raise ValueError(f"unknown or no scorers {unknown}; known: {', '.join(SCORERS)}")
    layers = X.shape[1]
    oracle = float(1 - oracle_exit_layers(reference).mean() / layers)
    previous = reads_previous_lens(features)
    candidates = []
    for name in scorers:
        for first_check in sorted(set(first_checks)):
            results = [out_of_fold(lambda: SCORERS[name](tuple(features), first_check), X, reference,
                                   min(folds, len(X)), seed) for seed in range(REPEATS)]
            if any(result is None for result in results):
                continue
            exits = np.concatenate([result[0] for result in results], axis=1)  # every prompt once per repeat
            changed = np.concatenate([result[1] for result in results], axis=1)
            risk = changed.mean(axis=1)
            level = simulate_certificate(risk, calibration_prompts, epsilon, delta)
            chosen = exits[level] if level >= 0 else np.full(len(X), layers)
            cost = chosen + check_cost * lens_reads(chosen, first_check, previous, layers)
            candidates.append(Candidate(
                scorer=name, first_check=first_check, time_saved=float(1 - cost.mean() / (layers + check_cost)),
                layers_saved=float(1 - chosen.mean() / layers),
                disagreement=float(risk[level]) if level >= 0 else 0.0, oracle_layers_saved=oracle,
                calibration_needed=calibration_needed(risk, exits, layers, epsilon, delta)))
    if not candidates:
        raise ValueError("no scorer could be fitted on the train split under any check schedule")
    best = max(candidates, key=lambda c: (round(c.time_saved, 6), -scorers.index(c.scorer), c.first_check))
    runner = max((c for c in candidates if c is not best), key=lambda c: c.time_saved, default=None)
    reason = (f"{best.scorer} from layer {best.first_check} would save {100 * best.time_saved:.1f} % of the time "
              f"({100 * best.layers_saved:.1f} % of layers, oracle {100 * oracle:.1f} %) at an out-of-fold "
              f"disagreement of {100 * best.disagreement:.1f} %, certified as with {calibration_prompts} calibration "
              f"prompts ({REPEATS} x {folds}-fold cross-validation on the train split)"
              + (f"; next best {runner.scorer} from layer {runner.first_check}: {100 * runner.time_saved:.1f} %"
                 if runner else ""))
    return ScorerChoice(best.scorer, best.first_check, candidates, folds, reason)


def calibration_needed(risk: np.ndarray, exits: np.ndarray, layers: int, epsilon: float, delta: float,
                       largest: int = 5000, keep: float = 0.95) -> int | None:
    """The fewest calibration prompts whose simulated certificate keeps `keep` of the layers a very
    large sample (`largest` prompts) would let this candidate save; None when even that saves none.

    With few prompts the fixed-sequence test certifies only levels with almost no changed answer,
    so a scorer saves less than its out-of-fold curve allows: this says how many would close that gap.
    """
    def saved(n: int) -> float:
        level = simulate_certificate(risk, n, epsilon, delta)
        return 0.0 if level < 0 else float(1 - exits[level].mean() / layers)
    goal = saved(largest)
    if goal <= 0:
        return None
    sizes = np.unique(np.geomspace(10, largest, 80).astype(int))
    return int(next(n for n in sizes if saved(int(n)) >= keep * goal))


def share_of_oracle(layers_saved: float, oracle_layers_saved: float, floor: float = 0.01) -> float | None:
    """Layers saved as a fraction of the stable-answer oracle's; None where the oracle saves under
    `floor` (a share of almost nothing says nothing)."""
    return None if oracle_layers_saved < floor else round(layers_saved / oracle_layers_saved, 4)
