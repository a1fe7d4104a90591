"""Score a stop policy on collected full-depth traces, against the dense model and the oracle.

Replaying a policy over collected rows gives the same exit layers and costs as running `predict`
prompt by prompt under the same check schedule (`adainfer.engine.schedule`, `adainfer.policies.decisions`): the features of layer l
depend only on layers 1..l, policies decide online, and a scheduled policy sees only the layers
it checked. So one collection serves every policy, at no model cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from adainfer.engine.cost import CostModel
from adainfer.engine.cost_profile import CostProfile
from adainfer.engine.features import needs_full_vocab
from adainfer.engine.schedule import lens_reads, reads_previous_lens
from adainfer.eval.traces import Collection
from adainfer.policies.base import StopPolicy
from adainfer.policies.decisions import answers_at, exit_layers, oracle_exit_layers, scheduled_decisions, stable_labels

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass
class PolicyReport:
    """Per-task figures the paper reports, plus agreement, the oracle, the check cost and 95 %
    paired-bootstrap intervals over prompts (`*_low`, `*_high`)."""

    prompts: int
    dense_accuracy: float
    accuracy: float
    accuracy_change: float
    accuracy_change_low: float
    accuracy_change_high: float
    agreement_with_dense: float
    mean_exit_layer: float
    var_exit_layer: float
    layers_saved: float
    layers_saved_low: float
    layers_saved_high: float
    oracle_layers_saved: float
    paper_flops_ratio: float
    honest_flops_ratio: float
    mean_lens_reads: float
    estimated_time_ratio: float | None  # from a measured `CostProfile`, when one was given
    early_exits: int  # prompts that stopped before the last layer
    correct_early_exits: int
    # Per prompt, for intervals over several settings: correct minus dense-correct, layers saved.
    per_prompt: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, object]:
        """The figures, rounded, as plain JSON types (without the per-prompt arrays)."""
        return {key: round(value, 4) if isinstance(value, float) else value
                for key, value in asdict(self).items() if key != "per_prompt"}


def bootstrap_interval(samples: list[np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95 % percentile interval of the mean over settings of each setting's per-prompt mean.

    Each array in `samples` is one setting's per-prompt values; prompts are resampled within
    their setting (paired: one index draws a prompt's early-exit and dense outcomes together).
    """
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for values in samples:
        values = np.asarray(values, dtype=np.float64)
        means += values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    means /= len(samples)
    low, high = np.quantile(means, (0.025, 0.975))
    return round(float(low), 4), round(float(high), 4)


def cost_model_of(collection: Collection) -> CostModel:
    identity = collection.model_identity
    return CostModel(int(identity["num_layers"]), int(identity["hidden_size"]), int(identity["vocab_size"]))


def reads_candidates_only(policy: StopPolicy, collection: Collection) -> bool:
    """True when `policy`, run with the collection's candidates, never reads the full-vocabulary lens."""
    return collection.cand_top1 is not None and not needs_full_vocab(policy.features, True)


def training_labels(policy: StopPolicy, collection: Collection) -> np.ndarray:
    """Labels (prompts, layers) for fitting `policy`.

    Full-vocabulary policies learn the paper's label: the layer's top-1 is the gold token. A policy
    on candidate features answers with the best candidate, and with a handful of candidates that
    one matches gold about 1/|C| of the time at any layer, junk layers included, so the paper's
    label teaches it to exit at once (SST-2: layer 1, -12.5 points on Gemma 3 270M). It learns
    instead when the best candidate will not change any more (`stable_labels` of `cand_top1`).
    A `label_free` policy (the calibrated SVM) learns when the model's own answer will not change
    any more: `stable_labels` of `top1`, or of `cand_top1` when it reads the candidates only.
    """
    if policy.label_free:  # the model's own answer: the best candidate when only candidates are read
        return stable_labels(collection.cand_top1 if reads_candidates_only(policy, collection) else collection.top1)
    if reads_candidates_only(policy, collection):
        return stable_labels(collection.cand_top1)
    return collection.labels


def fit_on(policy: StopPolicy, collection: Collection) -> StopPolicy:
    """Fit `policy` on a collection's traces with the labels it learns from (`training_labels`)."""
    return policy.fit(collection.select(policy.features), training_labels(policy, collection))


def policy_decisions(policy: StopPolicy, collection: Collection, first_check: int = 1) -> np.ndarray:
    """The online decisions (prompts, layers) of `policy` on `collection`, asked from `first_check` on."""
    return scheduled_decisions(policy, collection.select(policy.features), first_check)


