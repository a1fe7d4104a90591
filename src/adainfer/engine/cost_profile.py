"""Measured wall time of the parts an early exit pays for, and the time ratio they predict.

FLOPs (`adainfer.engine.cost`) say what the arithmetic costs, not what the clock sees. On a CPU one
full-vocabulary check of Gemma 3 270M reads the whole 262,144 x 640 LM head (168M weights, 671 MB
in float32) from memory to produce a single row of logits: the product is memory-bound, so a
check costs far more time than its ~2 % of a prompt's FLOPs suggests, while the decoder layers
over s tokens reuse each weight s times. A `CostProfile` times each part on the machine at hand:

- one decoder layer over s tokens (the mean over all layers of a prefill through
  `executor.run_layers`: local and global attention layers differ in Gemma 3);
- one full-vocabulary lens check on the last position (`executor.lens(last)`);
- one candidate check of a few head rows (`executor.lens(last, rows=...)`);
- the model's own dense forward with `logits_to_keep=1`, to compare with L layers + one check;

each the median of `repeats` runs after one warm-up, at each measured sequence length.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adainfer.engine.files import write_text_atomic
from adainfer.engine.model import EarlyExitModel

TIMES = ("layer_seconds", "full_check_seconds", "candidate_check_seconds", "dense_seconds")


@dataclass(frozen=True)
class CostProfile:
    """Median wall seconds per measured sequence length (`seq_lens` increasing, one entry each).

    `model_identity` is `EarlyExitModel.identity()` (it holds `num_layers`); `device` and
    `torch_threads` say where the times hold.
    """

    model_identity: dict[str, Any]
    device: str
    torch_threads: int
    seq_lens: tuple[int, ...]
    layer_seconds: tuple[float, ...]  # one decoder layer over s tokens
    full_check_seconds: tuple[float, ...]  # full-vocabulary lens on the last position
    candidate_check_seconds: tuple[float, ...]  # lens over `candidate_count` head rows
    dense_seconds: tuple[float, ...]  # the model's forward, logits_to_keep=1
    candidate_count: int = 4
    repeats: int = 5

    def __post_init__(self) -> None:
        if "num_layers" not in self.model_identity:
            raise ValueError("model_identity must hold num_layers")
        if not self.seq_lens or any(b <= a for a, b in zip(self.seq_lens, self.seq_lens[1:])) or self.seq_lens[0] < 1:
            raise ValueError(f"seq_lens must be positive and strictly increasing, got {self.seq_lens}")
        for name in TIMES:
            times = getattr(self, name)
            if len(times) != len(self.seq_lens):
                raise ValueError(f"{name} has {len(times)} entries for {len(self.seq_lens)} seq_lens")
            if any(not seconds > 0 for seconds in times):
                raise ValueError(f"{name} must be positive, got {times}")

    @property
    def num_layers(self) -> int:
        return int(self.model_identity["num_layers"])

    def _at(self, name: str, seq_len: int) -> float:
        """Linear interpolation between measured lengths; the nearest measured value outside them."""
        return float(np.interp(seq_len, self.seq_lens, getattr(self, name)))

    def layer_seconds_at(self, seq_len: int) -> float:
        """Seconds of one decoder layer over `seq_len` tokens, interpolated."""
        return self._at("layer_seconds", seq_len)

    def check_seconds_at(self, seq_len: int, candidate_check: bool = False) -> float:
        """Seconds of one lens check (full, or over candidate rows), interpolated."""
        return self._at("candidate_check_seconds" if candidate_check else "full_check_seconds", seq_len)

    def estimated_time_ratio(self, exit_layer: int, seq_len: int, layers_checked: int,
                             candidate_check: bool) -> float:
        """Prefill time of an early exit relative to dense, the time analogue of `honest_flops_ratio`:
        (l'·t_layer(s) + checks·t_check) / (L·t_layer(s) + t_full_check).

        t_check is the candidate check's time when `candidate_check`, else the full one's; the dense
        model pays one full check. `layers_checked` may be 0..L as in `CostModel`.
        """
        if not 1 <= exit_layer <= self.num_layers:
            raise ValueError(f"exit_layer must be in 1..{self.num_layers}, got {exit_layer}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if not 0 <= layers_checked <= self.num_layers:
            raise ValueError(f"layers_checked must be in 0..{self.num_layers}, got {layers_checked}")
        layer = self.layer_seconds_at(seq_len)
        spent = exit_layer * layer + layers_checked * self.check_seconds_at(seq_len, candidate_check)
        return spent / (self.num_layers * layer + self.check_seconds_at(seq_len))

    def to_dict(self) -> dict[str, Any]:
        return {"model_identity": dict(self.model_identity), "device": self.device,
                "torch_threads": self.torch_threads, "seq_lens": list(self.seq_lens),
                **{name: list(getattr(self, name)) for name in TIMES},
                "candidate_count": self.candidate_count, "repeats": self.repeats}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CostProfile":
        """The inverse of `to_dict`; a missing key or a bad length is a ValueError."""
        try:
            return cls(model_identity=dict(data["model_identity"]), device=str(data["device"]),
                       torch_threads=int(data["torch_threads"]),
                       seq_lens=tuple(int(length) for length in data["seq_lens"]),
                       **{name: tuple(float(seconds) for seconds in data[name]) for name in TIMES},
                       candidate_count=int(data["candidate_count"]), repeats=int(data["repeats"]))
        except KeyError as missing:
            raise ValueError(f"cost profile lacks {missing}") from None

    def save(self, path: str | Path) -> None:
        """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "CostProfile":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _median_seconds(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `run` over `repeats` calls, after one untimed warm-up call."""
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    times = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def measure_cost_profile(model: EarlyExitModel, seq_lens: Sequence[int], repeats: int = 5,
                         candidate_count: int = 4,
                         on_seq_len: Callable[[int], None] | None = None) -> CostProfile:
    """Time the parts of an early exit on `model` at each sequence length (see the module docstring).

    Prompts are seeded random token ids (batch size 1): time does not depend on which tokens.
    The layer time is the prefill through all L layers divided by L. `on_seq_len` is called after
    each length is done (for a progress bar).
    """
    lengths = sorted(set(int(length) for length in seq_lens))
    if not lengths or lengths[0] < 1 or lengths[-1] > model.max_context:
        raise ValueError(f"seq_lens must be in 1..{model.max_context} (the model's context), got {list(seq_lens)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    executor = model.executor
    device = executor.head.weight.device
    vocab_size = model.cost_model.vocab_size
    if not 1 <= candidate_count <= vocab_size:
        raise ValueError(f"candidate_count must be in 1..{vocab_size}, got {candidate_count}")
    # Spread over the vocabulary, so the rows read are not one contiguous block already in cache.
    candidates = torch.linspace(0, vocab_size - 1, candidate_count, device=device).long()
    embeddings = model.model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in TIMES}
    for length in lengths:
        input_ids = torch.randint(0, min(vocab_size, embeddings), (1, length), generator=generator).to(device)
        inputs = executor.prepare(input_ids)
        last = executor.run_layers(inputs.embeddings, inputs, 0, model.num_layers)[:, -1]
        prefill = _median_seconds(lambda: executor.run_layers(inputs.embeddings, inputs, 0, model.num_layers),
                                  repeats, device)
        times["layer_seconds"].append(prefill / model.num_layers)
        times["full_check_seconds"].append(_median_seconds(lambda: executor.lens(last), repeats, device))
        times["candidate_check_seconds"].append(
            _median_seconds(lambda: executor.lens(last, rows=candidates), repeats, device))
        times["dense_seconds"].append(_median_seconds(
            lambda: model.model(input_ids=input_ids, use_cache=False, logits_to_keep=1), repeats, device))
        if on_seq_len is not None:
            on_seq_len(length)
    return CostProfile(model_identity=model.identity(), device=str(device), torch_threads=torch.get_num_threads(),
                       seq_lens=tuple(lengths), **{name: tuple(values) for name, values in times.items()},
                       candidate_count=candidate_count, repeats=repeats)
