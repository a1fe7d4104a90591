"""Batches for early exit: padding, and rows leaving the batch (for `engine.walk` and `inference.predict`).

Prompts are left-padded, so the last position of every row is its last real token, and their
position ids count real tokens only, so every row sees exactly the positions it would see alone
(GPT-2 adds learned absolute position embeddings and would otherwise shift by the padding).
After each layer the lens reads the last position of the rows still running and the policy is
asked once per row; rows it accepts are dropped from the hidden state, from every per-row layer
argument recorded by `LayerExecutor.prepare` and from the feature reader's memory of the
previous layer, so later layers only run on the rows still going.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adainfer.engine.executor import LayerInputs
from adainfer.engine.model import EarlyExitModel
from adainfer.engine.prefix import select_cache_rows


@dataclass
class PaddedBatch:
    """Left-padded token ids (batch, seq), attention mask (batch, seq), position ids (batch, seq)
    counting real tokens from 0, and each row's unpadded length (batch,)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: list[int]


def encode_batch(model: EarlyExitModel, prompts: Sequence[str]) -> PaddedBatch:
    """Encode each prompt as `model.encode` does (same ids, same `PromptError`s), then left-pad."""
    if not prompts:
        raise ValueError("no prompts to encode")
    return pad_rows(model, [model.encode(prompt)[0] for prompt in prompts])


def pad_rows(model: EarlyExitModel, rows: Sequence[torch.Tensor]) -> PaddedBatch:
    """Left-pad token id rows (each (seq,)) into a `PaddedBatch`."""
    lengths = [len(row) for row in rows]
    width = max(lengths)
    # Padded positions are masked out, so any valid id will do when the tokenizer has no pad token.
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad_id, dtype=rows[0].dtype)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row):] = row
        attention_mask[index, width - len(row):] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return PaddedBatch(input_ids, attention_mask, position_ids, lengths)


def select_rows(value: Any, index: torch.Tensor, batch_size: int) -> Any:
    """`value` with every tensor whose dim 0 is `batch_size` cut to the rows `index` (kept, k,).

    Walks tuples, lists and dicts; anything else (None, flags, caches) is returned as is. Needs
    `batch_size` > 1: a tensor with leading dim 1 is then unambiguously broadcast over rows (a
    mask or rotary table shared by all of them) and stays as it is. It assumes, as holds for
    every family in `adainfer.engine.families`, that no layer argument has a leading dim other than
    the batch that happens to equal it (`check_layer_inputs` rejects other leading dims).
    A tensor shared by several places (the same mask for every layer) is cut once and stays shared.
    """
    if batch_size < 2:
        raise ValueError(f"need a batch of at least 2 rows to tell rows from broadcast, got {batch_size}")
    return _select(value, index, batch_size, {})


def _select(value: Any, index: torch.Tensor, batch_size: int, done: dict[int, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 or value.shape[0] != batch_size:
            return value
        if id(value) not in done:
            done[id(value)] = value.index_select(0, index)
        return done[id(value)]
    if isinstance(value, tuple):
        return tuple(_select(item, index, batch_size, done) for item in value)
    if isinstance(value, list):
        return [_select(item, index, batch_size, done) for item in value]
    if isinstance(value, dict):
        return {key: _select(item, index, batch_size, done) for key, item in value.items()}
    return value


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _caches(values: Sequence[Any]) -> Iterator[Any]:
    """The KV caches (objects with `layers` and `get_seq_length`) among layer arguments."""
    for group in values:
        for value in group:
            if hasattr(value, "layers") and hasattr(value, "get_seq_length"):
                yield value


def check_layer_inputs(inputs: LayerInputs, batch_size: int) -> None:
    """Raise `ValueError` unless every recorded tensor is per-row (dim 0 = batch) or broadcast (dim 0 = 1)."""
    for layer, (args, kwargs) in enumerate(zip(inputs.layer_args, inputs.layer_kwargs)):
        for tensor in _tensors((args, kwargs)):
            if tensor.ndim == 0 or tensor.shape[0] not in (1, batch_size):
                raise ValueError(
                    f"layer {layer} gets a tensor of shape {tuple(tensor.shape)}, neither per row "
                    f"(dim 0 = {batch_size}) nor broadcast (dim 0 = 1): this model cannot be batched"
                )


def keep_rows(hidden: torch.Tensor, inputs: LayerInputs, next_layer: int,
               index: torch.Tensor) -> tuple[torch.Tensor, LayerInputs]:
    """Rows `index` of `hidden` (batch, seq, hidden) and of the arguments of layers `next_layer` on.

    The arguments of layers already run are never replayed, so they are left as they are. A KV
    cache among them (a cached prompt prefix, `engine.prefix`) keeps those rows in its layers
    `next_layer` on, in place: it is the batch's own copy.
    """
    later_values = [*inputs.layer_args[next_layer:], *(kwargs.values() for kwargs in inputs.layer_kwargs[next_layer:])]
    for cache in {id(value): value for value in _caches(later_values)}.values():
        select_cache_rows(cache, index, next_layer)
    later = slice(next_layer, None)
    hidden, args, kwargs = select_rows((hidden, inputs.layer_args[later], inputs.layer_kwargs[later]),
                                       index, hidden.shape[0])
    return hidden, LayerInputs(embeddings=inputs.embeddings,
                               layer_args=inputs.layer_args[:next_layer] + args,
                               layer_kwargs=inputs.layer_kwargs[:next_layer] + kwargs)

