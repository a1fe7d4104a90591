"""The KV decoder's passes on tiny models: state propagation, verification over cached drafts, cropping."""

import pytest
import torch

from adainfer.inference.decoder import KVDecoder
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.testing.tiny_models import tiny_exit_model


@pytest.fixture(scope="module")
def model():
    return tiny_exit_model("llama")


def test_state_propagation_runs_attention_but_never_the_mlp_of_skipped_layers(model):
    calls = {"attention": [], "mlp": []}
    handles = []
    for index, layer in enumerate(model.executor.layers):
        handles.append(layer.self_attn.register_forward_hook(lambda *a, i=index: calls["attention"].append(i)))
        handles.append(layer.mlp.register_forward_hook(lambda *a, i=index: calls["mlp"].append(i)))
    try:
        decoder = KVDecoder(model)
        decoder.full_pass(model.encode("abc")[0].tolist())
        calls["attention"].clear()
        calls["mlp"].clear()
        step = decoder.early_pass(5, exit_layer=2, fill=True)
    finally:
        for handle in handles:
            handle.remove()
    assert step.exit_layer == 2 and step.filled_layers == 2
    assert calls["attention"] == [0, 1, 2, 3]
    assert calls["mlp"] == [0, 1]
    assert decoder.layer_lengths() == [4, 4, 4, 4]


@pytest.mark.parametrize("family", ["llama", "gemma2", "opt"])
def test_verifying_drafts_over_their_cached_lower_layers_equals_a_full_pass(family):
    model = tiny_exit_model(family)
    prompt, drafts = model.encode("Q: abc\nA:")[0].tolist(), [40, 41, 42]
    dense = KVDecoder(model)
    dense.full_pass(prompt)
    expected = dense.full_pass(drafts)  # (3, V): every layer on the three positions at once
    decoder = KVDecoder(model, record_past=True)
    decoder.full_pass(prompt)
    steps = [decoder.early_pass(token, exit_layer=2, fill=False) for token in drafts]
    assert decoder.layer_lengths()[:2] == [len(prompt) + 3] * 2 and decoder.layer_lengths()[2:] == [len(prompt)] * 2
    logits = decoder.finish_pass(drafts, torch.cat([step.hidden for step in steps], dim=1), start_layer=2)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert decoder.layer_lengths() == [len(prompt) + 3] * model.num_layers


def test_crop_forgets_positions_in_every_layer_and_refuses_to_grow(model):
    decoder = KVDecoder(model)
    decoder.full_pass(model.encode("abcdef")[0].tolist())
    decoder.crop(3)
    assert decoder.length == 3 and decoder.layer_lengths() == [3] * model.num_layers
    with pytest.raises(RuntimeError, match="fewer than 5"):
        decoder.crop(5)


def test_an_early_pass_takes_a_fixed_layer_or_a_policy_not_both(model):
    decoder = KVDecoder(model)
    decoder.full_pass([1, 2, 3])
    with pytest.raises(ValueError, match="exactly one"):
        decoder.early_pass(4, exit_layer=2, policy=GapThresholdPolicy())
    with pytest.raises(ValueError, match="exit layer must be in 1..4"):
        decoder.early_pass(4, exit_layer=5)
    step = decoder.early_pass(4, policy=GapThresholdPolicy(threshold=2.0))  # never accepts
    assert step.exit_layer == model.num_layers and step.filled_layers == 0 and decoder.length == 4
