"""What a generation returns and what it spent: the costs a run counts as its passes go, and the result.

Kept apart from the decoding loops (`adainfer.inference.generate`) so that the server and the
benchmarks can name the result without the loops, and so that each pass's cost is counted in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from adainfer.engine.lens import HeadRows
from adainfer.inference.decoder import EarlyStep, KVDecoder


@dataclass
class GenerationCosts:
    """What one generation spent, counted per (position, layer), prompt excluded.

    `layer_passes`: decoder layers applied to one position (drafts, verification, early passes).
    `attention_only_passes`: skipped layers whose K/V came from state propagation (fast mode).
    `lens_rows`: full-vocabulary LM-head products; `draft_head_rows`: draft reads of the draft
    vocabulary's rows only. `draft_lengths` / `accepted_lengths`: per verification (lossless).
    `flops_units`: FLOPs spent (`adainfer.engine.cost` units) by every pass above, each position at its
    own context length (`CostModel.decode_units`), drafts that were rejected included;
    `dense_flops_units`: what dense decoding of the same tokens costs (`dense_decode_units`).
    """

    layer_passes: int = 0
    attention_only_passes: int = 0
    lens_rows: int = 0
    draft_head_rows: int = 0
    flops_units: int = 0
    dense_flops_units: int = 0
    draft_lengths: list[int] = field(default_factory=list)
    accepted_lengths: list[int] = field(default_factory=list)


@dataclass(kw_only=True)
class GenerationResult(GenerationCosts):
    """Text and costs (`GenerationCosts`) of one `generate` call.

    `kv_lengths`: positions cached per layer at the end; the last token is never fed back, so it is
    prompt_tokens + len(token_ids) - 1 in every layer. `first_token_seconds`: time to first token.
    """

    text: str
    token_ids: list[int]
    exit_layers: list[int]
    mode: str
    num_layers: int
    prompt_tokens: int
    finish_reason: str  # "length", "eos" or "stop"
    kv_lengths: list[int] = field(default_factory=list)
    seconds: float = 0.0
    first_token_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Drafts accepted per verification (lossless); NaN when nothing was verified."""
        return float(np.mean(self.accepted_lengths)) if self.accepted_lengths else float("nan")

    @property
    def mean_exit_layer(self) -> float:
        """Mean depth whose lens chose each token (num_layers for the full model's tokens)."""
        return float(np.mean(self.exit_layers)) if self.exit_layers else float("nan")

    @property
    def layers_per_token(self) -> float:
        """Decoder-layer passes per generated token after the first (dense decoding: num_layers)."""
        after_first = len(self.token_ids) - 1
        return self.layer_passes / after_first if after_first > 0 else float("nan")

    @property
    def honest_flops_ratio(self) -> float:
        """Decode FLOPs relative to dense decoding, lens checks and fills included; NaN with no decode step."""
        return self.flops_units / self.dense_flops_units if self.dense_flops_units else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second,
                "mean_accepted_length": self.mean_accepted_length, "mean_exit_layer": self.mean_exit_layer,
                "layers_per_token": self.layers_per_token, "honest_flops_ratio": self.honest_flops_ratio}



class GenerationStats(GenerationCosts):
    """The costs of a generation in progress: the passes below add to them as they run."""

    def count_early(self, step: EarlyStep, decoder: KVDecoder, draft_rows: HeadRows | None = None) -> None:
        """Count one early pass; it just fed position decoder.length - 1, over a context of decoder.length."""
        self.layer_passes += step.exit_layer
        self.attention_only_passes += step.filled_layers
        if draft_rows is None:
            self.lens_rows += step.lens_checks
        else:
            self.draft_head_rows += 1
        cost, context = decoder.model.cost_model, decoder.length
        self.flops_units += (cost.decode_units(step.exit_layer, context, step.lens_checks,
                                               len(draft_rows) if draft_rows is not None else None)
                             + step.filled_layers * cost.attention_units(context))

    def count_verification(self, decoder: KVDecoder, layers: int, committed: int, positions: int) -> None:
        """Count `layers` layers and one full lens row on `positions` positions from `committed` + 1 on."""
        self.layer_passes += layers * positions
        self.lens_rows += positions
        self.flops_units += sum(decoder.model.cost_model.decode_units(layers, committed + offset + 1, 1)
                                for offset in range(positions))

    def count_dense(self, decoder: KVDecoder, first_context: int, tokens: int) -> None:
        """Add the dense cost of `tokens` decode steps over contexts first_context, first_context + 1, ..."""
        cost = decoder.model.cost_model
        self.dense_flops_units += sum(cost.dense_decode_units(first_context + offset) for offset in range(tokens))
