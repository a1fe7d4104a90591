"""The model's own dense forward on a batch of prompts: the baseline every early exit is measured against.

It is the model's Hugging Face forward with ``logits_to_keep=1`` (only the last position's
logits, as generation computes them), on the same left-padded batch `predict_batch` walks, so a
speed ratio compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adainfer.engine.batch import encode_batch
from adainfer.engine.model import EarlyExitModel


@torch.no_grad()
def dense_logits(model: EarlyExitModel, prompts: Sequence[str]) -> torch.Tensor:
    """Last-position logits (batch, V) of the model's forward over `prompts`, left-padded."""
    batch = encode_batch(model, prompts)
    device = model.executor.head.weight.device
    output = model.model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                         position_ids=batch.position_ids.to(device), use_cache=False, logits_to_keep=1)
    return output.logits[:, -1]


def dense_answers(model: EarlyExitModel, prompts: Sequence[str],
                  candidate_ids: Sequence[int] | None = None) -> list[int]:
    """The dense model's answer token per prompt: its top-1, or the best of `candidate_ids` (a closed set)."""
    logits = dense_logits(model, prompts).float()
    if candidate_ids:
        rows = torch.tensor(list(candidate_ids), device=logits.device)
        return rows[logits[:, rows].argmax(dim=-1)].tolist()
    return logits.argmax(dim=-1).tolist()
