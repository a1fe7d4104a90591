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
from adainfer.features import FeatureReader
from adainfer.model import EarlyExitModel


class StopPolicy(Protocol):
    """What prediction needs from a policy (see `adainfer.policies`)."""

    features: tuple[str, ...]

    def should_exit(self, trace: np.ndarray) -> bool: ...


@dataclass
class ExitResult:
    """One answer. `exit_layer` is l', the number of decoder layers computed (1..num_layers)."""

    answer_token_id: int
    answer_text: str
    exit_layer: int
    num_layers: int
    layers_checked: int
    accepted: bool  # False when the policy never accepted and the last layer answered
    seq_len: int
    feature_names: tuple[str, ...]
    trace: list[list[float]]  # (exit_layer, n_features): the features the policy saw
    top1_trace: list[int]  # top-1 token id after each computed layer
    paper_flops_ratio: float
    honest_flops_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(model: EarlyExitModel, prompt: str, policy: StopPolicy,
            candidate_ids: Sequence[int] | None = None) -> ExitResult:
    """Run layers one at a time, ask `policy` after each, and skip every layer after the first accepted one."""
    return predict_batch(model, [prompt], policy, candidate_ids)[0]


@torch.no_grad()
def predict_batch(model: EarlyExitModel, prompts: Sequence[str], policy: StopPolicy,
                  candidate_ids: Sequence[int] | None = None) -> list[ExitResult]:
    """Answer each prompt with early exit; rows leave the batch at their own exit layer.

    With `candidate_ids` (a closed answer set's first tokens) and a policy that reads only
    candidate features (`cand_*`, `depth`), each check runs |C| rows of the LM head instead of V
    and the answer is the best candidate.

    Result `i` equals `predict(model, prompts[i], policy)`: the same answer, exit layer and
    decisions, with features within float error (padding changes the order of sums, not values).
    """
    if not prompts:
        return []
    batch = encode_batch(model, prompts)
    executor = model.executor
    device = executor.head.weight.device  # a model on a GPU gets its inputs there
    inputs = executor.prepare(batch.input_ids.to(device), batch.attention_mask.to(device),
                              position_ids=batch.position_ids.to(device))
    check_layer_inputs(inputs, len(prompts))
    hidden = inputs.embeddings
    active = list(range(len(prompts)))  # original index of each row of the current batch
    top1_traces: list[list[int]] = [[] for _ in prompts]
    accepted = [False] * len(prompts)
    with FeatureReader(executor, policy.features, candidate_ids) as reader:
        # Row i's trace so far is traces[i, :layers run]: a view, so the policy's growing trace
        # costs no stacking, and rows already written are never written again.
        traces = np.zeros((len(prompts), executor.num_layers, len(reader.feature_names)), dtype=np.float32)
        reader.reset(hidden)
        for layer in range(executor.num_layers):
            hidden = executor.run_layers(hidden, inputs, layer, layer + 1)
            readout = reader.read(layer, hidden)
            # One copy to the host per layer, not one per row (each would be a device sync).
            features, top1 = readout.features.cpu().numpy(), readout.top1.tolist()
            keep = []
            for position, row in enumerate(active):
                traces[row, layer] = features[position]
                top1_traces[row].append(top1[position])
                if layer + 1 < executor.num_layers and policy.should_exit(traces[row, : layer + 1]):
                    accepted[row] = True
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
        build_result(model, list(traces[row, : len(top1_traces[row])]), top1_traces[row], accepted[row],
                     batch.lengths[row], reader.feature_names, reader.check_units)
        for row in range(len(prompts))
    ]


def build_result(model: EarlyExitModel, rows: list[np.ndarray], top1_trace: list[int], accepted: bool,
                 seq_len: int, feature_names: tuple[str, ...], check_units: int | None = None) -> ExitResult:
    """An `ExitResult` from the feature rows and top-1 ids of the layers that ran; every layer was checked."""
    exit_layer = len(rows)
    answer = top1_trace[-1]
    return ExitResult(
        answer_token_id=answer,
        answer_text=model.decode_token(answer),
        exit_layer=exit_layer,
        num_layers=model.num_layers,
        layers_checked=exit_layer,
        accepted=accepted,
        seq_len=seq_len,
        feature_names=feature_names,
        trace=np.stack(rows).round(6).tolist(),
        top1_trace=top1_trace,
        paper_flops_ratio=model.cost_model.paper_flops_ratio(exit_layer, seq_len),
        honest_flops_ratio=model.cost_model.honest_flops_ratio(exit_layer, seq_len, exit_layer, check_units),
    )
