"""Will early exit pay on this model and task? The best speedup any policy could reach, measured.

An early exit saves the layers after its exit and pays for its checks. On a small sample of the
task's prompts this measures both: the time of one layer at the task's typical prompt length, of
a full-vocabulary check and of a candidate check (`engine.cost_profile`), and the stable-answer
oracle's exit layer per prompt (the earliest layer from which the model's answer no longer
changes). A policy that keeps the dense answers can do no better than exiting there after a
single check of the cheapest kind, so

    best speedup = (L·t_layer + t_full_check) / mean(e·t_layer + t_check),

with e the oracle's exit layer. Any real policy checks more layers and exits later. (A policy that
gives up agreement may exit earlier; this bound is for policies that keep the dense answers.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom

from adainfer.engine.cost_profile import measure_cost_profile
from adainfer.engine.model import EarlyExitModel
from adainfer.fit.answer_set import detect_answer_set
from adainfer.fit.splits import SplitSizes, make_splits
from adainfer.policies.decisions import oracle_exit_layers

# Verdict thresholds on the best reachable speedup: below the first, checks and the last layers
# eat the saving; past the second there is room for a real policy, which reaches part of it.
WILL_NOT_PAY = 1.1
CAN_PAY = 1.3


@dataclass(frozen=True)
class Payoff:
    """Measured times (seconds, medians) and the oracle's exits on `prompts` sample prompts."""

    task: str
    prompts: int
    seq_len: int
    num_layers: int
    closed_answer_set: bool
    layer_seconds: float
    full_check_seconds: float
    candidate_check_seconds: float
    dense_seconds: float
    oracle_mean_exit_layer: float
    oracle_layers_saved: float
    best_speedup: float
    verdict: str
    fit_calibration_prompts: int  # what `fit` with its default split sizes would calibrate on
    calibration_warning: str | None  # set when that is too few to certify much at epsilon = delta = 5 %

    def to_dict(self) -> dict:
        return {key: round(value, 6) if isinstance(value, float) else value for key, value in asdict(self).items()}


def verdict(best_speedup: float, closed: bool) -> str:
    """One line a user can act on."""
    check = "candidate-row checks" if closed else "full-vocabulary checks"
    if best_speedup < WILL_NOT_PAY:
        return (f"early exit will not pay here: even an oracle exiting at the stable layer with one of the "
                f"{check} is only {best_speedup:.2f}x faster than the dense model")
    if best_speedup < CAN_PAY:
        return (f"early exit can pay a little: at best {best_speedup:.2f}x with {check}; a certified policy "
                f"reaches part of that")
    return (f"early exit can pay: at best {best_speedup:.2f}x with {check}; run `adainfer fit` to see how much "
            f"a certified policy keeps")


def calibration_for_half_risk(epsilon: float, delta: float, largest: int = 100_000) -> int:
    """The fewest calibration prompts with which Learn then Test certifies a policy that changes
    epsilon / 2 of the answers (observed exactly so): below it, only exits that change almost no
    answer can be certified, which a real scorer reaches only far from the oracle's savings."""
    sizes = np.arange(1, largest + 1)
    passing = np.flatnonzero(binom.cdf(np.floor(sizes * epsilon / 2), sizes, epsilon) <= delta)
    return int(sizes[passing[0]]) if len(passing) else largest


def calibration_warning(calibration_prompts: int, epsilon: float, delta: float) -> str | None:
    """A line for the user when `calibration_prompts` are too few to certify savings near the oracle's."""
    needed = calibration_for_half_risk(epsilon, delta)
    if calibration_prompts >= needed:
        return None
    return (f"only {calibration_prompts} calibration prompts: at epsilon {epsilon}, delta {delta} Learn then Test "
            f"certifies little below about {needed} (the fewest that certify a policy changing epsilon/2 of the "
            f"answers); give the task more examples, or a larger epsilon")


def measure_payoff(model: EarlyExitModel, *, name: str, train_pool: list, eval_pool: list,
                   choices: tuple[str, ...] | None, shots: int = 5, sample: int = 32, seed: int = 0, repeats: int = 3,
                   on_prompt: Callable[[int, int], None] | None = None) -> Payoff:
    """Times and oracle exits on `sample` prompts of a task built as `fit` builds them (fixed demonstrations)."""
    answers = detect_answer_set(model, train_pool + eval_pool, choices)
    splits = make_splits(train_pool, eval_pool, shots, SplitSizes(sample, 1, 2), seed, answers)
    prompts = [prompt.prompt for prompt in splits.prompts("train")]
    candidates = list(answers.token_ids) if answers else None
    features = ("cand_top_prob",) if answers else ("top_prob",)
    reference, lengths = [], []
    for index, prompt in enumerate(prompts, start=1):
        trace = model.trace(prompt, features, candidates)
        reference.append(trace.cand_top1 if answers else trace.top1)
        lengths.append(trace.seq_len)
        if on_prompt is not None:
            on_prompt(index, len(prompts))
    exits = oracle_exit_layers(np.stack(reference))
    seq_len = int(np.median(lengths))
    profile = measure_cost_profile(model, [seq_len], repeats=repeats, candidate_count=len(candidates or ()) or 4)
    layer, full = profile.layer_seconds[0], profile.full_check_seconds[0]
    check = profile.candidate_check_seconds[0] if answers else full
    layers = model.num_layers
    best = (layers * layer + full) / float(np.mean(exits * layer + check))
    fit_calibration = len(make_splits(train_pool, eval_pool, shots, SplitSizes(), seed, answers).calibration)
    return Payoff(task=name, prompts=len(prompts), seq_len=seq_len, num_layers=layers,
                  closed_answer_set=answers is not None, layer_seconds=layer, full_check_seconds=full,
                  candidate_check_seconds=profile.candidate_check_seconds[0], dense_seconds=profile.dense_seconds[0],
                  oracle_mean_exit_layer=float(exits.mean()), oracle_layers_saved=float(1 - exits.mean() / layers),
                  best_speedup=best, verdict=verdict(best, answers is not None), fit_calibration_prompts=fit_calibration,
                  calibration_warning=calibration_warning(fit_calibration, 0.05, 0.05))
