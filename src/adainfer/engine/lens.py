"""The logit lens: a hidden state to logits through the model's own final norm, projection, LM head
and logit soft-cap. The one place that does it, as tuned-lens's `Unembed` is for its models.

Features, prediction, generation (drafts and verification) and the cost profile all read logits
here; they differ only in which rows of the head they read (`rows`):

- `None`: the full vocabulary, V*h multiply-adds per position;
- a tensor of token ids (n,): those rows only, gathered at each call (a closed answer set's
  candidates: n*h per position, which is what makes a candidate check cheap);
- `HeadRows`: rows kept ready for a set read many times (a draft vocabulary: the first ids as a
  view of the head, no copy, plus other ids gathered once; `add` appends one).

The soft-cap (Gemma 2's `final_logit_softcapping`) applies to every read: being monotonic it never
moves an argmax, but every logit read is the one the model's own forward would give.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adainfer.engine.families import FamilySpec, resolve


class Lens:
    """Hidden states (..., hidden) to logits (..., rows read), with the model's own modules."""

    def __init__(self, model: nn.Module, family: FamilySpec) -> None:
        self.final_norm = resolve(model, family.final_norm)
        self.post_norm_projection = resolve(model, family.post_norm_projection)
        self.head: nn.Module = resolve(model, family.head)
        attr = family.logit_softcap_attr
        self.logit_softcap: float | None = getattr(model.config, attr, None) if attr else None

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head, V."""
        return self.head.weight.shape[0]

    @torch.no_grad()
    def __call__(self, hidden: torch.Tensor, rows: torch.Tensor | HeadRows | None = None,
                 weight_major: bool = False) -> torch.Tensor:
        """Logits (..., V), or (..., n) for n `rows`, of hidden states (..., hidden) taken after any layer.

        Pass only the positions you need (usually the last token): the head costs V*h per position.
        `weight_major` computes a full-vocabulary read as W @ x.T instead of x @ W.T (see `unembed`).
        """
        return self.unembed(self.normalize(hidden), rows, weight_major)

    @torch.no_grad()
    def normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's final norm (and OPT's projection after it) on hidden states (..., hidden)."""
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if self.post_norm_projection is not None:
            hidden = self.post_norm_projection(hidden)
        return hidden

    @torch.no_grad()
    def unembed(self, normed: torch.Tensor, rows: torch.Tensor | HeadRows | None = None,
                weight_major: bool = False) -> torch.Tensor:
        """The LM head's `rows` (all when None) and the soft-cap on normalised states (..., hidden).

        `weight_major` (full vocabulary, linear head) sums the same product in another order, W @ x.T:
        on a CPU, MKL runs x @ W.T with 2-8 rows 2-3x slower than W @ x.T (Gemma 3 270M, one thread:
        2 rows 89 ms against 28 ms; one row 44 ms either way), which verifying a few drafts at once hits.
        """
        if rows is None:
            if weight_major and type(self.head) is nn.Linear:
                flat = normed.reshape(-1, normed.shape[-1])
                logits = torch.mm(self.head.weight, flat.T).T
                if self.head.bias is not None:
                    logits = logits + self.head.bias
                logits = logits.reshape(*normed.shape[:-1], -1)
            else:
                logits = self.head(normed)
        elif isinstance(rows, HeadRows):
            logits = torch.cat([F.linear(normed, weight, bias) for weight, bias in rows.blocks()], dim=-1)
        else:
            bias = self.head.bias[rows] if getattr(self.head, "bias", None) is not None else None
            logits = F.linear(normed, self.head.weight[rows], bias)
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


class HeadRows:
    """Rows of the LM head kept ready for repeated reads: ids 0..first_ids-1 as a view of the head's
    weight (no copy), then `extra_ids` (the ones not already among the first) gathered once, in
    increasing order, then each id passed to `add`, in the order added.

    `token_ids[i]` is the token of column i of what `Lens(hidden, rows=this)` returns.
    """

    def __init__(self, lens: Lens, first_ids: int = 0, extra_ids: Sequence[int] = ()) -> None:
        vocab_size = lens.vocab_size
        if first_ids < 0 or any(not 0 <= int(token) < vocab_size for token in extra_ids):
            raise ValueError(f"head rows must be ids in 0..{vocab_size - 1}")
        self.lens = lens
        self.first_ids = min(first_ids, vocab_size)
        self.first_weight, self.first_bias = self._gather(slice(0, self.first_ids))  # views, no copy
        self.extra = sorted({int(token) for token in extra_ids if int(token) >= self.first_ids})
        self.extra_weight, self.extra_bias = self._gather(torch.tensor(self.extra, dtype=torch.long))
        if not self.first_ids and not self.extra:
            raise ValueError("no head rows to read")

    def _gather(self, index: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = getattr(self.lens.head, "bias", None)
        return self.lens.head.weight.detach()[index], None if bias is None else bias.detach()[index]

    def __len__(self) -> int:
        """Rows one read takes: its cost in `adainfer.engine.cost` units."""
        return self.first_ids + len(self.extra)

    @property
    def token_ids(self) -> list[int]:
        return [*range(self.first_ids), *self.extra]

    def token_at(self, column: int) -> int:
        """The token id of logit column `column`."""
        return column if column < self.first_ids else self.extra[column - self.first_ids]

    def add(self, token_id: int) -> None:
        """Read `token_id` too (one row appended), unless it already is."""
        if token_id >= self.first_ids and token_id not in self.extra:
            self.extra.append(token_id)
            weight, bias = self._gather(torch.tensor([token_id]))
            self.extra_weight = torch.cat([self.extra_weight, weight])
            if bias is not None:
                self.extra_bias = torch.cat([self.extra_bias, bias])

    def blocks(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(weight (n, hidden), bias (n,) or None) of each non-empty block, in column order."""
        blocks = []
        if self.first_ids:
            blocks.append((self.first_weight, self.first_bias))
        if self.extra:
            blocks.append((self.extra_weight, self.extra_bias))
        return blocks
