"""Cost of an early-exit answer relative to the full model.

`paper_flops_ratio` is AdaInfer's eq. (2) (Fan et al. 2024, after Narayanan et al. 2021): per
token, a decoder layer costs about 2(6h+s) units and the LM head V units, one unit being 2h
FLOPs, so the ratio is (2 l'(6h+s) + V) / (2 l (6h+s) + V). The paper counts the head once. But
the logit lens runs the head after every checked layer, so `honest_flops_ratio` counts V units
per checked layer in the numerator; the dense model still checks one layer, its last.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostModel:
    """Sizes that set the cost: layers L, hidden size h, vocabulary V."""

    num_layers: int
    hidden_size: int
    vocab_size: int

    def layer_units(self, seq_len: int) -> int:
        return 2 * (6 * self.hidden_size + seq_len)

    def paper_flops_ratio(self, exit_layer: int, seq_len: int) -> float:
        """Eq. (2): `exit_layer` is l', the number of decoder layers computed (1..L)."""
        self._check(exit_layer, seq_len)
        layer = self.layer_units(seq_len)
        return (exit_layer * layer + self.vocab_size) / (self.num_layers * layer + self.vocab_size)

    def honest_flops_ratio(self, exit_layer: int, seq_len: int, layers_checked: int,
                           check_units: int | None = None) -> float:
        """Eq. (2) with one LM-head product (V units) per checked layer instead of one in all.

        `check_units` is the cost of one check when it is not the full head: |C| units when the lens
        reads only a closed answer set's C candidate tokens.
        """
        self._check(exit_layer, seq_len)
        if not 0 <= layers_checked <= exit_layer:
            raise ValueError(f"layers_checked must be in 0..{exit_layer}, got {layers_checked}")
        layer = self.layer_units(seq_len)
        per_check = self.vocab_size if check_units is None else check_units
        spent = exit_layer * layer + layers_checked * per_check
        return spent / (self.num_layers * layer + self.vocab_size)

    def _check(self, exit_layer: int, seq_len: int) -> None:
        if not 1 <= exit_layer <= self.num_layers:
            raise ValueError(f"exit_layer must be in 1..{self.num_layers}, got {exit_layer}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
