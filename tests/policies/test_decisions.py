"""The rules shared by live runs and replay: exits, the oracle, and what a check schedule reads."""

import numpy as np
import pytest

from adainfer.engine.schedule import check_first_check, lens_reads
from adainfer.policies.decisions import first_accepted_layer, oracle_exit_layers, scheduled_decisions, stable_labels


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
    assert lens_reads(np.array([4, 4]), 5, reads_previous=True, num_layers=4).tolist() == [1, 1]


@pytest.mark.parametrize("first_check, previous, expected", [(1, False, [1, 3, 6]), (1, True, [1, 3, 6]),
                                                             (3, False, [1, 1, 4]), (3, True, [2, 2, 5])])
def test_lens_reads_count_checked_layers_and_the_one_before_the_first(first_check, previous, expected):
    exits = np.array([1 if first_check == 1 else 3, 3, 6])
    assert lens_reads(exits, first_check, previous, num_layers=6).tolist() == expected


def test_first_accepted_layer_ignores_the_last_layer():
    assert first_accepted_layer(np.array([[0, 0, 1, 1], [0, 1, 0, 1]])) == 2
    assert first_accepted_layer(np.array([[0, 0, 0, 1]])) == 5  # never: L + 1


def test_stable_labels_start_at_the_oracle():
    top1 = np.array([[5, 7, 7, 7], [7, 5, 7, 9]])
    assert oracle_exit_layers(top1).tolist() == [2, 4]
    assert stable_labels(top1).tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]


@pytest.mark.parametrize("value", [0, 4, 6, 2.0, True])
def test_first_check_must_be_a_layer_before_the_last_or_never(value):
    with pytest.raises(ValueError, match="first_check"):
        check_first_check(value, 4)
    assert check_first_check(5, 4) == 5 and check_first_check(3, 4) == 3
