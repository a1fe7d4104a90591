"""The real embedded model, Gemma 3 270M (first run converts its GGUF once: about a minute)."""

import pytest
import torch

from adainfer.model import EarlyExitModel
from adainfer.policies import GapThresholdPolicy
from adainfer.predict import predict
from adainfer.tasks import build_prompts, load_examples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    return EarlyExitModel.from_pretrained("gemma3-270m")


@pytest.fixture(scope="module")
def sst2_prompt():
    pool = load_examples("sst2", "train")
    return build_prompts(load_examples("sst2", "eval"), pool, shots=5, limit=1, seed=3)[0]


def test_gemma_is_an_18_layer_gemma3(gemma):
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM"
    assert gemma.num_layers == 18
    assert gemma.cost_model.vocab_size == 262_144


def test_full_depth_matches_the_model_forward(gemma, sst2_prompt):
    input_ids = gemma.encode(sst2_prompt.prompt)
    expected = gemma.model(input_ids, logits_to_keep=1).logits[0, -1]
    inputs = gemma.executor.prepare(input_ids)
    hidden = gemma.executor.run_layers(inputs.embeddings, inputs, 0, gemma.num_layers)
    assert (gemma.executor.lens(hidden[:, -1])[0] - expected).abs().max().item() <= 1e-4


def test_never_accepting_policy_answers_like_the_dense_model(gemma, sst2_prompt):
    result = predict(gemma, sst2_prompt.prompt, GapThresholdPolicy(threshold=2.0))
    dense = gemma.model(gemma.encode(sst2_prompt.prompt), logits_to_keep=1).logits[0, -1]
    assert result.exit_layer == 18 and not result.accepted
    assert result.answer_token_id == int(torch.argmax(dense))
    assert result.paper_flops_ratio == 1.0


def test_early_layers_are_confident_in_junk(gemma, sst2_prompt):
    # The finding that motivates the depth feature: layer 1 is near-certain of a wrong token.
    trace = gemma.trace(sst2_prompt.prompt, ["gap", "top_prob"])
    gold = gemma.answer_token(sst2_prompt.prompt, sst2_prompt.answer)
    assert trace.features[0, 1] > 0.9 and trace.top1[0] != gold
