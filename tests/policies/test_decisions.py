"""From decisions to exits and answers, the stable-answer oracle and its labels, and a scheduled policy's view."""

import numpy as np
import pytest

from adainfer.policies.decisions import (answers_at, exit_layers, first_accepted_layer, oracle_exit_layers,
                                         scheduled_decisions, stable_labels)


def test_exit_layer_is_first_accepted_and_last_when_none():
    decisions = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    assert exit_layers(decisions).tolist() == [2, 4, 1, 4]


def test_oracle_is_where_top1_settles_on_the_final_token():
    top1 = np.array([[5, 7, 7, 7], [7, 5, 7, 9], [3, 3, 3, 3], [1, 2, 1, 2]])
    assert oracle_exit_layers(top1).tolist() == [2, 4, 1, 4]


def test_the_answer_is_the_top1_of_the_exit_layer():
    top1 = np.array([[5, 7, 7, 7], [7, 5, 7, 9]])
    assert answers_at(np.array([1, 4]), top1).tolist() == [5, 9]
    assert answers_at(exit_layers(np.array([[0, 1, 0, 0], [0, 0, 0, 0]])), top1).tolist() == [7, 9]


class _SeesLayers:
    """A sequence policy that accepts when it has seen exactly `length` layers, and records them."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.seen: list[tuple[int, ...]] = []

    def predict(self, X):
        self.seen.append(X.shape)
        decisions = np.zeros(X.shape[:2], dtype=np.int64)
        if X.shape[1] >= self.length:
            decisions[:, self.length - 1] = 1
        return decisions


def test_a_scheduled_policy_sees_only_the_layers_it_checked():
    X = np.zeros((3, 6, 2))
    policy = _SeesLayers(length=1)
    decisions = scheduled_decisions(policy, X, first_check=4)
    assert policy.seen == [(3, 3, 2)]  # layers 4..6, never 1..3
    assert decisions.tolist() == [[0, 0, 0, 1, 0, 0]] * 3


def test_never_checking_asks_nothing_and_the_last_layer_answers():
    policy = _SeesLayers(length=1)
    decisions = scheduled_decisions(policy, np.zeros((2, 4, 1)), first_check=5)
    assert policy.seen == [] and not decisions.any()


def test_first_accepted_layer_ignores_the_last_layer():
    assert first_accepted_layer(np.array([[0, 0, 1, 1], [0, 1, 0, 1]])) == 2
    assert first_accepted_layer(np.array([[0, 0, 0, 1]])) == 5  # never: L + 1


def test_stable_labels_start_at_the_oracle():
    top1 = np.array([[5, 7, 7, 7], [7, 5, 7, 9]])
    assert oracle_exit_layers(top1).tolist() == [2, 4]
    assert stable_labels(top1).tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]


def test_the_cheapest_first_check_weighs_checks_against_layers():
    from adainfer.policies.decisions import cheapest_first_check
    exits = np.array([3, 3, 4, 8, 8, 8])
    assert cheapest_first_check(exits, 8, check_cost=0.0) == 1  # free checks: check from the start
    assert cheapest_first_check(exits, 8, check_cost=0.001) == 3  # nearly free: from the earliest stable layer
    assert cheapest_first_check(exits, 8, check_cost=5.0) == 7  # dear checks: as late as exiting can still help
    # By hand for f = 3 with checks of 1 layer: stops 3,3,4,8,8,8 -> layers 34/6, reads 1,1,2,6,6,6 -> 22/6.
    costs = {f: np.mean(np.maximum(exits, f) + (np.maximum(exits, f) - f + 1)) for f in range(1, 8)}
    assert costs[3] == pytest.approx((34 + 22) / 6)
    assert cheapest_first_check(exits, 8, check_cost=1.0) == min(costs, key=costs.get)
    with pytest.raises(ValueError):
        cheapest_first_check(np.array([]), 8, 1.0)
