"""The real embedded model, Gemma 3 270M (first run converts its GGUF once: about a minute)."""

import pytest
import torch

from adainfer.data.tasks import build_prompts, load_examples
from adainfer.engine.model import EarlyExitModel
from adainfer.inference.predict import predict
from adainfer.policies.gap import GapThresholdPolicy

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


@pytest.mark.parametrize("task, choices", [("sst2", (" negative", " positive")), ("mmlu", (" A", " B", " C", " D"))])
def test_closed_answer_sets_are_single_distinct_tokens(gemma, task, choices):
    from adainfer.data.tasks import TASKS

    ids = gemma.candidate_tokens(TASKS[task].choices)
    assert [gemma.decode_token(i) for i in ids] == list(choices)


def test_candidate_lens_agrees_with_the_full_lens_and_a_harness_setting_collects(gemma, sst2_prompt, tmp_path):
    from adainfer.eval.harness import Setting, collect_setting

    candidates = gemma.candidate_tokens(("negative", "positive"))
    trace = gemma.trace(sst2_prompt.prompt, ("gap", "cand_gap", "cand_top_prob"), candidates)
    cheap = predict(gemma, sst2_prompt.prompt, GapThresholdPolicy(threshold=2.0, feature="cand_gap"), candidates)
    assert cheap.top1_trace == trace.cand_top1.tolist()
    torch.testing.assert_close(torch.tensor(cheap.trace)[:, 0], torch.tensor(trace.features[:, 1]), atol=1e-4, rtol=0)
    assert cheap.honest_flops_ratio < 1.0  # |C| = 2 head rows per check instead of 262,144
    data = collect_setting(gemma, Setting("sst2", shots=1), tmp_path, 2, 2)
    assert data.eval.candidate_ids == tuple(candidates) and data.eval.top1.shape == (2, 18)


def test_fit_gives_a_certified_sst2_classifier_that_answers_raw_inputs(gemma, tmp_path):
    from adainfer.fit.classifier import classify, load_classifier
    from adainfer.fit.pipeline import FitOptions, fit_classifier, task_source
    from adainfer.fit.splits import SplitSizes

    options = FitOptions(shots=2, epsilon=0.1, delta=0.1, sizes=SplitSizes(12, 30, 12), timing_prompts=4,
                         batch_sizes=(4,), resplits=10)
    fitted = fit_classifier(gemma, task_source("sst2"), options, cache_dir=tmp_path / "runs", model_name="gemma3-270m")
    card = fitted.card
    assert card.answer_set == ["negative", "positive"] and card.split_sizes == {"train": 12, "calibration": 30,
                                                                                "test": 12}
    assert card.cost_profile["check_cost_in_layers"] < 0.1  # a two-row check costs next to no layer
    policy, loaded = load_classifier(fitted.save(tmp_path / "clf"), gemma)
    answers = classify(gemma, policy, loaded, ["a gorgeous, witty movie", "dull and lifeless"], batch_size=2)
    assert all(answer.label in ("negative", "positive") for answer in answers)
