import pytest
import torch

from adainfer.engine.executor import LayerExecutor
from adainfer.engine.families import UnsupportedArchitectureError
from adainfer.testing.tiny_models import TINY_CONFIGS, VOCAB, tiny_model


@pytest.fixture(params=sorted(TINY_CONFIGS))
def model(request):
    return tiny_model(request.param)


def _full_depth_logits(executor, input_ids, attention_mask=None):
    inputs = executor.prepare(input_ids, attention_mask)
    hidden = executor.run_layers(inputs.embeddings, inputs, 0, executor.num_layers)
    return executor.lens(hidden[:, -1])


def test_full_depth_matches_forward(model):
    input_ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))
    executor = LayerExecutor(model)
    expected = model(input_ids).logits[:, -1]
    assert torch.allclose(_full_depth_logits(executor, input_ids), expected, atol=1e-4, rtol=0)


def test_layers_run_in_pieces_equal_one_run(model):
    input_ids = torch.randint(0, VOCAB, (1, 11), generator=torch.Generator().manual_seed(2))
    executor = LayerExecutor(model)
    inputs = executor.prepare(input_ids)
    hidden = inputs.embeddings
    for layer in range(executor.num_layers):
        hidden = executor.run_layers(hidden, inputs, layer, layer + 1)
    whole = executor.run_layers(inputs.embeddings, inputs, 0, executor.num_layers)
    assert torch.equal(hidden, whole)


def test_later_layers_are_not_computed(model):
    executor = LayerExecutor(model)
    calls = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(executor.layers)]
    inputs = executor.prepare(torch.tensor([[1, 2, 3]]))
    executor.run_layers(inputs.embeddings, inputs, 0, 2)
    for handle in handles:
        handle.remove()
    assert calls == [0, 1]


def test_prepare_restores_the_model(model):
    executor = LayerExecutor(model)
    before = [id(layer) for layer in executor.layers]
    executor.prepare(torch.tensor([[5, 6]]))
    from adainfer.engine.families import resolve
    assert [id(layer) for layer in resolve(model, executor.family.layers)] == before


def test_run_layers_rejects_bad_bounds():
    executor = LayerExecutor(tiny_model("llama"))
    inputs = executor.prepare(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="start"):
        executor.run_layers(inputs.embeddings, inputs, 3, 2)


def test_unsupported_architecture_names_supported_ones():
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForCausalLM"):
        LayerExecutor(torch.nn.Linear(2, 2))
