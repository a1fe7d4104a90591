"""Per-layer features of the last token, read through the logit lens.

The paper's features are `gap` (top-1 minus top-2 probability) and `top_prob`. Its factor study
adds cosine similarities with the previous layer of the attention output, the MLP output and
the hidden state (`cos_attn`, `cos_mlp`, `cos_hidden`). `depth` = l/L is our addition: small
models are confident in junk tokens at early layers, and the two lens features alone cannot tell
layer 2 from layer 14.

Tasks with a closed answer set (SST-2's two labels, MMLU's four letters) can read the lens on the
candidate answer tokens only: `cand_gap` and `cand_top_prob` are the same two features over the
softmax of the candidates' logits, which costs |C|*h per check instead of V*h. `agree_prev` and
`cand_agree_prev` are 1 when the (candidate) top-1 token equals the previous layer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from adainfer.engine.executor import LayerExecutor
from adainfer.engine.families import resolve

PAPER_FEATURES: tuple[str, ...] = ("gap", "top_prob")
SUBLAYER_FEATURES: tuple[str, ...] = ("cos_attn", "cos_mlp")
FULL_VOCAB_FEATURES: tuple[str, ...] = ("gap", "top_prob", "agree_prev")
CANDIDATE_FEATURES: tuple[str, ...] = ("cand_gap", "cand_top_prob", "cand_agree_prev")
KNOWN_FEATURES: tuple[str, ...] = ("gap", "top_prob", "depth", "cos_attn", "cos_mlp", "cos_hidden",
                                   "agree_prev", *CANDIDATE_FEATURES)


def needs_full_vocab(feature_names: Sequence[str], has_candidates: bool) -> bool:
    """Whether reading these features takes the V*h lens; if not, checks and answers use the candidates.

    The one rule for live prediction (`FeatureReader`) and replay (`eval.replay.evaluate_policy`).
    """
    return not has_candidates or any(name in FULL_VOCAB_FEATURES for name in feature_names)


def check_feature_names(names: Sequence[str]) -> tuple[str, ...]:
    """Validate requested feature names; returns them as a tuple."""
    unknown = [name for name in names if name not in KNOWN_FEATURES]
    if unknown or not names:
        raise ValueError(f"unknown or no features {unknown}; known: {', '.join(KNOWN_FEATURES)}")
    return tuple(names)


@dataclass
class LayerReadout:
    """The lens at one layer for a batch: features (batch, n_features) and top-1 token ids (batch,).

    `top1` is the full-vocabulary top-1 when the reader computed the full lens, else the best
    candidate; `cand_top1` is the best candidate's token id whenever candidates were given.
    """

    features: torch.Tensor
    top1: torch.Tensor
    cand_top1: torch.Tensor | None = None


class FeatureReader:
    """Computes named features after each layer; use as a context manager when sublayer features are asked.

    Sublayer outputs are caught with forward hooks on each layer's attention and MLP modules, at
    the last position only. At layer 0 the cosine features compare with nothing and read 0.
    """

    def __init__(self, executor: LayerExecutor, feature_names: Sequence[str],
                 candidate_ids: Sequence[int] | None = None, full_vocab: bool | None = None) -> None:
        """`candidate_ids` are the first tokens of a closed answer set; `full_vocab` forces (True)
        or skips (False) the V*h lens; by default it runs unless every feature is a candidate one."""
        self.executor = executor
        self.feature_names = check_feature_names(feature_names)
        wants_candidates = [name for name in self.feature_names if name in CANDIDATE_FEATURES]
        if wants_candidates and not candidate_ids:
            raise ValueError(f"features {wants_candidates} need the task's candidate answer tokens")
        self.candidate_ids = (torch.tensor(list(dict.fromkeys(candidate_ids)), dtype=torch.long,
                                           device=executor.head.weight.device)
                              if candidate_ids else None)
        needs_full = any(name in FULL_VOCAB_FEATURES for name in self.feature_names)
        if full_vocab is False and needs_full:
            raise ValueError(f"features {FULL_VOCAB_FEATURES} need the full-vocabulary lens")
        default = needs_full_vocab(self.feature_names, self.candidate_ids is not None)
        self.full_vocab = default if full_vocab is None else full_vocab
        if not self.full_vocab and self.candidate_ids is None:
            raise ValueError("without the full-vocabulary lens the reader needs candidate tokens")
        self._previous_top1: torch.Tensor | None = None
        self._previous_cand_top1: torch.Tensor | None = None
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
        self._previous_top1 = self._previous_cand_top1 = None

    def keep_rows(self, layer: int, index: torch.Tensor) -> None:
        """Keep rows `index` of what `read(layer, ...)` remembers for the next layer's cosines."""
        self._previous_hidden = self._previous_hidden.index_select(0, index)
        if self._previous_top1 is not None:
            self._previous_top1 = self._previous_top1.index_select(0, index)
        if self._previous_cand_top1 is not None:
            self._previous_cand_top1 = self._previous_cand_top1.index_select(0, index)
        for outputs in self._sublayer_outputs.values():
            if outputs[layer] is not None:
                outputs[layer] = outputs[layer].index_select(0, index)

    def skip(self, hidden: torch.Tensor) -> None:
        """A layer whose lens is not read (before a check schedule's first check): remember its
        hidden state for the next layer's `cos_hidden`, and that no top-1 was read."""
        self._previous_hidden = hidden[:, -1]
        self._previous_top1 = self._previous_cand_top1 = None

    def read(self, layer: int, hidden: torch.Tensor) -> LayerReadout:
        """Features after decoder layer `layer` (0-based) whose output is `hidden` (batch, seq, hidden)."""
        last = hidden[:, -1]
        if self.full_vocab:
            return self._from_logits(layer, last, self.executor.lens(last).float())
        return self._from_logits(layer, last, None,
                                 self.executor.lens(last, rows=self.candidate_ids).float())

    def read_all(self, lasts: torch.Tensor) -> list[LayerReadout]:
        """`read` for every layer at once from the last-token states (layers, batch, hidden).

        For full-depth traces: one lens product over all layers reads the head's V*h weights once
        instead of once per layer, which is what makes collection several times faster.
        """
        logits = self.executor.lens(lasts).float() if self.full_vocab else None
        cand_logits = (None if self.full_vocab
                       else self.executor.lens(lasts, rows=self.candidate_ids).float())
        return [self._from_logits(layer, lasts[layer], None if logits is None else logits[layer],
                                  None if cand_logits is None else cand_logits[layer])
                for layer in range(lasts.shape[0])]

    def _from_logits(self, layer: int, last: torch.Tensor, logits: torch.Tensor | None,
                     cand_logits: torch.Tensor | None = None) -> LayerReadout:
        values: dict[str, torch.Tensor] = {}
        top1 = cand_top1 = None
        if logits is not None:
            probs = F.softmax(logits, dim=-1)
            top = probs.topk(2, dim=-1)
            top1 = top.indices[:, 0]
            values["gap"] = top.values[:, 0] - top.values[:, 1]
            values["top_prob"] = top.values[:, 0]
            values["agree_prev"] = self._agreement(top1, self._previous_top1)
            if self.candidate_ids is not None:
                cand_logits = logits[:, self.candidate_ids]
        if cand_logits is not None:
            cand_probs = F.softmax(cand_logits, dim=-1)
            cand_top = cand_probs.topk(min(2, cand_probs.shape[-1]), dim=-1)
            second = cand_top.values[:, 1] if cand_top.values.shape[-1] > 1 else 0.0
            cand_top1 = self.candidate_ids[cand_top.indices[:, 0]]
            values["cand_gap"] = cand_top.values[:, 0] - second
            values["cand_top_prob"] = cand_top.values[:, 0]
            values["cand_agree_prev"] = self._agreement(cand_top1, self._previous_cand_top1)
        top1 = top1 if top1 is not None else cand_top1
        values["depth"] = torch.full((last.shape[0],), (layer + 1) / self.executor.num_layers, device=last.device)
        if "cos_hidden" in self.feature_names:
            values["cos_hidden"] = F.cosine_similarity(last, self._previous_hidden, dim=-1)
        for name, outputs in self._sublayer_outputs.items():
            if layer == 0 or outputs[layer - 1] is None:
                values[name] = torch.zeros(last.shape[0], device=last.device)
            else:
                values[name] = F.cosine_similarity(outputs[layer], outputs[layer - 1], dim=-1)
        self._previous_hidden = last
        self._previous_top1, self._previous_cand_top1 = top1, cand_top1
        features = torch.stack([values[name].float() for name in self.feature_names], dim=-1)
        return LayerReadout(features=features, top1=top1, cand_top1=cand_top1)

    @staticmethod
    def _agreement(current: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        if previous is None:
            return torch.zeros(current.shape[0], device=current.device)
        return (current == previous).float()

    @property
    def check_units(self) -> int:
        """Cost of one check in the paper's units (one unit = 2h FLOPs): V, or |C| for candidates only."""
        if self.full_vocab:
            return self.executor.lens.vocab_size
        return len(self.candidate_ids)


def as_numpy(readouts: Sequence[LayerReadout]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-layer readouts into features (batch, layers, n_features) and top-1 ids (batch, layers)."""
    features = torch.stack([readout.features for readout in readouts], dim=1)
    top1 = torch.stack([readout.top1 for readout in readouts], dim=1)
    return features.cpu().numpy().astype(np.float32), top1.cpu().numpy()
