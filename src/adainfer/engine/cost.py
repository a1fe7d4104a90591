"""FLOPs of an early-exit answer relative to the dense model, in the paper's units.

Units. Narayanan et al. 2021 (eq. 2 of AdaInfer, Fan et al. 2024, takes it from them) count a
decoder layer on a sequence of s tokens of hidden size h as 24h² + 4sh FLOPs per token: QKV
projections 6h², attention scores 2sh, attention over values 2sh, output projection 2h², MLP
(4h wide) 16h². The LM head costs 2hV FLOPs per position it reads. With one unit = 2h FLOPs, a
layer costs 2(6h+s) units per token and the head V units per position.

Three ratios, one per question:

- `paper_flops_ratio`: eq. (2) exactly as the paper states it, per token, head counted once:
  (2·l'(6h+s) + V) / (2·L(6h+s) + V).
- `honest_flops_ratio`: one answer predicted from a prompt of s tokens (prefill). Every layer
  runs on all s positions, but the logit lens reads only the last one, so a check is paid once
  per prompt, not once per token: (s·l'·2(6h+s) + checks·C) / (s·L·2(6h+s) + V).
- With a cached prefix of p tokens (`engine.prefix`), only the q = s - p query tokens run, each
  still attending over all s positions: the prefill terms become q·l'·2(6h+s), and the dense
  model it is compared with is the dense forward over the same cache, q·L·2(6h+s) + V.
- `honest_decode_flops_ratio`: one decode step with a KV cache, one new position over a context
  of s tokens: (l'·2(6h+s) + checks·C) / (L·2(6h+s) + V).

C is V for a full-vocabulary check and |C| when the lens reads only a closed answer set's rows.

Worked example, Gemma 3 270M (L=18, h=640, V=262,144) at s=100: one layer costs
2(3840+100) = 7,880 units per token, so 788,000 units per prompt, and the 18 layers 14,184,000.
A full-vocabulary check is 262,144 units: ≈ 1.8 % of the 18 layers' prefill, a third of one
layer. In decoding the same check costs 262,144 / 7,880 ≈ 33 layers, 1.8x all 18 of them: a
check is cheap on a prompt and dear on a generated token, and eq. (2), which counts the head
once, shows neither. Wall time is another matter again (the head is memory-bound on a CPU):
`adainfer.engine.cost_profile` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostModel:
    """Sizes that set the cost: layers L, hidden size h, vocabulary V (rows of the LM head)."""

    num_layers: int
    hidden_size: int
    vocab_size: int

    def layer_units(self, seq_len: int) -> int:
        """One decoder layer on one position attending over `seq_len` positions: 2(6h+s) units."""
        return 2 * (6 * self.hidden_size + seq_len)

    def attention_units(self, seq_len: int) -> int:
        """A layer's attention block alone (no MLP) on one position: 2(2h+s) units.

        8h² + 4sh FLOPs (projections 8h², scores and values 4sh): what filling a skipped layer's
        K/V by state propagation costs.
        """
        return 2 * (2 * self.hidden_size + seq_len)

    def paper_flops_ratio(self, exit_layer: int, seq_len: int) -> float:
        """Eq. (2) of Fan et al. 2024, per token: (2 l'(6h+s) + V) / (2 L(6h+s) + V).

        `exit_layer` is l', the number of decoder layers computed (1..L); the head is counted
        once whatever the number of checks, as the paper does.
        """
        self._check_exit(exit_layer, seq_len)
        layer = self.layer_units(seq_len)
        return (exit_layer * layer + self.vocab_size) / (self.num_layers * layer + self.vocab_size)

    def honest_flops_ratio(self, exit_layer: int, seq_len: int, layers_checked: int,
                           check_units: int | None = None, cached_tokens: int = 0) -> float:
        """Prefill cost of one early-exit answer over a prompt of `seq_len` tokens, relative to dense.

        The l' layers run on all s positions: s·l'·2(6h+s) units. Each checked layer reads the
        lens at the last position only, C units per check. The dense model runs its L layers on
        the s positions and its head once, at the last position (`logits_to_keep=1`):
        s·L·2(6h+s) + V. So the ratio is (s·l'·2(6h+s) + checks·C) / (s·L·2(6h+s) + V).

        `layers_checked` may be 0..L: 0 for an exit that reads no lens, and up to L because a
        check schedule can read a layer the exit does not count. `check_units` is C when it is
        not V: |C| for a lens over a closed answer set's candidate rows. `cached_tokens` p: the
        first p positions come from a cached prefix, so only s - p positions run (module docstring),
        in the early exit and in the dense forward it is compared with.
        """
        self._check_exit(exit_layer, seq_len)
        self._check_checks(seq_len, layers_checked, check_units)
        if not 0 <= cached_tokens < seq_len:
            raise ValueError(f"cached_tokens must be in 0..{seq_len - 1}, got {cached_tokens}")
        prompt_layer = (seq_len - cached_tokens) * self.layer_units(seq_len)
        spent = exit_layer * prompt_layer + layers_checked * self._per_check(check_units)
        return spent / (self.num_layers * prompt_layer + self.vocab_size)

    def honest_decode_flops_ratio(self, exit_layer: int, context_len: int, layers_checked: int,
                                  check_units: int | None = None) -> float:
        """Cost of one decode step with a KV cache over `context_len` positions, relative to dense.

        One new position runs l' layers, attending over the context (itself included):
        l'·2(6h+s) units, plus C per check. The dense step runs L layers and the head once:
        L·2(6h+s) + V. Ratio: (l'·2(6h+s) + checks·C) / (L·2(6h+s) + V). Arguments as in
        `honest_flops_ratio`.
        """
        self._check_exit(exit_layer, context_len, "context_len")
        return (self.decode_units(exit_layer, context_len, layers_checked, check_units)
                / self.dense_decode_units(context_len))

    def decode_units(self, layers: int, context_len: int, layers_checked: int,
                     check_units: int | None = None) -> int:
        """Units one position spends running `layers` (0..L) decoder layers and `layers_checked` checks.

        The numerator of `honest_decode_flops_ratio`; generation sums it over its passes.
        """
        if not 0 <= layers <= self.num_layers:
            raise ValueError(f"layers must be in 0..{self.num_layers}, got {layers}")
        self._check_checks(context_len, layers_checked, check_units, "context_len")
        return layers * self.layer_units(context_len) + layers_checked * self._per_check(check_units)

    def dense_decode_units(self, context_len: int) -> int:
        """Units of one dense decode step over `context_len` positions: L·2(6h+s) + V."""
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        return self.num_layers * self.layer_units(context_len) + self.vocab_size

    def _per_check(self, check_units: int | None) -> int:
        return self.vocab_size if check_units is None else check_units

    def _check_exit(self, exit_layer: int, seq_len: int, name: str = "seq_len") -> None:
        if not 1 <= exit_layer <= self.num_layers:
            raise ValueError(f"exit_layer must be in 1..{self.num_layers}, got {exit_layer}")
        if seq_len < 1:
            raise ValueError(f"{name} must be >= 1, got {seq_len}")

    def _check_checks(self, seq_len: int, layers_checked: int, check_units: int | None,
                      name: str = "seq_len") -> None:
        if seq_len < 1:
            raise ValueError(f"{name} must be >= 1, got {seq_len}")
        if not 0 <= layers_checked <= self.num_layers:
            raise ValueError(f"layers_checked must be in 0..{self.num_layers}, got {layers_checked}")
        if check_units is not None and not 1 <= check_units <= self.vocab_size:
            raise ValueError(f"check_units must be in 1..{self.vocab_size}, got {check_units}")
