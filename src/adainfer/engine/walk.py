"""THE depth loop of early exit: run a layer, read the lens, ask the policy, let finished rows go.

Prediction (a batch of prompts) and generation (one new token over a KV cache) both walk the
layers here, so they apply the same rules as replay (`adainfer.engine.schedule`): no lens before the
layer the policy's check schedule first reads, the policy sees only the layers it checked, and
the last layer always answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adainfer.engine.batch import keep_rows
from adainfer.engine.executor import LayerExecutor, LayerInputs
from adainfer.engine.features import FeatureReader
from adainfer.engine.schedule import check_first_check, first_read_layer, policy_first_check, reads_previous_lens
from adainfer.engine.stop_rule import StopRule


@dataclass
class WalkResult:
    """Per row of the batch: where it stopped and what it read.

    `traces[row, first_read - 1 : exits[row]]` are the features read (layers, n_features);
    `top1[row]` the top-1 ids of those layers; `exit_hidden[row]` the output (seq, hidden) of the
    exit layer when asked for (generation fills the skipped layers' cache from it).
    """

    exits: list[int]
    accepted: list[bool]
    traces: np.ndarray
    top1: list[list[int]]
    first_check: int
    first_read: int
    feature_names: tuple[str, ...]
    check_units: int
    exit_hidden: list[torch.Tensor | None]

    def features_read(self, row: int) -> np.ndarray:
        """The feature rows (reads, n_features) of `row`, from its first read layer to its exit."""
        return self.traces[row, self.first_read - 1: self.exits[row]]


@torch.no_grad()
def walk(executor: LayerExecutor, inputs: LayerInputs, policy: StopRule, candidate_ids: Sequence[int] | None = None,
         keep_exit_hidden: bool = False, first_check: int | None = None) -> WalkResult:
    """Run `executor`'s layers on `inputs` (a batch), each row stopping where `policy` accepts.

    `policy` needs `features` and `should_exit(trace)` (trace: (layers checked, n_features)); its
    learned `first_check_` sets the schedule unless `first_check` overrides it. Rows leave the
    batch at their own exit layer.
    """
    num_layers = executor.num_layers
    if first_check is None:
        first_check = policy_first_check(policy)
    check_first_check(first_check, num_layers)
    first_read = first_read_layer(first_check, reads_previous_lens(policy.features), num_layers)
    hidden = inputs.embeddings
    rows = hidden.shape[0]
    active = list(range(rows))  # original index of each row of the current batch
    exits, accepted = [num_layers] * rows, [False] * rows
    top1_traces: list[list[int]] = [[] for _ in range(rows)]
    exit_hidden: list[torch.Tensor | None] = [None] * rows
    with FeatureReader(executor, policy.features, candidate_ids) as reader:
        # Row i's trace so far is traces[i, first_check - 1 : layers run]: a view, so the policy's
        # growing trace costs no stacking, and rows already written are never written again.
        traces = np.zeros((rows, num_layers, len(reader.feature_names)), dtype=np.float32)
        reader.reset(hidden)
        for layer in range(num_layers):
            hidden = executor.run_layers(hidden, inputs, layer, layer + 1)
            if layer + 1 < first_read:
                reader.skip(hidden)
                continue
            readout = reader.read(layer, hidden)
            # One copy to the host per layer, not one per row (each would be a device sync).
            features, top1 = readout.features.cpu().numpy(), readout.top1.tolist()
            ask = first_check <= layer + 1 < num_layers
            keep = []
            for position, row in enumerate(active):
                traces[row, layer] = features[position]
                top1_traces[row].append(top1[position])
                if ask and policy.should_exit(traces[row, first_check - 1: layer + 1]):
                    accepted[row], exits[row] = True, layer + 1
                    if keep_exit_hidden:
                        exit_hidden[row] = hidden[position]
                else:
                    keep.append(position)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=hidden.device)
                hidden, inputs = keep_rows(hidden, inputs, layer + 1, index)
                reader.keep_rows(layer, index)
                active = [active[position] for position in keep]
        if keep_exit_hidden:  # rows still active answered at the last layer they ran
            for position, row in enumerate(active):
                if exit_hidden[row] is None:
                    exit_hidden[row] = hidden[position]
    return WalkResult(exits, accepted, traces, top1_traces, first_check, first_read, reader.feature_names,
                      reader.check_units, exit_hidden)
