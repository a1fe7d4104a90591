import json

import numpy as np
import pytest
import torch

from adainfer.engine.model import EarlyExitModel, PromptError
from adainfer.inference.predict import predict
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.svm import SVMPolicy

PROMPT = "Q: the cat sat\nA:"
ALWAYS = GapThresholdPolicy(threshold=-1.0)  # gap >= 0 > -1 after every layer
NEVER = GapThresholdPolicy(threshold=2.0)  # gap <= 1 < 2 after every layer


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return EarlyExitModel.from_pretrained(str(tiny_llama_dir))


def _layers_run(model, policy, prompt=PROMPT):
    ran = []
    handles = [layer.register_forward_hook(lambda module, args, output, i=i: ran.append(i))
               for i, layer in enumerate(model.executor.layers)]
    try:
        result = predict(model, prompt, policy)
    finally:
        for handle in handles:
            handle.remove()
    return result, ran


def test_accepting_policy_exits_after_layer_one_and_skips_the_rest(model):
    result, ran = _layers_run(model, ALWAYS)
    assert ran == [0]  # layers 2..4 never ran
    assert result.exit_layer == 1 and result.lens_reads == 1 and result.accepted
    assert result.num_layers == model.num_layers == 4
    assert result.answer_token_id == result.top1_trace[0]
    assert result.answer_text == model.decode_token(result.answer_token_id)


def test_refusing_policy_runs_every_layer_and_answers_like_the_full_model(model):
    result, ran = _layers_run(model, NEVER)
    assert ran == [0, 1, 2, 3]
    assert result.exit_layer == result.num_layers == 4 and not result.accepted
    input_ids = model.encode(PROMPT)
    expected = int(model.model(input_ids).logits[0, -1].argmax())
    assert result.answer_token_id == expected
    assert len(result.top1_trace) == 4 and result.top1_trace[-1] == expected


@pytest.mark.parametrize("policy", [ALWAYS, NEVER], ids=["always", "never"])
def test_flops_ratios_follow_eq2_hand_counted(model, policy):
    result = predict(model, PROMPT, policy)
    assert result.seq_len == len(PROMPT)  # one token per character, no BOS
    h, V, L = 32, 97, 4
    layer = 2 * (6 * h + result.seq_len)
    full = L * layer + V
    assert result.paper_flops_ratio == pytest.approx((result.exit_layer * layer + V) / full)
    # Prefill: every layer runs over the s prompt tokens, each lens read once at the last one.
    s = result.seq_len
    assert result.honest_flops_ratio == pytest.approx(
        (s * result.exit_layer * layer + result.lens_reads * V) / (s * L * layer + V))
    cost = model.cost_model
    assert result.paper_flops_ratio == cost.paper_flops_ratio(result.exit_layer, result.seq_len)
    assert result.honest_flops_ratio == cost.honest_flops_ratio(
        result.exit_layer, result.seq_len, result.lens_reads)


def test_full_depth_ratios_are_one_and_early_exit_is_cheaper(model):
    full = predict(model, PROMPT, NEVER)
    early = predict(model, PROMPT, ALWAYS)
    assert full.paper_flops_ratio == pytest.approx(1.0)
    assert full.honest_flops_ratio > 1.0  # three extra lens checks before the last layer
    # Exiting at layer 1 reads one lens: the one head product the dense model pays too.
    assert early.lens_reads == 1 and early.honest_flops_ratio < 1.0


def test_trace_matches_the_full_depth_trace_used_for_training(model):
    # The policy is trained on `model.trace` rows (via collect); it must see the same numbers here.
    names = ("gap", "top_prob", "depth", "cos_hidden")
    policy = _Recorder(names)
    result = predict(model, PROMPT, policy)
    full = model.trace(PROMPT, names)
    assert result.feature_names == names
    assert np.array(result.trace).shape == (4, len(names))
    np.testing.assert_allclose(result.trace, full.features, atol=1e-6)
    assert result.top1_trace == full.top1.tolist()


class _Recorder:
    """A policy that never exits and remembers the shape of every trace it was shown."""

    def __init__(self, features):
        self.features = features
        self.shapes = []

    def should_exit(self, trace):
        self.shapes.append(trace.shape)
        return False


def test_policy_sees_a_growing_trace_and_is_not_asked_after_the_last_layer(model):
    policy = _Recorder(("gap", "top_prob"))
    predict(model, PROMPT, policy)
    assert policy.shapes == [(1, 2), (2, 2), (3, 2)]


