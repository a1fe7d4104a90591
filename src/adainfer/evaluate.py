"""Score a stop policy on collected full-depth traces, against the dense model and the oracle.

Replaying a policy over collected rows gives the same exit layers as running `predict` prompt by
prompt: the features of layer l depend only on layers 1..l, and policies decide online. So one
collection serves every policy, at no model cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from adainfer.collect import Collection
from adainfer.cost import CostModel
from adainfer.features import needs_full_vocab
from adainfer.policies import StopPolicy


def exit_layers(decisions: np.ndarray) -> np.ndarray:
    """First accepted layer, 1-based, per prompt; the last layer when none is accepted. (prompts, layers) -> (prompts,)."""
    layers = decisions.shape[1]
    accepted = decisions[:, :-1].astype(bool)  # the last layer answers anyway
    return np.where(accepted.any(axis=1), accepted.argmax(axis=1) + 1, layers)


def oracle_exit_layers(top1: np.ndarray) -> np.ndarray:
    """Earliest layer, 1-based, from which the top-1 token stays equal to the last layer's: (prompts,).

    No policy that keeps the dense answers can exit earlier; it bounds the layers that can be saved.
    """
    differs = top1 != top1[:, -1:]
    last_differing = np.where(differs.any(axis=1), differs.shape[1] - np.argmax(differs[:, ::-1], axis=1), 0)
    return last_differing + 1


def stable_labels(top1: np.ndarray) -> np.ndarray:
    """1 from the layer on which the top-1 token stays the final one (the oracle's exit) onwards.

    (prompts, layers) -> (prompts, layers). Needs no gold answer: the target is the model's own.
    """
    layers = np.arange(1, top1.shape[1] + 1)
    return (layers[None, :] >= oracle_exit_layers(top1)[:, None]).astype(np.int64)


@dataclass
class PolicyReport:
    """Per-task figures the paper reports, plus the oracle and the check cost."""

    prompts: int
    dense_accuracy: float
    accuracy: float
    accuracy_change: float
    agreement_with_dense: float
    mean_exit_layer: float
    var_exit_layer: float
    layers_saved: float
    oracle_layers_saved: float
    paper_flops_ratio: float
    honest_flops_ratio: float
    early_exits: int  # prompts that stopped before the last layer
    correct_early_exits: int

    def to_dict(self) -> dict[str, float]:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


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
    """
    if reads_candidates_only(policy, collection):
        return stable_labels(collection.cand_top1)
    return collection.labels


def first_accepted_layer(policy: StopPolicy, collection: Collection) -> int:
    """The earliest layer (1-based) at which `policy` accepts any prompt of `collection`.

    A check schedule learned from training traces: layers before it need no lens at all.
    """
    decisions = policy.predict(collection.select(policy.features))[:, :-1].astype(bool)
    return int(decisions.any(axis=0).argmax()) + 1 if decisions.any() else decisions.shape[1] + 1


def evaluate_policy(policy: StopPolicy, collection: Collection, first_check: int = 1) -> PolicyReport:
    """Replay `policy` over `collection` (it must not be the data the policy was fitted on)."""
    decisions = policy.predict(collection.select(policy.features))
    return evaluate_decisions(decisions, collection, reads_candidates_only(policy, collection), first_check)


def evaluate_decisions(decisions: np.ndarray, collection: Collection, candidates_only: bool,
                       first_check: int = 1) -> PolicyReport:
    """Score a policy's online decisions (prompts, layers) on `collection`.

    Layers before `first_check` are not checked (a check schedule): the policy is not asked
    there and no lens is paid. With `candidates_only` each check pays |C| units and the answer
    is the best candidate.
    """
    decisions = decisions.copy()
    decisions[:, : first_check - 1] = 0
    exits = exit_layers(decisions)
    rows = np.arange(len(exits))
    chosen = collection.cand_top1 if candidates_only else collection.top1
    answers = chosen[rows, exits - 1]
    dense = chosen[:, -1]  # the full model under the same answer rule (vocabulary or candidates)
    cost = cost_model_of(collection)
    layers = cost.num_layers
    paper = [cost.paper_flops_ratio(int(e), int(s)) for e, s in zip(exits, collection.seq_len)]
    check_units = len(collection.candidate_ids) if candidates_only else None
    checked = np.maximum(exits - first_check + 1, 1)
    honest = [cost.honest_flops_ratio(int(e), int(s), int(c), check_units)
              for e, s, c in zip(exits, collection.seq_len, checked)]
    correct = answers == collection.gold
    early = exits < layers
    return PolicyReport(
        prompts=len(exits),
        dense_accuracy=float((dense == collection.gold).mean()),
        accuracy=float(correct.mean()),
        accuracy_change=float(correct.mean() - (dense == collection.gold).mean()),
        agreement_with_dense=float((answers == dense).mean()),
        mean_exit_layer=float(exits.mean()),
        var_exit_layer=float(exits.var()),
        layers_saved=float(1 - exits.mean() / layers),
        oracle_layers_saved=float(1 - oracle_exit_layers(chosen).mean() / layers),
        paper_flops_ratio=float(np.mean(paper)),
        honest_flops_ratio=float(np.mean(honest)),
        early_exits=int(early.sum()),
        correct_early_exits=int((early & correct).sum()),
    )
