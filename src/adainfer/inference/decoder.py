"""One sequence's KV cache and the three passes that generation with early exit makes over it.

`KVDecoder` owns a transformers `DynamicCache` for a single sequence (batch size 1) and moves it
forward with `LayerExecutor`, so every layer that runs is the model's own module:

- `full_pass(token_ids)`: all layers on q new tokens (the prompt, or the verification of drafts
  made by a stop policy); every layer's cache grows by q.
- `early_pass(token_id, ...)`: layers one at a time for one token until a fixed layer or a stop
  policy ends it; the exit layer's logit lens chooses the next token.
- `finish_pass(token_ids, hidden, start_layer)`: layers `start_layer`..L-1 on q tokens whose
  layers below it already ran in early passes (their K/V is cached, `hidden` is their output):
  the verification of drafts made at a fixed layer, which reuses the drafts' shallow K/V as
  LayerSkip does (Elhoushi et al. 2024) instead of recomputing it.
- `crop(length)`: forget every cache entry from position `length` on, in every layer (rejected
  drafts), with the cache class's own `crop`.

Every logit is read by the executor's one lens (`adainfer.engine.lens`): verification reads its q
rows weight-major, and a draft at a fixed layer may read a draft vocabulary (`HeadRows`) only.

The layers an early pass skips still owe key/value entries to later tokens. `early_pass` can fill
them by *state propagation* (CALM, Schuster et al. 2022): the exit layer's hidden state is copied
forward as the input of every skipped layer, and only that layer's attention block runs on it -
its own input norm, K/V projections (and rotary / K-norm) and cache update - never its MLP. The
attention block is stopped right after its forward by a hook, so no layer code is re-implemented.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from adainfer.engine.executor import LayerInputs
from adainfer.engine.families import resolve
from adainfer.engine.lens import HeadRows
from adainfer.engine.model import EarlyExitModel
from adainfer.engine.walk import walk
from adainfer.policies.base import StopPolicy


class _AttentionDone(Exception):
    """Raised by a hook after a skipped layer's attention block: its MLP must not run."""


def _stop_after_attention(module: torch.nn.Module, args: object, output: object) -> None:
    raise _AttentionDone


@dataclass
class EarlyStep:
    """One token's early pass: the token its exit layer chose, that layer (1..L), lens products spent."""

    token_id: int
    exit_layer: int
    lens_checks: int
    filled_layers: int  # skipped layers whose K/V came from the exit state (0 when not filled)
    hidden: torch.Tensor  # (1, 1, hidden): the exit layer's output at this position


