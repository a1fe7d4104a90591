"""FLOPs ratios against hand counts: every expected number below is worked out by hand, not by the code."""

import pytest

from adainfer.engine.cost import CostModel

GEMMA = CostModel(num_layers=18, hidden_size=640, vocab_size=262_144)
# L=4, h=8, V=100. At s=10 a layer is 2*(6*8+10) = 116 units per token, 1,160 per 10-token prompt;
# the dense prefill is 4*1,160 + 100 = 4,740 units and a dense decode step 4*116 + 100 = 564.
SMALL = CostModel(num_layers=4, hidden_size=8, vocab_size=100)


def test_layer_and_attention_units_by_hand():
    assert SMALL.layer_units(10) == 116
    assert SMALL.attention_units(10) == 2 * (16 + 10) == 52
    assert GEMMA.layer_units(100) == 7_880


def test_paper_ratio_is_eq2_per_token():
    # (2*116 + 100) / (4*116 + 100): the head once, one token.
    assert SMALL.paper_flops_ratio(2, 10) == pytest.approx(332 / 564)


def test_prefill_ratio_by_hand():
    # 2 layers on 10 tokens = 2,320 units, two full checks at the last position = 200.
    assert SMALL.honest_flops_ratio(2, 10, 2) == pytest.approx(2_520 / 4_740)
    # Three candidate rows per check instead of 100: 2,320 + 2*3.
    assert SMALL.honest_flops_ratio(2, 10, 2, 3) == pytest.approx(2_326 / 4_740)
    # Checking all 4 layers of the full model: 4,640 + 400 > 4,740.
    assert SMALL.honest_flops_ratio(4, 10, 4) == pytest.approx(5_040 / 4_740)
    assert SMALL.honest_flops_ratio(1, 10, 0) == pytest.approx(1_160 / 4_740)


def test_a_cached_prefix_runs_only_the_query_tokens_over_the_whole_context():
    # s=10 with p=6 cached: 4 query tokens run, each attending over all 10 positions (116 units a layer),
    # so 2 layers cost 4*2*116 = 928 units plus 2 candidate checks of 3 rows; the dense forward over
    # the same cache runs 4 layers on the 4 tokens and its head once: 4*4*116 + 100 = 1,956.
    assert SMALL.honest_flops_ratio(2, 10, 2, 3, cached_tokens=6) == pytest.approx(934 / 1_956)
    # The checks weigh more against 4 tokens than against 10: a full-depth walk with 4 full checks.
    assert SMALL.honest_flops_ratio(4, 10, 4, cached_tokens=6) == pytest.approx(2_256 / 1_956)
    with pytest.raises(ValueError, match="cached_tokens"):
        SMALL.honest_flops_ratio(2, 10, 2, cached_tokens=10)


def test_prefill_charges_checks_once_per_prompt_not_per_token():
    # The old per-token form said (2*116 + 2*100) / 564 = 0.766 here: checks weighed 10x too much.
    assert SMALL.honest_flops_ratio(2, 10, 2) == pytest.approx(0.5316, abs=1e-4)
    assert SMALL.honest_decode_flops_ratio(2, 10, 2) == pytest.approx(432 / 564)


def test_one_token_prompt_equals_a_decode_step_over_one_position():
    # s=1: 1 token through l' layers with a 1-position context, either way.
    for exit_layer, checks in [(1, 1), (3, 2), (4, 4)]:
        assert SMALL.honest_flops_ratio(exit_layer, 1, checks) == SMALL.honest_decode_flops_ratio(exit_layer, 1, checks)


def test_dense_model_costs_exactly_one_in_every_form():
    assert GEMMA.paper_flops_ratio(18, 40) == 1.0
    assert GEMMA.honest_flops_ratio(18, 40, 1) == 1.0
    assert GEMMA.honest_decode_flops_ratio(18, 40, 1) == 1.0


def test_gemma_worked_example_from_the_module_docstring():
    # s=100: 788,000 units per layer per prompt, 14,184,000 for 18 layers; one check 262,144.
    assert 100 * GEMMA.layer_units(100) == 788_000
    dense = 18 * 788_000 + 262_144
    assert GEMMA.honest_flops_ratio(9, 100, 9) == pytest.approx((9 * 788_000 + 9 * 262_144) / dense)
    # One extra full check at full depth costs 262,144 / 14,446,144 = 1.81 % of a dense prompt.
    assert GEMMA.honest_flops_ratio(18, 100, 2) - 1 == pytest.approx(0.018146, abs=1e-6)
    assert 262_144 / 788_000 == pytest.approx(1 / 3, abs=0.001)