def test_exit_trace_has_exit_layer_rows_of_the_policys_features(model):
    result = predict(model, PROMPT, ALWAYS)
    assert result.feature_names == ("gap",)
    assert np.array(result.trace).shape == (1, 1)
    assert 0.0 <= result.trace[0][0] <= 1.0


@pytest.fixture(scope="module")
def depth_policy():
    """A linear SVM over (cos_attn, depth, gap) whose labels say: exit from depth 0.5 (layer 2) on.

    cos_attn and gap are noise; the order puts a sublayer feature first so a column mix-up shows.
    """
    rng = np.random.default_rng(0)
    depth = np.tile([0.25, 0.5, 0.75, 1.0], (60, 1))
    X = np.stack([rng.uniform(-1, 1, depth.shape), depth, rng.uniform(0, 1, depth.shape)], axis=-1)
    y = (depth >= 0.5).astype(int)
    return SVMPolicy(features=("cos_attn", "depth", "gap"), kernel="linear").fit(X, y)


def test_policy_on_depth_and_sublayer_features_exits_at_the_learned_layer(model, depth_policy):
    every_layer = clone_fitted(depth_policy, first_check_=1)
    result = predict(model, PROMPT, every_layer)
    assert result.exit_layer == 2 and result.accepted and result.lens_reads == 2
    trace = np.array(result.trace)
    assert result.feature_names == ("cos_attn", "depth", "gap")
    assert trace[:, 1].tolist() == [0.25, 0.5]
    assert trace[0, 0] == 0.0  # layer 1 has no previous attention output to compare with
    assert 0.0 < abs(trace[1, 0]) <= 1.0


def test_learned_schedule_reads_no_lens_before_the_first_check(model, depth_policy):
    assert depth_policy.first_check_ == 2  # no training prompt was accepted at layer 1
    every_layer = predict(model, PROMPT, clone_fitted(depth_policy, first_check_=1))
    scheduled = predict(model, PROMPT, depth_policy)
    assert scheduled.exit_layer == 2 and scheduled.first_check == scheduled.first_read_layer == 2
    assert scheduled.lens_reads == 1 and scheduled.honest_flops_ratio < every_layer.honest_flops_ratio
    # Layer 2's features do not depend on whether layer 1's lens was read.
    assert np.allclose(scheduled.trace[0], every_layer.trace[1], atol=1e-6)


def clone_fitted(policy, **attributes):
    """A deep copy of a fitted policy with some learned attributes replaced."""
    import copy

    twin = copy.deepcopy(policy)
    for name, value in attributes.items():
        setattr(twin, name, value)
    return twin


def test_sublayer_hooks_are_removed_after_predict(model, depth_policy):
    predict(model, PROMPT, depth_policy)
    assert all(not layer.self_attn._forward_hooks for layer in model.executor.layers)
    # A second prediction does not read stale sublayer outputs from the first.
    again = predict(model, PROMPT, depth_policy)
    assert again.trace == predict(model, PROMPT, depth_policy).trace


def test_exiting_does_not_change_the_model_for_the_next_prompt(model):
    predict(model, "Q: first prompt\nA:", ALWAYS)
    result = predict(model, PROMPT, NEVER)
    with torch.no_grad():
        expected = int(model.model(model.encode(PROMPT)).logits[0, -1].argmax())
    assert result.answer_token_id == expected


@pytest.mark.parametrize("prompt, message", [("", "empty"), ("  \n", "empty"), ("x" * 200, "context of 128")])
def test_rejects_prompts_the_model_cannot_take(model, prompt, message):
    with pytest.raises(PromptError, match=message):
        predict(model, prompt, NEVER)


def test_result_serialises_to_plain_json_types(model):
    record = json.loads(json.dumps(predict(model, PROMPT, ALWAYS).to_dict()))
    assert record["exit_layer"] == 1 and record["feature_names"] == ["gap"]


def test_a_batch_told_never_to_check_runs_every_layer_and_reads_one_lens_for_the_full_models_answer(model):
    from adainfer.inference.predict import predict_batch

    prompts = [PROMPT, "Q: a dog ran far away\nA:"]
    results = predict_batch(model, prompts, ALWAYS, first_check=model.num_layers + 1)
    assert [r.exit_layer for r in results] == [4, 4] and [r.lens_reads for r in results] == [1, 1]
    assert not any(r.accepted for r in results)  # the policy, which accepts everywhere, was never asked
    assert [r.answer_token_id for r in results] == [int(model.model(model.encode(p)).logits[0, -1].argmax())
                                                    for p in prompts]
