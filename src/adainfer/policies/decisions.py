"""From a policy's per-layer decisions to exit layers and answers, and the labels policies learn.

The rules every path shares, live and replayed: the last layer always answers (a policy is never
asked there), and a policy under a check schedule (`adainfer.engine.schedule`) sees only the
features of the layers it checked, so a sequence policy (the CRF) is decoded on layers
`first_check..l`, never on layers that were not read.
"""

from __future__ import annotations

import numpy as np

from adainfer.engine.stop_rule import StopRule


def exit_layers(decisions: np.ndarray) -> np.ndarray:
    """First accepted layer, 1-based, per prompt; the last layer when none is accepted. (prompts, layers) -> (prompts,)."""
    layers = decisions.shape[1]
    accepted = decisions[:, :-1].astype(bool)  # the last layer answers anyway
    return np.where(accepted.any(axis=1), accepted.argmax(axis=1) + 1, layers)


def answers_at(exits: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """The answer of each prompt at its exit layer: top1 (prompts, layers) read at exits (prompts,), 1-based."""
    return top1[np.arange(len(exits)), np.asarray(exits) - 1]


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


def scheduled_decisions(policy: StopRule, X: np.ndarray, first_check: int = 1) -> np.ndarray:
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


def cheapest_first_check(stable_exits: np.ndarray, num_layers: int, check_cost: float) -> int:
    """The check schedule that would cost least if each prompt exited at its stable layer.

    `stable_exits` (prompts,) are the oracle's exit layers on TRAINING traces, `check_cost` the
    time of one lens read in units of one layer's time (measured: a full-vocabulary check is
    several layers on a CPU, a candidate check a thousandth of one). A prompt exits at
    max(its stable layer, f) and pays one read per layer from f on, so the cost of first check f is
    mean(max(e, f) + check_cost * (max(e, f) - f + 1)); the cheapest f in 1..num_layers - 1 is
    returned (the smallest on ties). Fixed before any calibration prompt is seen, as Learn then
    Test needs.
    """
    exits = np.asarray(stable_exits, dtype=np.float64)
    if exits.ndim != 1 or len(exits) == 0 or num_layers < 2 or not check_cost >= 0:
        raise ValueError(f"need stable exits (prompts,), num_layers >= 2 and check_cost >= 0; got {exits.shape}, "
                         f"{num_layers}, {check_cost}")
    candidates = np.arange(1, num_layers)
    stops = np.maximum(exits[None, :], candidates[:, None])
    costs = (stops + check_cost * (stops - candidates[:, None] + 1)).mean(axis=1)
    return int(candidates[np.argmin(costs)])
