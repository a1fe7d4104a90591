import numpy as np
import pytest
import torch

from adainfer.engine.batch import check_layer_inputs, encode_batch, select_rows
from adainfer.engine.executor import LayerInputs
from adainfer.engine.model import PromptError
from adainfer.inference.predict import predict, predict_batch
from adainfer.testing.tiny_models import TINY_CONFIGS, tiny_exit_model

# Different lengths, different last characters; row 1 exits first, so a middle row leaves.
PROMPTS = ["Q: the cat sat\nA:", "hi", "Q: a long and winding prompt about films\nA", "Q: dull!"]
EXIT_LAYERS = [3, 1, 4, 2]  # 4 = the last layer: never accepted
ALL_FEATURES = ("gap", "top_prob", "depth", "cos_attn", "cos_mlp", "cos_hidden")
NO_MLP = ("gap", "top_prob", "depth", "cos_attn", "cos_hidden")


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def model(request):
    return tiny_exit_model(request.param)


class PerPromptPolicy:
    """Exits at a layer fixed per prompt, recognising the prompt by its first trace row.

    The first rows of different prompts differ by far more than batching's float error, so the
    nearest one names the prompt whether the trace comes from `predict` or `predict_batch`.
    """

    def __init__(self, model, prompts, exit_layers, features):
        self.features = features
        self.first_rows = np.stack([model.trace(prompt, features).features[0] for prompt in prompts])
        gaps = np.abs(self.first_rows[:, None] - self.first_rows[None]).max(axis=-1)
        assert (gaps + np.eye(len(prompts)) > 1e-3).all(), "prompts must be told apart by their first row"
        self.exit_layers = exit_layers

    def should_exit(self, trace):
        prompt = int(np.abs(self.first_rows - trace[0]).max(axis=-1).argmin())
        return len(trace) >= self.exit_layers[prompt]


def _assert_same(batched, alone):
    assert batched.answer_token_id == alone.answer_token_id
    assert batched.answer_text == alone.answer_text
    assert batched.exit_layer == alone.exit_layer and batched.lens_reads == alone.lens_reads
    assert batched.accepted == alone.accepted and batched.num_layers == alone.num_layers
    assert batched.seq_len == alone.seq_len
    assert batched.feature_names == alone.feature_names
    assert batched.top1_trace == alone.top1_trace
    np.testing.assert_allclose(batched.trace, alone.trace, atol=1e-4, rtol=0)
    assert batched.paper_flops_ratio == alone.paper_flops_ratio
    assert batched.honest_flops_ratio == alone.honest_flops_ratio


def test_each_row_equals_its_prompt_run_alone(model):
    policy = PerPromptPolicy(model, PROMPTS, EXIT_LAYERS, NO_MLP)
    batched = predict_batch(model, PROMPTS, policy)
    assert [result.exit_layer for result in batched] == EXIT_LAYERS
    assert [result.seq_len for result in batched] == [len(prompt) for prompt in PROMPTS]
    for prompt, result in zip(PROMPTS, batched):
        _assert_same(result, predict(model, prompt, policy))


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_sublayer_features_follow_rows_out_of_the_batch(family):
    model = tiny_exit_model(family)
    policy = PerPromptPolicy(model, PROMPTS, EXIT_LAYERS, ALL_FEATURES)
    for prompt, result in zip(PROMPTS, predict_batch(model, PROMPTS, policy)):
        _assert_same(result, predict(model, prompt, policy))


def test_rows_that_exit_leave_the_batch(model):
    policy = PerPromptPolicy(model, PROMPTS, EXIT_LAYERS, ("gap", "top_prob"))
    seen = []
    handles = [layer.register_forward_hook(lambda module, args, output, i=i: seen.append(
        (i, (output[0] if isinstance(output, tuple) else output).shape[0])))
        for i, layer in enumerate(model.executor.layers)]
    try:
        predict_batch(model, PROMPTS, policy)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [(0, 4), (1, 3), (2, 2), (3, 1)]


def test_one_prompt_and_no_prompts(model):
    policy = PerPromptPolicy(model, PROMPTS[:1], [2], ("gap",))
    [result] = predict_batch(model, PROMPTS[:1], policy)
    _assert_same(result, predict(model, PROMPTS[0], policy))
    assert predict_batch(model, [], policy) == []


def test_a_bad_prompt_fails_the_batch_like_predict():
    model = tiny_exit_model("llama")
    with pytest.raises(PromptError, match="empty"):
        predict_batch(model, ["Q: fine\nA:", "  "], PerPromptPolicy(model, PROMPTS[:1], [2], ("gap",)))


def test_encode_batch_left_pads_and_counts_positions_from_each_rows_first_token():
    model = tiny_exit_model("gpt2")
    batch = encode_batch(model, ["abcd", "xy"])
    assert batch.lengths == [4, 2]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert batch.input_ids[1, 2:].tolist() == model.encode("xy")[0].tolist()
    assert batch.position_ids.tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]


def test_select_rows_cuts_per_row_tensors_and_keeps_broadcast_ones():
    mask = torch.arange(3 * 2).reshape(3, 1, 2)
    rotary = torch.ones(1, 2, 5)  # dim 0 = 1: shared by every row
    value = ({"mask": mask, "cache": None, "flag": True}, [mask, (rotary, torch.tensor(7))])
    index = torch.tensor([0, 2])
    cut = select_rows(value, index, batch_size=3)
    assert cut[0]["mask"].tolist() == mask[[0, 2]].tolist()
    assert cut[1][0] is cut[0]["mask"]  # one tensor in two places is cut once and stays shared
    assert cut[1][1][0] is rotary and int(cut[1][1][1]) == 7
    assert cut[0]["cache"] is None and cut[0]["flag"] is True
    with pytest.raises(ValueError, match="at least 2"):
        select_rows(value, torch.tensor([0]), batch_size=1)


def test_check_layer_inputs_rejects_a_tensor_without_a_batch_dimension():
    inputs = LayerInputs(embeddings=torch.zeros(3, 5, 2), layer_args=[(torch.zeros(3, 5),)],
                         layer_kwargs=[{"cache_position": torch.arange(5)}])
    with pytest.raises(ValueError, match=r"layer 0 gets a tensor of shape \(5,\)"):
        check_layer_inputs(inputs, batch_size=3)
