"""A cached prompt prefix against the full prompt, on every family: same exits, answers and lens logits."""

import numpy as np
import pytest
import torch

from adainfer.engine.batch import encode_batch
from adainfer.engine.model import PromptError
from adainfer.engine.row_groups import group_prompts
from adainfer.engine.walk import walk
from adainfer.inference.predict import predict_batch
from adainfer.testing.tiny_models import TINY_CONFIGS, tiny_exit_model, tiny_spaced_exit_model

PREFIX = "Q: a b\nA: y\n\nQ: c d e\nA: n\n\n"  # 28 characters: longer than the sliding windows (8)
PROMPTS = [PREFIX + "Q: the cat\nA:", PREFIX + "Q: x\nA:", PREFIX + "Q: a longer input here\nA:",
           "Q: no prefix here\nA:", PREFIX + "Q: dog ran off\nA:"]


class SpreadExits:
    """Exits at a layer set by the first layer's gap (rows of one batch leave at different layers)."""

    features = ("gap", "top_prob", "depth")

    def should_exit(self, trace) -> bool:
        return len(trace) >= 1 + int(trace[0, 0] * 1000) % 3


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def model(request):
    return tiny_exit_model(request.param)


def _exit_logits(model, groups_or_inputs):
    """Per row: (exit layer, lens logits at its exit), walking each group as predict_batch does."""
    out = {}
    for rows, inputs in groups_or_inputs:
        walked = walk(model.executor, inputs, SpreadExits(), keep_exit_hidden=True)
        for position, row in enumerate(rows):
            out[row] = (walked.exits[position], model.executor.lens(walked.exit_hidden[position][-1]))
    return out


def test_the_cached_prefix_gives_the_full_prompts_exit_layers_answers_and_lens_logits(model):
    model.use_prefix(None)
    full = predict_batch(model, PROMPTS, SpreadExits())
    batch = encode_batch(model, PROMPTS)
    reference = _exit_logits(model, [(list(range(len(PROMPTS))), model.executor.prepare(
        batch.input_ids, batch.attention_mask, position_ids=batch.position_ids))])
    prefix = model.use_prefix(PREFIX)
    cached = predict_batch(model, PROMPTS, SpreadExits())
    groups = group_prompts(model, PROMPTS)
    got = _exit_logits(model, [(group.rows, group.prepare(model.executor)) for group in groups])
    assert len({result.exit_layer for result in full}) > 1  # rows left the batch at different layers
    assert [r.exit_layer for r in cached] == [r.exit_layer for r in full]
    assert [r.answer_token_id for r in cached] == [r.answer_token_id for r in full]
    assert [r.cached_tokens for r in cached] == [len(prefix)] * 3 + [0, len(prefix)]
    assert [r.seq_len for r in cached] == [r.seq_len for r in full]
    for row in range(len(PROMPTS)):
        assert got[row][0] == reference[row][0]
        torch.testing.assert_close(got[row][1], reference[row][1], atol=1e-4, rtol=0)
        np.testing.assert_allclose(cached[row].trace, full[row].trace, atol=1e-4)
    assert prefix.fallbacks == 0
    model.use_prefix(None)


def test_a_trace_on_the_cached_prefix_equals_the_full_prompts_trace(model):
    model.use_prefix(None)
    full = model.trace(PROMPTS[2], ("gap", "top_prob", "cos_hidden"))
    model.use_prefix(PREFIX)
    cached = model.trace(PROMPTS[2], ("gap", "top_prob", "cos_hidden"))
    model.use_prefix(None)
    assert cached.cached_tokens == len(PREFIX) and full.cached_tokens == 0 and cached.seq_len == full.seq_len
    np.testing.assert_allclose(cached.features, full.features, atol=1e-4)
    np.testing.assert_array_equal(cached.top1, full.top1)


def test_every_batch_gets_its_own_copy_of_the_prefix_cache():
    model = tiny_exit_model("llama")
    prefix = model.use_prefix(PREFIX)
    first = predict_batch(model, PROMPTS, SpreadExits())
    assert all(layer.get_seq_length() == len(prefix) for layer in prefix.cache.layers)  # never grown
    again = predict_batch(model, PROMPTS, SpreadExits())
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first]
    config = model.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    assert prefix.nbytes == 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * len(prefix) * 4
    assert model.use_prefix(PREFIX) is prefix  # the same text is computed once


def test_rows_of_different_lengths_share_a_batch_unless_a_sliding_window_could_bite():
    llama, gemma3 = tiny_exit_model("llama"), tiny_exit_model("gemma3")
    for model in (llama, gemma3):
        model.use_prefix(PREFIX)
    cached = [PROMPTS[0], PROMPTS[1], PROMPTS[4]]  # queries of 13, 7 and 17 tokens
    assert len(group_prompts(llama, cached)) == 1  # padding between prefix and query: one batch
    assert len(group_prompts(gemma3, cached)) == 3  # prefix + query > window 8: one batch per length
    gemma3.use_prefix("Q: a\n")  # 5 + longest query <= 8 for short queries: one padded batch
    assert len(group_prompts(gemma3, ["Q: a\nx", "Q: a\nxy"])) == 1


def test_a_prompt_whose_tokens_do_not_extend_the_prefix_runs_in_full_and_is_counted():
    model = tiny_spaced_exit_model("llama")
    prefix = model.use_prefix("Q: a\nA: ")  # the tokenizer merges " y" across the boundary
    merged, clean = "Q: a\nA: yes", "Q: a\nA: \nok"
    groups = group_prompts(model, [merged, clean])
    assert prefix.fallbacks == 1
    assert [(group.rows, group.cached_tokens) for group in groups] == [([0], 0), ([1], len(prefix))]
    model.use_prefix(None)
    full = predict_batch(model, [merged], SpreadExits())
    model.use_prefix("Q: a\nA: ")
    assert predict_batch(model, [merged], SpreadExits())[0].to_dict() == full[0].to_dict()


@pytest.mark.parametrize("text, message", [("", "empty"), ("x" * 200, "context"), ("x" * 128, "no room")])
def test_a_prefix_that_is_empty_or_fills_the_context_is_refused(text, message):
    model = tiny_exit_model("llama")
    with pytest.raises(PromptError, match=message):
        model.use_prefix(text)
    assert model.prefix is None


def test_a_prompt_equal_to_the_prefix_runs_in_full():
    model = tiny_exit_model("llama")
    model.use_prefix(PREFIX + "Q:")
    groups = group_prompts(model, [PREFIX + "Q:"])
    assert groups[0].cached_tokens == 0 and model.prefix.fallbacks == 0
