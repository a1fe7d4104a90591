"""The check schedule: which layers read the lens, what they cost, and which first checks are valid."""

import numpy as np
import pytest

from adainfer.engine.schedule import check_first_check, first_read_layer, lens_reads, reads_previous_lens


@pytest.mark.parametrize("first_check, previous, expected", [(1, False, [1, 3, 6]), (1, True, [1, 3, 6]),
                                                             (3, False, [1, 1, 4]), (3, True, [2, 2, 5])])
def test_lens_reads_count_checked_layers_and_the_one_before_the_first(first_check, previous, expected):
    exits = np.array([1 if first_check == 1 else 3, 3, 6])
    assert lens_reads(exits, first_check, previous, num_layers=6).tolist() == expected


@pytest.mark.parametrize("value", [0, 4, 6, 2.0, True])
def test_first_check_must_be_a_layer_before_the_last_or_never(value):
    with pytest.raises(ValueError, match="first_check"):
        check_first_check(value, 4)
    assert check_first_check(5, 4) == 5 and check_first_check(3, 4) == 3


def test_the_first_read_is_the_layer_before_the_first_check_for_previous_lens_features():
    assert reads_previous_lens(("gap", "agree_prev")) and reads_previous_lens(("cand_agree_prev",))
    assert not reads_previous_lens(("gap", "top_prob", "depth"))
    assert first_read_layer(3, reads_previous=True, num_layers=6) == 2
    assert first_read_layer(3, reads_previous=False, num_layers=6) == 3
    assert first_read_layer(1, reads_previous=True, num_layers=6) == 1  # no layer 0 to read
    assert first_read_layer(7, reads_previous=True, num_layers=6) == 6  # never asked: the answer only
    assert lens_reads(np.array([6]), 7, reads_previous=True, num_layers=6).tolist() == [1]
