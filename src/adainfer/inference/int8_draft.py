"""Int8 copies of a model's decoder layers, for lossless drafts that read a quarter of the bytes.

Decoding one token at batch size 1 on a CPU is bound by reading the weights: every fp32 layer is
read once per token, whatever few rows it multiplies. Self-speculative decoding pays that price for
each draft and once per verification of several drafts, so a draft that reads fewer bytes is what
makes it faster; an early-exit draft reads fewer layers, but on models whose logit lens settles
only in the last layers (Qwen2.5-Coder-1.5B, Gemma 3 270M) a shallow draft is rarely accepted.
These copies keep every layer and store each `nn.Linear` as int8 with per-row scales (PyTorch's
dynamic quantization: activations are quantized per call), so a draft is nearly always the full
model's token while reading about a quarter of the bytes. Verification still runs the model's own
fp32 layers, so the output is the full model's greedy output whatever the drafts were.

The copies are built once per loaded model (a few seconds, a quarter of the layers' memory again)
and kept as long as the model lives.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn

from adainfer.engine.model import EarlyExitModel

_COPIES: "weakref.WeakKeyDictionary[EarlyExitModel, nn.ModuleList]" = weakref.WeakKeyDictionary()


def int8_layers(model: EarlyExitModel) -> nn.ModuleList:
    """The decoder layers of `model` with every `nn.Linear` as a dynamically quantized int8 linear
    (one scale per output row, which keeps the drafts closer to the model than one per matrix).

    Each copy keeps its layer's cache index, norms and rotary tables, so it takes the arguments
    the executor prepares for the model's own layer and writes its keys and values to the same slot.
    """
    if model not in _COPIES:
        with warnings.catch_warnings():
            # Eager-mode dynamic quantization is marked deprecated in favour of torchao; it is the
            # int8 CPU path of the pinned torch, with no extra dependency.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            per_row = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
            copies = [torch.ao.quantization.quantize_dynamic(layer, per_row, dtype=torch.qint8)
                      for layer in model.executor.layers]
        _COPIES[model] = nn.ModuleList(copies).eval()
    return _COPIES[model]