def test_gemma_decode_checks_outweigh_the_layers():
    # Per generated token at context 100 one full check (262,144) exceeds all 18 layers (141,840).
    assert GEMMA.honest_decode_flops_ratio(9, 100, 9) == pytest.approx(
        (9 * 7_880 + 9 * 262_144) / (141_840 + 262_144))
    assert GEMMA.honest_decode_flops_ratio(9, 100, 9) > 5
    # Two candidate rows per check make the same exit cheaper than dense.
    assert GEMMA.honest_decode_flops_ratio(9, 100, 9, 2) == pytest.approx((70_920 + 18) / 403_984)


def test_decode_units_and_dense_units_by_hand():
    assert SMALL.decode_units(2, 10, 2) == 432
    assert SMALL.decode_units(0, 10, 1, 5) == 5  # a verification that only reads the head rows
    assert SMALL.dense_decode_units(10) == 564


def test_context_length_raises_the_layer_share():
    # Longer context: layers cost more, the fixed check cost weighs less.
    assert SMALL.honest_decode_flops_ratio(2, 1_000, 2) < SMALL.honest_decode_flops_ratio(2, 10, 2)


@pytest.mark.parametrize("exit_layer", [0, 19])
def test_exit_layer_out_of_range(exit_layer):
    for ratio in (lambda: GEMMA.paper_flops_ratio(exit_layer, 10),
                  lambda: GEMMA.honest_flops_ratio(exit_layer, 10, 1),
                  lambda: GEMMA.honest_decode_flops_ratio(exit_layer, 10, 1)):
        with pytest.raises(ValueError, match="exit_layer"):
            ratio()


@pytest.mark.parametrize("checks", [-1, 19])
def test_layers_checked_out_of_range(checks):
    with pytest.raises(ValueError, match="layers_checked"):
        GEMMA.honest_flops_ratio(5, 10, checks)
    with pytest.raises(ValueError, match="layers_checked"):
        GEMMA.honest_decode_flops_ratio(5, 10, checks)


def test_checks_may_exceed_the_exit_layer_up_to_num_layers():
    # A schedule can read a layer that the exit does not count; 6 checks at exit 5 is allowed.
    assert GEMMA.honest_flops_ratio(5, 10, 6) > GEMMA.honest_flops_ratio(5, 10, 5)


@pytest.mark.parametrize("call", [
    lambda: GEMMA.paper_flops_ratio(5, 0),
    lambda: GEMMA.honest_flops_ratio(5, 0, 1),
    lambda: GEMMA.honest_decode_flops_ratio(5, 0, 1),
    lambda: GEMMA.dense_decode_units(0),
])
def test_empty_sequence_is_refused(call):
    with pytest.raises(ValueError, match="(seq|context)_len must be >= 1"):
        call()


@pytest.mark.parametrize("units", [0, 262_145])
def test_check_units_out_of_range(units):
    with pytest.raises(ValueError, match="check_units"):
        GEMMA.honest_flops_ratio(5, 10, 1, units)


def test_decode_units_layers_out_of_range():
    with pytest.raises(ValueError, match="layers"):
        SMALL.decode_units(5, 10, 0)


# Generation sums the decode form over its passes, each position at its own context length.
# Tiny llama: L=4, h=32, V=97, so a layer over c positions is 2*(192+c) units, its attention block 2*(64+c).

@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from adainfer.engine.model import EarlyExitModel

    return EarlyExitModel.from_pretrained(str(tiny_llama_dir))


def test_fast_generation_pays_one_layer_one_check_and_three_fills_per_token(tiny_llama):
    from adainfer.inference.generate import generate

    prompt = "Once upon a time"  # 16 characters, one token each
    result = generate(tiny_llama, prompt, 8, mode="fast", draft_layer=1)
    assert len(result.token_ids) > 2
    contexts = range(17, 16 + len(result.token_ids))  # the first token is the prefill's, not counted
    assert result.flops_units == sum(2 * (192 + c) + 97 + 3 * 2 * (64 + c) for c in contexts)
    assert result.dense_flops_units == sum(4 * 2 * (192 + c) + 97 for c in contexts)
    assert result.honest_flops_ratio < 1


def test_lossless_generation_at_full_depth_pays_the_head_twice_per_token(tiny_llama):
    from adainfer.inference.generate import generate

    prompt = "Once upon a time"
    result = generate(tiny_llama, prompt, 8, mode="lossless", draft_layer=4, draft_vocab=None)
    assert len(result.token_ids) > 2
    assert result.accepted_lengths == result.draft_lengths  # drafts at full depth are the full model's tokens
    contexts = range(17, 16 + len(result.token_ids))
    # Each token: 4 layers and a lens read while drafting, one more lens read to verify it.
    assert result.flops_units == sum(4 * 2 * (192 + c) + 2 * 97 for c in contexts)
    assert result.dense_flops_units == sum(4 * 2 * (192 + c) + 97 for c in contexts)
    assert result.honest_flops_ratio > 1
