"""The model's own dense forward on a batch of prompts: the baselines every early exit is measured against.

It is the model's Hugging Face forward with ``logits_to_keep=1`` (only the last position's
logits, as generation computes them), on the same left-padded batch `predict_batch` walks, so a
speed ratio compares like with like. With `use_prefix` it is the best dense path a transformers
user can write for prompts sharing a prefix: the forward over each prompt's own tokens with the
prefix's keys and values prefilled once (the model's `use_prefix`) and copied per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adainfer.engine.model import EarlyExitModel
from adainfer.engine.row_groups import group_prompts


@torch.no_grad()
def dense_logits(model: EarlyExitModel, prompts: Sequence[str], use_prefix: bool = False) -> torch.Tensor:
    """Last-position logits (batch, V) of the model's forward over `prompts`, left-padded; over
    the model's cached prefix where a prompt extends it and `use_prefix` is set (`engine.row_groups`)."""
    device = model.executor.head.weight.device
    logits: list[torch.Tensor | None] = [None] * len(prompts)
    for group in group_prompts(model, prompts, use_prefix):
        output = model.model(**group.forward_kwargs(device), logits_to_keep=1)
        for position, row in enumerate(group.rows):
            logits[row] = output.logits[position, -1]
    return torch.stack(logits)


def dense_answers(model: EarlyExitModel, prompts: Sequence[str], candidate_ids: Sequence[int] | None = None,
                  use_prefix: bool = False) -> list[int]:
    """The dense model's answer token per prompt: its top-1, or the best of `candidate_ids` (a closed set)."""
    logits = dense_logits(model, prompts, use_prefix).float()
    if candidate_ids:
        rows = torch.tensor(list(candidate_ids), device=logits.device)
        return rows[logits[:, rows].argmax(dim=-1)].tolist()
    return logits.argmax(dim=-1).tolist()
