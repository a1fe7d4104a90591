"""A prompt prefix computed once: its keys and values at every layer, reused by every prompt that starts with it.

A fitted classifier puts one fixed block of demonstrations before every input (68 of ~80 tokens
on SST-2 with Gemma 3 270M). `PrefixCache.build` runs that block once through all layers into a
transformers `DynamicCache` (batch 1); a batch of prompts then runs only its own tokens (the
query), each layer attending to the cached keys and values of that layer, which is what the
model's forward over the full prompt computes (tested within 1e-4 in fp32 on every family).

The cache is valid for a prompt only where the prompt's tokens start with exactly the prefix's
tokens: a tokenizer may merge across the boundary (then that prompt runs in full and
`fallbacks` counts it). The query's ids are the full prompt's ids after the prefix, so
prefix + query == full prompt by construction, special tokens (BOS) included.

Batching. Queries are left-padded, so the padding sits between the prefix and each row's query:
the 2D attention mask (batch, prefix + query) masks it, and position ids continue from the
prefix length counting real tokens only. Causal masks index cache positions, not position ids,
so padding in the middle would lengthen a row's distance to the prefix by its padding: harmless
for full attention, wrong for a sliding window the prompt outgrows. `query_groups` therefore
batches rows of different lengths together only where no sliding window can bite (prefix +
longest query <= window), and otherwise groups rows of equal length (no padding at all).

Every batch gets its own copy of the cache (`batch_cache`): the prefix's tensors expanded over
the rows (views, no copy); each layer's own update concatenates the query's keys to them into a
new tensor, so the prefix is never written. Rows that leave the batch are cut from the layers
not yet run by `engine.batch.keep_rows`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from adainfer.engine.executor import LayerExecutor


@dataclass
class QueryBatch:
    """Left-padded query ids (batch, q), the mask over prefix + query (batch, p + q), position ids
    (batch, q) continuing from p, and the rows' query lengths (batch,)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    query_lengths: list[int]


class PrefixCache:
    """The keys and values of a fixed prompt prefix at every layer, computed once per loaded model.

    `ids` (p,) are its token ids as the tokenizer gives them at the start of a prompt (with BOS).
    `fallbacks` counts prompts that started with `text` but not with `ids` (answered in full).
    """

    def __init__(self, text: str, ids: torch.Tensor, cache: DynamicCache, sliding_window: int | None) -> None:
        self.text = text
        self.ids = ids
        self.cache = cache
        self.sliding_window = sliding_window
        self.fallbacks = 0

    @classmethod
    @torch.no_grad()
    def build(cls, executor: LayerExecutor, text: str, ids: torch.Tensor) -> "PrefixCache":
        """Run `ids` (1, p) through every layer of `executor`'s model and keep each layer's K/V."""
        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
            raise ValueError(f"prefix ids must have shape (1, p>0), got {tuple(ids.shape)}")
        config = executor.model.config
        cache = DynamicCache(config=config)
        inputs = executor.prepare(ids, past_key_values=cache)
        executor.run_layers(inputs.embeddings, inputs, 0, executor.num_layers)
        window = getattr(config, "sliding_window", None)
        return cls(text, ids[0].cpu(), cache, window if isinstance(window, int) and window > 0 else None)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values of every layer."""
        return sum(tensor.numel() * tensor.element_size()
                   for layer in self.cache.layers for tensor in (layer.keys, layer.values) if tensor is not None)

    def applies_to(self, prompt: str) -> bool:
        """Whether `prompt` starts with the prefix's text (its tokens are then checked by `query_ids`)."""
        return prompt.startswith(self.text) and len(prompt) > len(self.text)

    def query_ids(self, full_ids: torch.Tensor) -> torch.Tensor | None:
        """The ids after the prefix of a prompt's full ids (seq,), or None (counted) where they do not
        start with the prefix's ids or add nothing to them."""
        length = len(self)
        if full_ids.shape[0] > length and torch.equal(full_ids[:length].cpu(), self.ids):
            return full_ids[length:]
        self.fallbacks += 1
        return None

    def query_groups(self, query_lengths: Sequence[int]) -> list[list[int]]:
        """Rows (indices into `query_lengths`) that can share one padded batch (module docstring)."""
        rows = list(range(len(query_lengths)))
        if self.sliding_window is None or len(self) + max(query_lengths, default=0) <= self.sliding_window:
            return [rows] if rows else []
        by_length: dict[int, list[int]] = {}
        for row in rows:
            by_length.setdefault(query_lengths[row], []).append(row)
        return list(by_length.values())

    def query_batch(self, queries: Sequence[torch.Tensor]) -> QueryBatch:
        """Left-pad `queries` (each (q_i,)) behind the prefix: ids, mask over prefix + query, position ids."""
        if not queries:
            raise ValueError("no queries to batch")
        lengths = [int(query.shape[0]) for query in queries]
        width, prefix = max(lengths), len(self)
        input_ids = torch.zeros((len(queries), width), dtype=self.ids.dtype)
        query_mask = torch.zeros((len(queries), width), dtype=torch.long)
        for row, query in enumerate(queries):
            input_ids[row, width - lengths[row]:] = query
            query_mask[row, width - lengths[row]:] = 1
        attention_mask = torch.cat([torch.ones((len(queries), prefix), dtype=torch.long), query_mask], dim=1)
        position_ids = prefix + (query_mask.cumsum(dim=1) - 1).clamp(min=0)
        return QueryBatch(input_ids, attention_mask, position_ids, lengths)

    def batch_cache(self, rows: int) -> DynamicCache:
        """A cache for `rows` queries holding the prefix: each layer's tensors expanded over rows (views)."""
        batch = copy.copy(self.cache)
        batch.layers = []
        for layer in self.cache.layers:
            copied = copy.copy(layer)  # shares tensors; a layer's update concatenates, never writes them
            copied.keys = layer.keys.expand(rows, -1, -1, -1)
            copied.values = layer.values.expand(rows, -1, -1, -1)
            batch.layers.append(copied)
        return batch


def select_cache_rows(cache: DynamicCache, index: torch.Tensor, first_layer: int) -> None:
    """Keep rows `index` of the layers `first_layer` on of a batch's cache (layers already run are never read again).

    A layer still holding the prefix expanded over rows (stride 0) is re-expanded, not copied.
    """
    for layer in cache.layers[first_layer:]:
        if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
            continue
        if layer.keys.stride(0) == 0 and layer.values.stride(0) == 0:
            layer.keys = layer.keys[:1].expand(len(index), -1, -1, -1)
            layer.values = layer.values[:1].expand(len(index), -1, -1, -1)
        else:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
