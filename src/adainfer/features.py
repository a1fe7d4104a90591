"""Per-layer features of the last token, read through the logit lens.

The paper's features are `gap` (top-1 minus top-2 probability) and `top_prob`. Its factor study
adds cosine similarities with the previous layer of the attention output, the MLP output and
the hidden state (`cos_attn`, `cos_mlp`, `cos_hidden`). `depth` = l/L is our addition: small
models are confident in junk tokens at early layers, and the two lens features alone cannot tell
layer 2 from layer 14.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from adainfer.executor import LayerExecutor
from adainfer.families import resolve

PAPER_FEATURES: tuple[str, ...] = ("gap", "top_prob")
SUBLAYER_FEATURES: tuple[str, ...] = ("cos_attn", "cos_mlp")
KNOWN_FEATURES: tuple[str, ...] = ("gap", "top_prob", "depth", "cos_attn", "cos_mlp", "cos_hidden")


def check_feature_names(names: Sequence[str]) -> tuple[str, ...]:
    """Validate requested feature names; returns them as a tuple."""
    unknown = [name for name in names if name not in KNOWN_FEATURES]
    if unknown or not names:
        raise ValueError(f"unknown or no features {unknown}; known: {', '.join(KNOWN_FEATURES)}")
    return tuple(names)


@dataclass
class LayerReadout:
    """The lens at one layer for a batch: features (batch, n_features) and top-1 token ids (batch,)."""

    features: torch.Tensor
    top1: torch.Tensor


class FeatureReader:
    """Computes named features after each layer; use as a context manager when sublayer features are asked.

    Sublayer outputs are caught with forward hooks on each layer's attention and MLP modules, at
    the last position only. At layer 0 the cosine features compare with nothing and read 0.
    """

    def __init__(self, executor: LayerExecutor, feature_names: Sequence[str]) -> None:
        self.executor = executor
        self.feature_names = check_feature_names(feature_names)
        self._sublayer_outputs: dict[str, list[torch.Tensor | None]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._previous_hidden: torch.Tensor | None = None
        self._seq_len = 0

    def __enter__(self) -> "FeatureReader":
        parts = {"cos_attn": self.executor.family.attention, "cos_mlp": self.executor.family.mlp}
        for name, part in parts.items():
            if name not in self.feature_names:
                continue
            outputs: list[torch.Tensor | None] = [None] * self.executor.num_layers
            self._sublayer_outputs[name] = outputs
            for index, layer in enumerate(self.executor.layers):
                module = resolve(layer, part)
                self._handles.append(module.register_forward_hook(self._catcher(outputs, index)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _catcher(self, outputs: list[torch.Tensor | None], index: int):
        def hook(module: torch.nn.Module, args: object, output: object) -> None:
            tensor = output[0] if isinstance(output, tuple) else output
            if tensor.ndim == 2:  # OPT runs its MLP on tokens flattened to (batch * seq, hidden)
                tensor = tensor.view(-1, self._seq_len, tensor.shape[-1])
            outputs[index] = tensor[:, -1].detach()

        return hook

    def reset(self, embeddings: torch.Tensor) -> None:
        """Start a new batch; `embeddings` (batch, seq, hidden) is the input of layer 0."""
        self._previous_hidden = embeddings[:, -1]
        self._seq_len = embeddings.shape[1]

    def keep_rows(self, layer: int, index: torch.Tensor) -> None:
        """Keep rows `index` of what `read(layer, ...)` remembers for the next layer's cosines."""
        self._previous_hidden = self._previous_hidden.index_select(0, index)
        for outputs in self._sublayer_outputs.values():
            if outputs[layer] is not None:
                outputs[layer] = outputs[layer].index_select(0, index)

    def read(self, layer: int, hidden: torch.Tensor) -> LayerReadout:
        """Features after decoder layer `layer` (0-based) whose output is `hidden` (batch, seq, hidden)."""
        last = hidden[:, -1]
        probs = F.softmax(self.executor.lens(last).float(), dim=-1)
        top = probs.topk(2, dim=-1)
        values = {
            "gap": top.values[:, 0] - top.values[:, 1],
            "top_prob": top.values[:, 0],
            "depth": torch.full_like(top.values[:, 0], (layer + 1) / self.executor.num_layers),
        }
        if "cos_hidden" in self.feature_names:
            values["cos_hidden"] = F.cosine_similarity(last, self._previous_hidden, dim=-1)
        for name, outputs in self._sublayer_outputs.items():
            if layer == 0 or outputs[layer - 1] is None:
                values[name] = torch.zeros_like(values["gap"])
            else:
                values[name] = F.cosine_similarity(outputs[layer], outputs[layer - 1], dim=-1)
        self._previous_hidden = last
        features = torch.stack([values[name].float() for name in self.feature_names], dim=-1)
        return LayerReadout(features=features, top1=top.indices[:, 0])


def as_numpy(readouts: Sequence[LayerReadout]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-layer readouts into features (batch, layers, n_features) and top-1 ids (batch, layers)."""
    features = torch.stack([readout.features for readout in readouts], dim=1)
    top1 = torch.stack([readout.top1 for readout in readouts], dim=1)
    return features.cpu().numpy().astype(np.float32), top1.cpu().numpy()
