"""Early-exit prediction of one answer token: stop at the first layer the policy accepts.

One loop serves one prompt and a batch alike; `adainfer.batch` holds the padding and row
selection that let rows leave the batch at their own exit layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from adainfer.batch import check_layer_inputs, encode_batch, keep_rows
from adainfer.decisions import policy_first_check, reads_previous_lens
from adainfer.features import FeatureReader
from adainfer.model import EarlyExitModel


class StopPolicy(Protocol):
    """What prediction needs from a policy (see `adainfer.policies`)."""

    features: tuple[str, ...]

    def should_exit(self, trace: np.ndarray) -> bool: ...


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
    seq_len: int
    feature_names: tuple[str, ...]
    trace: list[list[float]]  # (lens_reads, n_features): the features read
    top1_trace: list[int]  # top-1 token id after each read layer
    paper_flops_ratio: float
    honest_flops_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(model: EarlyExitModel, prompt: str, policy: StopPolicy,
            candidate_ids: Sequence[int] | None = None) -> ExitResult:
    """Run layers one at a time, ask `policy` after each, and skip every layer after the first accepted one."""
    return predict_batch(model, [prompt], policy, candidate_ids)[0]


def first_read_layer(first_check: int, reads_previous: bool, num_layers: int) -> int:
    """The first layer (1-based) whose lens a scheduled policy reads (see `adainfer.decisions`)."""
    if first_check > num_layers:
        return num_layers  # never asked: only the last layer's lens, for the answer
    return first_check - 1 if reads_previous and first_check > 1 else first_check


@torch.no_grad()
def predict_batch(model: EarlyExitModel, prompts: Sequence[str], policy: StopPolicy,
                  candidate_ids: Sequence[int] | None = None) -> list[ExitResult]:
    """Answer each prompt with early exit; rows leave the batch at their own exit layer.

    The policy's check schedule is honoured as replay scores it (`adainfer.decisions`): no lens
    before its `first_check_` (but the layer before it for `agree_prev`), and the policy sees only
    the rows of the layers it checked. With `candidate_ids` (a closed answer set's first tokens)
    and a policy that reads only candidate features (`cand_*`, `depth`), each check runs |C| rows
    of the LM head instead of V and the answer is the best candidate.

    Result `i` equals `predict(model, prompts[i], policy)`: the same answer, exit layer and
    decisions, with features within float error (padding changes the order of sums, not values).
    """
    if not prompts:
        return []
    batch = encode_batch(model, prompts)
    executor = model.executor
    num_layers = executor.num_layers
    first_check = policy_first_check(policy)
    first_read = first_read_layer(first_check, reads_previous_lens(policy.features), num_layers)
    device = executor.head.weight.device  # a model on a GPU gets its inputs there
    inputs = executor.prepare(batch.input_ids.to(device), batch.attention_mask.to(device),
                              position_ids=batch.position_ids.to(device))
    check_layer_inputs(inputs, len(prompts))
    hidden = inputs.embeddings
    active = list(range(len(prompts)))  # original index of each row of the current batch
    exits = [num_layers] * len(prompts)
    top1_traces: list[list[int]] = [[] for _ in prompts]
    accepted = [False] * len(prompts)
    with FeatureReader(executor, policy.features, candidate_ids) as reader:
        # Row i's trace so far is traces[i, first_check - 1 : layers run]: a view, so the policy's
        # growing trace costs no stacking, and rows already written are never written again.
        traces = np.zeros((len(prompts), num_layers, len(reader.feature_names)), dtype=np.float32)
        reader.reset(hidden)
        for layer in range(num_layers):
            hidden = executor.run_layers(hidden, inputs, layer, layer + 1)
            if layer + 1 < first_read:
                reader.skip(hidden)
                continue
            readout = reader.read(layer, hidden)
            # One copy to the host per layer, not one per row (each would be a device sync).
            features, top1 = readout.features.cpu().numpy(), readout.top1.tolist()
            ask = first_check <= layer + 1 < num_layers  # the last layer answers anyway
            keep = []
            for position, row in enumerate(active):
                traces[row, layer] = features[position]
                top1_traces[row].append(top1[position])
                if ask and policy.should_exit(traces[row, first_check - 1: layer + 1]):
                    accepted[row], exits[row] = True, layer + 1
                else:
                    keep.append(position)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=hidden.device)
                hidden, inputs = keep_rows(hidden, inputs, layer + 1, index)
                reader.keep_rows(layer, index)
                active = [active[position] for position in keep]
    return [
        build_result(model, traces[row, first_read - 1: exits[row]], top1_traces[row], accepted[row],
                     batch.lengths[row], reader.feature_names, first_check, reader.check_units)
        for row in range(len(prompts))
    ]


def build_result(model: EarlyExitModel, rows: np.ndarray, top1_trace: list[int], accepted: bool,
                 seq_len: int, feature_names: tuple[str, ...], first_check: int,
                 check_units: int | None = None) -> ExitResult:
    """An `ExitResult` from the feature rows (reads, n_features) and top-1 ids of the layers read;
    the last read layer is the exit layer."""
    exit_layer = first_read_layer(first_check, reads_previous_lens(feature_names), model.num_layers) + len(rows) - 1
    answer = top1_trace[-1]
    return ExitResult(
        answer_token_id=answer,
        answer_text=model.decode_token(answer),
        exit_layer=exit_layer,
        num_layers=model.num_layers,
        first_check=first_check,
        first_read_layer=exit_layer - len(rows) + 1,
        lens_reads=len(rows),
        accepted=accepted,
        seq_len=seq_len,
        feature_names=feature_names,
        trace=rows.round(6).tolist(),
        top1_trace=top1_trace,
        paper_flops_ratio=model.cost_model.paper_flops_ratio(exit_layer, seq_len),
        honest_flops_ratio=model.cost_model.honest_flops_ratio(exit_layer, seq_len, len(rows), check_units),
    )