def evaluate_policy(policy: StopPolicy, collection: Collection, first_check: int = 1,
                    profile: CostProfile | None = None, cached_tokens: int = 0) -> PolicyReport:
    """Replay `policy` over `collection` (not the data it was fitted on), checking from `first_check`;
    `cached_tokens` leading tokens of every prompt come from a cached prefix (`evaluate_decisions`)."""
    return evaluate_decisions(policy_decisions(policy, collection, first_check), collection,
                              reads_candidates_only(policy, collection), first_check,
                              reads_previous_lens(policy.features), profile, cached_tokens)


@dataclass
class Replayed:
    """Per prompt, under one answer rule (the full vocabulary's top-1, or the best candidate): the
    exit layer (1-based), the answer given there, the dense model's answer (its last layer's) and gold.
    `answers_by_layer` (prompts, layers) is the rule's answer at every layer."""

    exits: np.ndarray
    answers: np.ndarray
    dense: np.ndarray
    gold: np.ndarray
    answers_by_layer: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.answers == self.gold

    @property
    def dense_correct(self) -> np.ndarray:
        return self.dense == self.gold

    @property
    def changed(self) -> np.ndarray:
        """Where the answer differs from the dense model's: the risk that calibration bounds."""
        return self.answers != self.dense


def replay_exits(exits: np.ndarray, collection: Collection, candidates_only: bool = False) -> Replayed:
    """What each prompt of `collection` answers when it exits at `exits` (prompts,), 1-based.

    The one path from exit layers to answers: with `candidates_only` the answer is the best
    candidate (`cand_top1`), else the full vocabulary's top-1, and the dense answer follows the same rule.
    """
    chosen = collection.cand_top1 if candidates_only else collection.top1
    return Replayed(exits=exits, answers=answers_at(exits, chosen), dense=chosen[:, -1], gold=collection.gold,
                    answers_by_layer=chosen)


def evaluate_decisions(decisions: np.ndarray, collection: Collection, candidates_only: bool,
                       first_check: int = 1, reads_previous: bool = False,
                       profile: CostProfile | None = None, cached_tokens: int = 0) -> PolicyReport:
    """Score a policy's online decisions (prompts, layers), already made under `first_check`.

    Layers before `first_check` are not checked (a check schedule): no lens is paid there, except
    the layer just before it when the policy `reads_previous` lens (`agree_prev`). With
    `candidates_only` each check pays |C| units and the answer is the best candidate. With a
    measured `profile` of the same model, `estimated_time_ratio` is the time those layers and
    reads take, relative to the dense model, at each prompt's length. With `cached_tokens` p (a
    cached prefix every prompt starts with) only the s - p query tokens run, in the early exit and
    in the dense forward it is compared with: FLOPs count them over the whole context, and the
    profile is read at the query length (it was measured there).
    """
    if decisions[:, : first_check - 1].any():
        raise ValueError(f"decisions accept layers before first_check={first_check}")
    exits = exit_layers(decisions)
    replayed = replay_exits(exits, collection, candidates_only)
    cost = cost_model_of(collection)
    layers = cost.num_layers
    reads = lens_reads(exits, first_check, reads_previous, layers)
    check_units = len(collection.candidate_ids) if candidates_only else None
    paper = [cost.paper_flops_ratio(int(e), int(s)) for e, s in zip(exits, collection.seq_len)]
    honest = [cost.honest_flops_ratio(int(e), int(s), int(c), check_units, cached_tokens=cached_tokens)
              for e, s, c in zip(exits, collection.seq_len, reads)]
    timed = None if profile is None else float(np.mean([
        profile.estimated_time_ratio(int(e), int(s) - cached_tokens, int(c), candidates_only)
        for e, s, c in zip(exits, collection.seq_len, reads)]))
    correct, dense_correct = replayed.correct, replayed.dense_correct
    change = correct.astype(np.int8) - dense_correct.astype(np.int8)
    saved = 1 - exits / layers
    early = exits < layers
    change_low, change_high = bootstrap_interval([change])
    saved_low, saved_high = bootstrap_interval([saved])
    return PolicyReport(
        prompts=len(exits),
        dense_accuracy=float(dense_correct.mean()),
        accuracy=float(correct.mean()),
        accuracy_change=float(change.mean()),
        accuracy_change_low=change_low,
        accuracy_change_high=change_high,
        agreement_with_dense=float((replayed.answers == replayed.dense).mean()),
        mean_exit_layer=float(exits.mean()),
        var_exit_layer=float(exits.var()),
        layers_saved=float(saved.mean()),
        layers_saved_low=saved_low,
        layers_saved_high=saved_high,
        oracle_layers_saved=float(1 - oracle_exit_layers(replayed.answers_by_layer).mean() / layers),
        paper_flops_ratio=float(np.mean(paper)),
        honest_flops_ratio=float(np.mean(honest)),
        mean_lens_reads=float(reads.mean()),
        estimated_time_ratio=timed,
        early_exits=int(early.sum()),
        correct_early_exits=int((early & correct).sum()),
        per_prompt={"accuracy_change": change, "layers_saved": saved},
    )
