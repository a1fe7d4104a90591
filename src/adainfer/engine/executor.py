"""Run a frozen Hugging Face causal LM one decoder layer at a time, driving its own modules.

Each family builds its decoder-layer inputs differently (rotary tables, sliding-window masks,
learned position embeddings, embedding scaling). Rather than re-implement that per family,
`prepare` runs the model's own forward with every decoder layer swapped for a recorder that
stores the arguments the model passes to it and returns its input unchanged. The recorded
arguments are then replayed to the real layers by `run_layers`, so what runs is exactly what
the model's forward would run, and layers that are never replayed are never computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adainfer.engine.families import FamilySpec, family_of, resolve
from adainfer.engine.lens import Lens


@dataclass
class LayerInputs:
    """What the model's forward hands to its decoder layers for one batch of prompts.

    `embeddings` is the input of layer 0, shape (batch, seq, hidden). `layer_args[i]` and
    `layer_kwargs[i]` are the other arguments of layer i (masks, position embeddings, cache).
    """

    embeddings: torch.Tensor
    layer_args: list[tuple[Any, ...]]
    layer_kwargs: list[dict[str, Any]]


class _RecordingDone(Exception):
    """Raised by the last recorder: nothing after the decoder layers needs to run."""


class _LayerRecorder(nn.Module):
    """Stands in for one decoder layer during `prepare`; unknown attributes read the real layer."""

    def __init__(self, layer: nn.Module, inputs: LayerInputs, is_last: bool) -> None:
        super().__init__()
        self.__dict__["_real_layer"] = layer  # a plain attribute: not a registered submodule
        self.__dict__["_inputs"] = inputs
        self.__dict__["_is_last"] = is_last

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_real_layer"], name)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if "hidden_states" in kwargs:
            hidden, rest = kwargs.pop("hidden_states"), args
        else:
            hidden, rest = args[0], args[1:]
        inputs: LayerInputs = self.__dict__["_inputs"]
        if not inputs.layer_args:
            inputs.embeddings = hidden
        inputs.layer_args.append(tuple(rest))
        inputs.layer_kwargs.append(kwargs)
        if self.__dict__["_is_last"]:
            raise _RecordingDone
        return hidden


class LayerExecutor:
    """Layer-by-layer access to a frozen causal LM: `prepare`, `run_layers`, and its `lens` (`engine.lens.Lens`)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.family: FamilySpec = family_of(model)
        self.layers: nn.ModuleList = resolve(model, self.family.layers)
        self.lens = Lens(model, self.family)
        self.head: nn.Module = self.lens.head
        if self.layers is None or self.head is None:
            raise ValueError(
                f"{type(model).__name__} has no {self.family.layers!r} or {self.family.head!r}: "
                "its family spec does not match this transformers version"
            )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @torch.no_grad()
    def prepare(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        position_ids: torch.Tensor | None = None,
    ) -> LayerInputs:
        """Record the inputs of every decoder layer for `input_ids` (batch, seq) without running any layer.

        Left-padded batches need `position_ids` (batch, seq) that count real tokens only.
        """
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (batch, seq>0), got {tuple(input_ids.shape)}")
        inputs = LayerInputs(embeddings=torch.empty(0), layer_args=[], layer_kwargs=[])
        parent_path, _, attr = self.family.layers.rpartition(".")
        parent = resolve(self.model, parent_path)
        recorders = nn.ModuleList(
            _LayerRecorder(layer, inputs, is_last=i == self.num_layers - 1)
            for i, layer in enumerate(self.layers)
        )
        setattr(parent, attr, recorders)
        try:
            self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=past_key_values is not None,
            )
        except _RecordingDone:
            pass
        finally:
            setattr(parent, attr, self.layers)
        if len(inputs.layer_kwargs) != self.num_layers:
            raise RuntimeError(
                f"{type(self.model).__name__} called {len(inputs.layer_kwargs)} of its "
                f"{self.num_layers} layers; its forward does not fit the executor"
            )
        return inputs

    @torch.no_grad()
    def run_layers(self, hidden: torch.Tensor, inputs: LayerInputs, start: int, stop: int,
                   on_layer: Callable[[int, torch.Tensor], None] | None = None,
                   layers: Sequence[nn.Module] | None = None) -> torch.Tensor:
        """Apply decoder layers `start` (inclusive) to `stop` (exclusive) to `hidden` (batch, seq, hidden).

        `run_layers(inputs.embeddings, inputs, 0, num_layers)` is the full model before its final norm.
        `on_layer(index, output)`, when given, sees each layer's 0-based index and output (batch, seq,
        hidden) as it is computed: how a full-depth trace keeps every layer's state. `layers` replaces
        the model's own layers with stand-ins of the same signature and cache index (a draft's
        quantized copies, `adainfer.inference.int8_draft`), which see the same arguments.
        """
        if not 0 <= start <= stop <= self.num_layers:
            raise ValueError(f"need 0 <= start <= stop <= {self.num_layers}, got start={start}, stop={stop}")
        layers = self.layers if layers is None else layers
        for index in range(start, stop):
            output = layers[index](hidden, *inputs.layer_args[index], **inputs.layer_kwargs[index])
            hidden = output[0] if isinstance(output, tuple) else output
            if on_layer is not None:
                on_layer(index, hidden)
        return hidden