class KVDecoder:
    """Batch-size-1 decoding state: a `DynamicCache` built from the model's config, and its length.

    `length` is the number of positions every layer's cache holds once a pass is complete; the
    next token fed takes position `length`. `record_past=True` keeps sliding-window layers from
    dropping entries before `crop` is called, so rejected drafts can be removed from them too
    (transformers' `Cache.activate_past_recording`).
    """

    def __init__(self, model: EarlyExitModel, record_past: bool = False) -> None:
        self.model = model
        self.executor = model.executor
        self.cache = DynamicCache(config=model.model.config)
        if record_past:
            self.cache.activate_past_recording()
        self.length = 0

    @property
    def num_layers(self) -> int:
        return self.executor.num_layers

    def layer_lengths(self) -> list[int]:
        """Cached positions per decoder layer (a layer never written reads 0)."""
        return [self.cache.get_seq_length(index) for index in range(self.num_layers)]

    def _prepare(self, token_ids: Sequence[int]) -> LayerInputs:
        return self.executor.prepare(torch.tensor([list(token_ids)]), past_key_values=self.cache)

    @torch.no_grad()
    def full_pass(self, token_ids: Sequence[int], logits_for: int | None = None) -> torch.Tensor:
        """Run every layer on `token_ids` (q,) at positions length..length+q-1; logits (logits_for or q, V).

        Only the last `logits_for` positions go through the LM head (1 for a prompt).
        """
        if not token_ids:
            raise ValueError("full_pass needs at least one token")
        inputs = self._prepare(token_ids)
        hidden = self.executor.run_layers(inputs.embeddings, inputs, 0, self.num_layers)
        self.length += len(token_ids)
        rows = len(token_ids) if logits_for is None else logits_for
        return self.executor.lens(hidden[0, -rows:], weight_major=rows > 1)

    @torch.no_grad()
    def early_pass(self, token_id: int, exit_layer: int | None = None, policy: StopPolicy | None = None,
                   first_check: int | None = None, fill: bool = True, draft_rows: HeadRows | None = None,
                   layers: Sequence[torch.nn.Module] | None = None) -> EarlyStep:
        """Feed one token until `exit_layer` (fixed, 1..L) or until `policy` accepts; choose the next token.

        With a policy, layers are walked as in prediction (`adainfer.engine.walk`): the lens is read from
        the policy's learned `first_check_` (or `first_check` when given) on, the policy sees the
        features of the layers checked, and the last layer always answers. With `fill`, the skipped layers get K/V by state propagation (module
        docstring); without it they are left short, which only a caller that crops them before
        they are read may do. `draft_rows` (a draft vocabulary) replace the full vocabulary of the lens
        for a fixed exit layer, and `layers` the model's own layers (stand-ins such as int8 copies,
        whose K/V are approximate: the caller recomputes these positions before keeping them).
        """
        if (exit_layer is None) == (policy is None):
            raise ValueError("give exactly one of exit_layer and policy")
        if layers is not None and (policy is not None or fill):
            raise ValueError("stand-in layers draft at a fixed exit layer, without fill")
        inputs = self._prepare([token_id])
        if policy is None:
            if not 1 <= exit_layer <= self.num_layers:
                raise ValueError(f"exit layer must be in 1..{self.num_layers}, got {exit_layer}")
            hidden = self.executor.run_layers(inputs.embeddings, inputs, 0, exit_layer, layers=layers)
            last = hidden[0, -1]
            if draft_rows is None:
                token = int(self.executor.lens(last).argmax())
            else:
                token = draft_rows.token_at(int(self.executor.lens(last, rows=draft_rows).argmax()))
            exit_at, checks = exit_layer, 1
        else:
            hidden, token, exit_at, checks = self._run_until_policy(inputs, policy, first_check)
        filled = 0
        if fill and exit_at < self.num_layers:
            self._fill_from_state(hidden, inputs, exit_at)
            filled = self.num_layers - exit_at
        self.length += 1
        return EarlyStep(token_id=token, exit_layer=exit_at, lens_checks=checks, filled_layers=filled,
                         hidden=hidden[:, -1:])

    @torch.no_grad()
    def finish_pass(self, token_ids: Sequence[int], hidden: torch.Tensor, start_layer: int) -> torch.Tensor:
        """Run layers start_layer..L-1 on the last q tokens fed by early passes without fill; logits (q, V).

        Layers below `start_layer` already cache those q positions, and `hidden` (1, q, hidden) is
        their output of layer start_layer-1. The layer arguments (masks, positions, rotary tables)
        are recorded on a view of the cache whose layers below `start_layer` are cut back by q, so
        that they describe what the upper layers hold; the upper layers then cache the q positions.
        """
        if hidden.shape[:2] != (1, len(token_ids)):
            raise ValueError(f"hidden must have shape (1, {len(token_ids)}, hidden), got {tuple(hidden.shape)}")
        base = self.length - len(token_ids)
        if start_layer < self.num_layers:
            view = copy.copy(self.cache)
            view.layers = list(self.cache.layers)
            for index in range(start_layer):
                stand_in = copy.copy(view.layers[index])  # shares tensors; crop rebinds, never writes
                stand_in.crop(base - stand_in.get_seq_length())
                view.layers[index] = stand_in
            inputs = self.executor.prepare(torch.tensor([list(token_ids)]), past_key_values=view)
            hidden = self.executor.run_layers(hidden, inputs, start_layer, self.num_layers)
        return self.executor.lens(hidden[0], weight_major=len(token_ids) > 1)

    def _run_until_policy(self, inputs: LayerInputs, policy: StopPolicy,
                          first_check: int | None) -> tuple[torch.Tensor, int, int, int]:
        """The one depth loop (`walk`) on this position; (exit layer's output, token, exit layer, lens reads)."""
        walked = walk(self.executor, inputs, policy, keep_exit_hidden=True, first_check=first_check)
        reads = walked.exits[0] - walked.first_read + 1
        return walked.exit_hidden[0][None], walked.top1[0][-1], walked.exits[0], reads

    def _fill_from_state(self, hidden: torch.Tensor, inputs: LayerInputs, start: int) -> None:
        """Write K/V of layers start..L-1 for this position from `hidden`, running attention blocks only."""
        for index in range(start, self.num_layers):
            layer = self.executor.layers[index]
            handle = resolve(layer, self.executor.family.attention).register_forward_hook(_stop_after_attention)
            try:
                layer(hidden, *inputs.layer_args[index], **inputs.layer_kwargs[index])
            except _AttentionDone:
                pass
            else:
                raise RuntimeError(f"layer {index} never called its attention block "
                                   f"{self.executor.family.attention!r}; cannot fill its cache")
            finally:
                handle.remove()

    def crop(self, length: int) -> None:
        """Keep positions 0..length-1 in every layer's cache (layers may hold different lengths before)."""
        for index, layer in enumerate(self.cache.layers):
            cached = layer.get_seq_length()
            if cached < length:
                raise RuntimeError(f"layer {index} caches {cached} positions, fewer than {length} to keep")
            layer.crop(length - cached)  # a no-op at 0, except that sliding layers drop what they no longer need
        self.length = length
