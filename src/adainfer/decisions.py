"""From a policy's per-layer decisions to exit layers, and what a check schedule reads and pays.

The rules every path shares, live (`predict`, `generate`) and replayed (`evaluate`, `report`):
- the last layer always answers: a policy is never asked there;
- a check schedule: no layer before `first_check` (1-based) reads the lens or asks the policy,
  and a policy that reads `agree_prev` (or `cand_agree_prev`) at `first_check` also reads the
  lens of the layer before it, which is paid for;
- a policy under a schedule sees only the features of the layers it checked, so a sequence
  policy (the CRF) is decoded on layers `first_check..l`, never on layers that were not read.

`first_check = num_layers + 1` means "never check": the last layer answers every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Features whose value at layer l compares the lens of layer l with that of layer l - 1.
PREVIOUS_LENS_FEATURES: tuple[str, ...] = ("agree_prev", "cand_agree_prev")


def exit_layers(decisions: np.ndarray) -> np.ndarray:
    """First accepted layer, 1-based, per prompt; the last layer when none is accepted. (prompts, layers) -> (prompts,)."""
    layers = decisions.shape[1]
    accepted = decisions[:, :-1].astype(bool)  # the last layer answers anyway
    return np.where(accepted.any(axis=1), accepted.argmax(axis=1) + 1, layers)


def oracle_exit_layers(top1: np.ndarray) -> np.ndarray:
    """The stable-answer oracle: the earliest layer, 1-based, from which the top-1 token stays the
    last layer's, per prompt. (prompts, layers) -> (prompts,).

    It is the earliest exit that keeps every dense answer *for a policy that must keep them*; it is
    not a bound on savings at equal accuracy: a policy may exit earlier on a prompt whose
    intermediate answer is right and the final one wrong, and save more than this oracle.
    """
    differs = top1 != top1[:, -1:]
    last_differing = np.where(differs.any(axis=1), differs.shape[1] - np.argmax(differs[:, ::-1], axis=1), 0)
    return last_differing + 1


def stable_labels(top1: np.ndarray) -> np.ndarray:
    """1 from the oracle's exit layer onwards (the top-1 token stays the final one), else 0.

    (prompts, layers) -> (prompts, layers). Needs no gold answer: the target is the model's own.
    """
    layers = np.arange(1, top1.shape[1] + 1)
    return (layers[None, :] >= oracle_exit_layers(top1)[:, None]).astype(np.int64)


def reads_previous_lens(feature_names: Sequence[str]) -> bool:
    """Whether a policy on these features needs the lens of the layer before each checked one."""
    return any(name in PREVIOUS_LENS_FEATURES for name in feature_names)


def policy_first_check(policy: Any) -> int:
    """The first layer (1-based) at which `policy` reads the lens and is asked: the `first_check_`
    its `fit` learned (the earliest layer it accepted on any training prompt), else 1."""
    return int(getattr(policy, "first_check_", 1))


def check_first_check(first_check: int, num_layers: int) -> int:
    """Validate a first check: 1..num_layers - 1, or num_layers + 1 for "never check"."""
    if isinstance(first_check, bool) or not isinstance(first_check, (int, np.integer)):
        raise ValueError(f"first_check must be an integer, got {first_check!r}")
    if not (1 <= first_check <= num_layers - 1 or first_check == num_layers + 1):
        raise ValueError(f"first_check must be in 1..{num_layers - 1} (or {num_layers + 1}: never check), "
                         f"got {first_check}")
    return int(first_check)


def scheduled_decisions(policy: Any, X: np.ndarray, first_check: int = 1) -> np.ndarray:
    """The online decisions (prompts, layers) of `policy` on features X (prompts, layers, features)
    when it is asked from layer `first_check` on only.

    The policy sees layers `first_check..L` alone, exactly as a live run under the schedule feeds
    it; layers before `first_check` get decision 0.
    """
    decisions = np.zeros(X.shape[:2], dtype=np.int64)
    if first_check <= X.shape[1]:
        decisions[:, first_check - 1:] = policy.predict(X[:, first_check - 1:])
    return decisions


def first_accepted_layer(decisions: np.ndarray) -> int:
    """The earliest layer (1-based) accepted on any prompt of training decisions (prompts, layers).

    A check schedule learned from training traces: layers before it need no lens at all. The
    last layer does not count (it answers anyway); none accepted gives num_layers + 1.
    """
    accepted = decisions[:, :-1].astype(bool)
    return int(accepted.any(axis=0).argmax()) + 1 if accepted.any() else decisions.shape[1] + 1


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
