"""The scorer and schedule chosen by cross-validation on the train split, and the figures beside it."""

import numpy as np
import pytest

from adainfer.fit.scorer_choice import (calibration_needed, choose_scorer, schedule_candidates, share_of_oracle,
                                        simulate_certificate)

FEATURES = ("gap", "top_prob", "agree_prev", "depth")


def traces(prompts=80, layers=8, seed=0):
    """The answer settles at a random layer; the gap jumps there, but only the run of agreements tells
    a settled answer from a one-layer blip (a blip has a large gap too)."""
    rng = np.random.default_rng(seed)
    settle = rng.integers(3, layers + 1, size=prompts)
    layer = np.arange(1, layers + 1)
    stable = layer[None] >= settle[:, None]
    top1 = np.where(stable, 2, rng.integers(3, 9, size=(prompts, layers)))
    agree = np.zeros(top1.shape)
    agree[:, 1:] = top1[:, 1:] == top1[:, :-1]
    gap = np.clip(0.5 * stable + rng.uniform(0, 0.5, size=top1.shape), 0, 1)
    depth = np.broadcast_to(layer / layers, top1.shape)
    return np.stack([gap, rng.uniform(size=top1.shape), agree, depth], -1).astype(np.float32), top1


def test_simulated_fixed_sequence_stops_at_the_first_failure():
    risk = np.array([0.0, 0.0, 0.01, 0.2, 0.0])
    assert simulate_certificate(risk, 200, 0.05, 0.05) == 2  # level 4 would pass, but testing stopped at 3
    assert simulate_certificate(risk, 20, 0.05, 0.05) == -1  # 0.95**20 > 0.05: nothing certified


def test_the_choice_is_deterministic_and_recorded():
    X, top1 = traces()
    kwargs = dict(features=FEATURES, epsilon=0.1, delta=0.05, calibration_prompts=200, check_cost=0.01,
                  first_checks=schedule_candidates(8, 3, step=3))
    first = choose_scorer(X, top1, **kwargs)
    assert first.to_dict() == choose_scorer(X, top1, **kwargs).to_dict()
    tried = {(c.scorer, c.first_check) for c in first.candidates}
    assert tried == {(s, f) for s in ("svm", "svm-stability", "gbt-stability") for f in (1, 3, 4, 7)}
    best = max(c.time_saved for c in first.candidates)
    winner = next(c for c in first.candidates if (c.scorer, c.first_check) == (first.scorer, first.first_check))
    assert winner.time_saved == best and best > 0 and first.scorer in first.reason
    policy = first.build(FEATURES)
    assert policy.first_check == first.first_check


def test_one_scorer_and_one_schedule_is_no_choice():
    X, top1 = traces()
    choice = choose_scorer(X, top1, FEATURES, 0.1, 0.05, 200, 0.0, [2], scorers=("svm",))
    assert (choice.scorer, choice.first_check, len(choice.candidates)) == ("svm", 2, 1)
    with pytest.raises(ValueError, match="unknown"):
        choose_scorer(X, top1, FEATURES, 0.1, 0.05, 200, 0.0, [2], scorers=("forest",))


def test_calibration_needed_grows_when_the_risk_sits_near_epsilon():
    exits = np.array([[10] * 10, [8] * 10, [6] * 10])
    easy = calibration_needed(np.array([0.0, 0.0, 0.0]), exits, 10, 0.05, 0.05)
    hard = calibration_needed(np.array([0.0, 0.0, 0.03]), exits, 10, 0.05, 0.05)
    assert easy is not None and hard is not None and hard > easy >= 59  # 0.95**59 < 0.05 <= 0.95**58


def test_share_of_oracle_says_nothing_when_the_oracle_saves_nothing():
    assert share_of_oracle(0.15, 0.2) == 0.75
    assert share_of_oracle(0.0, 0.004) is None
