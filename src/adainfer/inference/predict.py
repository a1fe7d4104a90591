"""Early-exit prediction of one answer token: stop at the first layer the policy accepts.

One loop serves one prompt and a batch alike; `adainfer.engine.batch` holds the padding and row
selection that let rows leave the batch at their own exit layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from adainfer.engine.batch import check_layer_inputs
from adainfer.engine.model import EarlyExitModel
from adainfer.engine.row_groups import group_prompts
from adainfer.engine.walk import WalkResult, walk
from adainfer.policies.base import StopPolicy


@dataclass
class ExitResult:
    """One answer. `exit_layer` is l', the number of decoder layers computed (1..num_layers).

    `trace` and `top1_trace` cover the layers whose lens was read, `first_read_layer`..`exit_layer`:
    under a check schedule (`first_check` > 1) earlier layers read nothing.
    """

    answer_token_id: int
    answer_text: str
    exit_layer: int
    num_layers: int
    first_check: int  # first layer the policy was asked at (num_layers + 1: never)
    first_read_layer: int  # first layer whose lens was read (first_check - 1 for `agree_prev`)
    lens_reads: int  # lens products paid: exit_layer - first_read_layer + 1
    accepted: bool  # False when the policy never accepted and the last layer answered
    seq_len: int  # tokens of the whole prompt, cached prefix included
    feature_names: tuple[str, ...]
    trace: list[list[float]]  # (lens_reads, n_features): the features read
    top1_trace: list[int]  # top-1 token id after each read layer
    paper_flops_ratio: float
    honest_flops_ratio: float
    cached_tokens: int = 0  # leading prompt tokens read from the cached prefix (`EarlyExitModel.use_prefix`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(model: EarlyExitModel, prompt: str, policy: StopPolicy,
            candidate_ids: Sequence[int] | None = None) -> ExitResult:
    """Run layers one at a time, ask `policy` after each, and skip every layer after the first accepted one."""
    return predict_batch(model, [prompt], policy, candidate_ids)[0]


@torch.no_grad()
def predict_batch(model: EarlyExitModel, prompts: Sequence[str], policy: StopPolicy,
                  candidate_ids: Sequence[int] | None = None, first_check: int | None = None,
                  use_prefix: bool = True) -> list[ExitResult]:
    """Answer each prompt with early exit; rows leave the batch at their own exit layer.

    The policy's check schedule is honoured as replay scores it (`adainfer.engine.walk`): no lens before
    its `first_check_` (but the layer before it for `agree_prev`), and the policy sees only the
    rows of the layers it checked. With `candidate_ids` (a closed answer set's first tokens) and a
    policy that reads only candidate features (`cand_*`, `depth`), each check runs |C| rows of the
    LM head instead of V and the answer is the best candidate.

    Result `i` equals `predict(model, prompts[i], policy)`: the same answer, exit layer and
    decisions, with features within float error (padding changes the order of sums, not values).
    `first_check` overrides the policy's schedule; `model.num_layers + 1` never checks, which runs
    every layer through this same walk and reads one lens, at the last layer, for the answer.

    Prompts that extend the model's cached prefix (`EarlyExitModel.use_prefix`) run only their own
    tokens over it, unless `use_prefix` is False (`engine.row_groups` decides per prompt).
    """
    if not prompts:
        return []
    results: list[ExitResult | None] = [None] * len(prompts)
    for group in group_prompts(model, prompts, use_prefix):
        inputs = group.prepare(model.executor)
        check_layer_inputs(inputs, len(group.rows))
        walked = walk(model.executor, inputs, policy, candidate_ids, first_check=first_check)
        for position, row in enumerate(group.rows):
            results[row] = build_result(model, walked, position, group.seq_lens[position], group.cached_tokens)
    return results


def build_result(model: EarlyExitModel, walked: WalkResult, row: int, seq_len: int,
                 cached_tokens: int = 0) -> ExitResult:
    """The `ExitResult` of one row of a walk over a prompt of `seq_len` tokens, the first
    `cached_tokens` of them read from a cached prefix."""
    rows, top1_trace, exit_layer = walked.features_read(row), walked.top1[row], walked.exits[row]
    return ExitResult(
        answer_token_id=top1_trace[-1],
        answer_text=model.decode_token(top1_trace[-1]),
        exit_layer=exit_layer,
        num_layers=model.num_layers,
        first_check=walked.first_check,
        first_read_layer=walked.first_read,
        lens_reads=len(rows),
        accepted=walked.accepted[row],
        seq_len=seq_len,
        feature_names=walked.feature_names,
        trace=rows.round(6).tolist(),
        top1_trace=top1_trace,
        paper_flops_ratio=model.cost_model.paper_flops_ratio(exit_layer, seq_len),
        honest_flops_ratio=model.cost_model.honest_flops_ratio(exit_layer, seq_len, len(rows), walked.check_units,
                                                               cached_tokens=cached_tokens),
        cached_tokens=cached_tokens,
    )
