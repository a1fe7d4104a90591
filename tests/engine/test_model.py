"""`EarlyExitModel`: prompts to token ids, answers to their first token, the identity a policy must match, and
the full-depth trace collection reads."""

import numpy as np
import pytest
import torch

from adainfer.engine.model import EarlyExitModel, PromptError
from adainfer.testing.tiny_models import TINY_CONFIGS, tiny_exit_model

PROMPT = "Q: is this good?\nA:"


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def model(request) -> EarlyExitModel:
    return tiny_exit_model(request.param)


def test_a_trace_reads_every_layer_and_its_last_top1_is_the_models_answer(model):
    trace = model.trace(PROMPT, ("gap", "top_prob", "depth"))
    assert trace.features.shape == (model.num_layers, 3) and trace.top1.shape == (model.num_layers,)
    assert trace.seq_len == len(PROMPT) and trace.cand_top1 is None
    np.testing.assert_allclose(trace.features[:, 2], np.arange(1, model.num_layers + 1) / model.num_layers)
    assert (trace.features[:, 0] >= 0).all() and (trace.features[:, 0] <= trace.features[:, 1]).all()
    logits = model.model(model.encode(PROMPT)).logits[0, -1]
    assert trace.top1[-1] == int(logits.argmax())


def test_a_trace_with_candidates_records_the_best_candidate_at_every_layer(model):
    candidates = model.candidate_tokens(["yes", "no"])
    trace = model.trace(PROMPT, ("cand_gap", "cand_top_prob"), candidates)
    assert set(trace.cand_top1) <= set(candidates) and trace.cand_top1.shape == (model.num_layers,)


def test_answer_tokens_are_the_first_token_after_the_prompt_and_candidates_are_kept_once():
    model = tiny_exit_model("llama")
    space = model.tokenizer(" ", add_special_tokens=False).input_ids[0]
    assert model.answer_token(PROMPT, "yes") == space  # the char tokenizer: the space before the answer
    assert model.candidate_tokens(["yes", "no", "yes"]) == [space]
    with pytest.raises(PromptError, match="empty answer"):
        model.answer_token(PROMPT, "  ")


def test_the_identity_changes_with_the_head_weights_and_nothing_else_of_the_same_shape():
    first, second, again = tiny_exit_model("llama", seed=0), tiny_exit_model("llama", seed=1), tiny_exit_model("llama")
    assert first.identity() == again.identity()
    assert first.identity()["head_sha256"] != second.identity()["head_sha256"]
    assert {key: value for key, value in first.identity().items() if key != "head_sha256"} == {
        "architecture": "LlamaForCausalLM", "num_layers": 4, "hidden_size": 32, "vocab_size": 97}


def test_encode_rejects_empty_and_over_long_prompts():
    model = tiny_exit_model("gpt2")
    assert torch.equal(model.encode("ab"), torch.tensor([[11, 12]]))
    with pytest.raises(PromptError, match="empty prompt"):
        model.encode(" \n")
    with pytest.raises(PromptError, match=f"more than the model's context of {model.max_context}"):
        model.encode("x" * (model.max_context + 1))
