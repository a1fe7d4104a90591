"""Early-exit prediction of one answer token: stop at the first layer the policy accepts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

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


@torch.no_grad()
def predict(model: EarlyExitModel, prompt: str, policy: StopPolicy) -> ExitResult:
    """Run layers one at a time, ask `policy` after each, and skip every layer after the first accepted one."""
    input_ids = model.encode(prompt)
    executor = model.executor
    inputs = executor.prepare(input_ids)
    hidden = inputs.embeddings
    rows: list[np.ndarray] = []
    top1_trace: list[int] = []
    accepted = False
    with FeatureReader(executor, policy.features) as reader:
        reader.reset(hidden)
        for layer in range(executor.num_layers):
            hidden = executor.run_layers(hidden, inputs, layer, layer + 1)
            readout = reader.read(layer, hidden)
            rows.append(readout.features[0].numpy())
            top1_trace.append(int(readout.top1[0]))
            if layer + 1 < executor.num_layers and policy.should_exit(np.stack(rows)):
                accepted = True
                break
    return build_result(model, rows, top1_trace, accepted, input_ids.shape[1], reader.feature_names)


def build_result(model: EarlyExitModel, rows: list[np.ndarray], top1_trace: list[int], accepted: bool,
                 seq_len: int, feature_names: tuple[str, ...]) -> ExitResult:
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
        honest_flops_ratio=model.cost_model.honest_flops_ratio(exit_layer, seq_len, exit_layer),
    )
