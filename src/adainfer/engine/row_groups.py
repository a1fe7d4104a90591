"""A batch of prompts as the groups of rows that run together: on a cached prefix, or in full.

`group_prompts` is the one place that decides, per prompt, whether it runs on the model's
cached prefix (`EarlyExitModel.use_prefix`, `engine.prefix`) or from its first token: prediction,
traces and the dense baselines all take their batches from it, so they answer the same rows the
same way. A prompt that starts with the prefix's text but not with its tokens runs in full and is
counted (`PrefixCache.fallbacks`); a prompt that does not start with the text runs in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adainfer.engine.batch import pad_rows
from adainfer.engine.executor import LayerExecutor, LayerInputs
from adainfer.engine.model import EarlyExitModel


@dataclass
class RowGroup:
    """Rows `rows` (indices into the prompts) as one left-padded batch: ids (batch, q), the mask
    over cache + ids (batch, p + q), position ids (batch, q), the cache they attend to (None for
    full prompts), each row's full prompt length, and the p cached positions every row attends to."""

    rows: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    past_key_values: Any
    seq_lens: list[int]
    cached_tokens: int

    def to(self, device: torch.device) -> "RowGroup":
        return RowGroup(self.rows, self.input_ids.to(device), self.attention_mask.to(device),
                        self.position_ids.to(device), self.past_key_values, self.seq_lens, self.cached_tokens)

    def prepare(self, executor: LayerExecutor) -> LayerInputs:
        """The layer inputs of this group (`LayerExecutor.prepare`), on the head's device."""
        group = self.to(executor.head.weight.device)
        return executor.prepare(group.input_ids, group.attention_mask, past_key_values=group.past_key_values,
                                position_ids=group.position_ids)

    def forward_kwargs(self, device: torch.device) -> dict[str, Any]:
        """Keyword arguments of the model's own forward over this group (the dense baselines)."""
        group = self.to(device)
        return {"input_ids": group.input_ids, "attention_mask": group.attention_mask,
                "position_ids": group.position_ids, "past_key_values": group.past_key_values,
                "use_cache": group.past_key_values is not None}


def group_prompts(model: EarlyExitModel, prompts: Sequence[str], use_prefix: bool = True) -> list[RowGroup]:
    """The groups that answer `prompts` (every prompt encoded once by `model.encode`, errors as it raises).

    Without a prefix (or with `use_prefix=False`) that is one left-padded batch of full prompts.
    """
    if not prompts:
        raise ValueError("no prompts to encode")
    full = [model.encode(prompt)[0] for prompt in prompts]
    prefix = model.prefix if use_prefix else None
    queries: dict[int, torch.Tensor] = {}
    if prefix is not None:
        for row, prompt in enumerate(prompts):
            if prefix.applies_to(prompt):
                query = prefix.query_ids(full[row])
                if query is not None:
                    queries[row] = query
    groups = []
    in_full = [row for row in range(len(prompts)) if row not in queries]
    if in_full:
        batch = pad_rows(model, [full[row] for row in in_full])
        groups.append(RowGroup(in_full, batch.input_ids, batch.attention_mask, batch.position_ids, None,
                               batch.lengths, 0))
    if queries:
        cached = list(queries)
        for members in prefix.query_groups([len(queries[row]) for row in cached]):
            rows = [cached[member] for member in members]
            batch = prefix.query_batch([queries[row] for row in rows])
            groups.append(RowGroup(rows, batch.input_ids, batch.attention_mask, batch.position_ids,
                                   prefix.batch_cache(len(rows)), [len(full[row]) for row in rows], len(prefix)))
    return groups
