"""A check schedule: from which layer a walk reads the lens and asks its policy, and what that costs.

The rules every path shares, live (`inference.predict`, `inference.generate`, through
`engine.walk`) and replayed (`eval.replay`):
- no layer before `first_check` (1-based) reads the lens or asks the policy, and a policy that
  reads `agree_prev` (or `cand_agree_prev`) at `first_check` also reads the lens of the layer
  before it, which is paid for;
- the last layer always reads the lens: it gives the answer.

`first_check = num_layers + 1` means "never check": the last layer answers every prompt. What a
policy decides once asked is in `adainfer.policies.decisions`.
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np

from adainfer.engine.stop_rule import StopRule

# Features whose value at layer l compares the lens of layer l with that of layer l - 1.
PREVIOUS_LENS_FEATURES: tuple[str, ...] = ("agree_prev", "cand_agree_prev")


def reads_previous_lens(feature_names: Sequence[str]) -> bool:
    """Whether a policy on these features needs the lens of the layer before each checked one."""
    return any(name in PREVIOUS_LENS_FEATURES for name in feature_names)


def policy_first_check(policy: StopRule) -> int:
    """The first layer (1-based) at which `policy` reads the lens and is asked: the `first_check_`
    its `fit` learned (the earliest layer it accepted on any training prompt), else 1."""
    return int(getattr(policy, "first_check_", 1))


def check_first_check(first_check: int, num_layers: int, allow_never: bool = True) -> int:
    """Validate a first check: 1..num_layers - 1, or (when `allow_never`) num_layers + 1 for "never
    check"; the last layer itself is never one, since exiting there saves nothing."""
    if isinstance(first_check, bool) or not isinstance(first_check, (int, np.integer)):
        raise ValueError(f"first_check must be an integer, got {first_check!r}")
    if 1 <= first_check <= num_layers - 1 or (allow_never and first_check == num_layers + 1):
        return int(first_check)
    never = f" (or {num_layers + 1}: never check)" if allow_never else f" (layer {num_layers} is the last: no early exit is possible there)"
    raise ValueError(f"first_check must be in 1..{num_layers - 1}{never}, got {first_check}")


def first_read_layer(first_check: int, reads_previous: bool, num_layers: int) -> int:
    """The first layer (1-based) whose lens a policy with this schedule reads."""
    if first_check > num_layers:
        return num_layers  # never asked: only the last layer's lens, for the answer
    return first_check - 1 if reads_previous and first_check > 1 else first_check


def lens_reads(exits: np.ndarray, first_check: int, reads_previous: bool, num_layers: int) -> np.ndarray:
    """Lens reads per prompt for exit layers `exits` (prompts,) under a schedule.

    Every checked layer from `first_check` to the exit layer reads the lens once; the last layer
    always reads it (it gives the answer); a policy that `reads_previous` lens also reads the
    layer before `first_check`.
    """
    exits = np.asarray(exits)
    if first_check > num_layers:
        return np.ones_like(exits)
    checked = np.maximum(exits - first_check + 1, 1)
    return checked + int(reads_previous and first_check > 1)
