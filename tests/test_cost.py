import pytest

from adainfer.cost import CostModel

GEMMA = CostModel(num_layers=18, hidden_size=640, vocab_size=262_144)


def test_paper_ratio_against_hand_count():
    # h=10, s=5: a layer is 2*(60+5)=130 units; 2 of 4 layers + V=100 -> (260+100)/(520+100)
    cost = CostModel(num_layers=4, hidden_size=10, vocab_size=100)
    assert cost.paper_flops_ratio(2, 5) == pytest.approx(360 / 620)


def test_full_depth_is_one_on_both_ratios():
    assert GEMMA.paper_flops_ratio(18, 40) == 1.0
    assert GEMMA.honest_flops_ratio(18, 40, layers_checked=1) == 1.0


def test_honest_ratio_charges_each_check():
    cost = CostModel(num_layers=4, hidden_size=10, vocab_size=100)
    assert cost.honest_flops_ratio(2, 5, layers_checked=2) == pytest.approx((260 + 200) / 620)


def test_checking_every_layer_of_a_big_vocabulary_costs_more_than_dense():
    # Gemma 3 270M: the head (V=262k units) outweighs all 18 layers (~140k units at s=40).
    assert GEMMA.honest_flops_ratio(14, 40, layers_checked=14) > 4


@pytest.mark.parametrize("exit_layer", [0, 19])
def test_exit_layer_out_of_range(exit_layer):
    with pytest.raises(ValueError, match="exit_layer"):
        GEMMA.paper_flops_ratio(exit_layer, 10)
