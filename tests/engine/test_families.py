"""Families as data: every entry resolves on its tiny model, and an unknown class is refused by name."""

import pytest
from torch import nn

from adainfer.engine.families import FAMILIES, UnsupportedArchitectureError, family_of, resolve
from adainfer.testing.tiny_models import TINY_CONFIGS, tiny_model


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_every_part_a_spec_names_exists_on_its_model(family):
    model = tiny_model(family)
    spec = family_of(model)
    assert spec is FAMILIES[type(model).__name__]
    layers = resolve(model, spec.layers)
    assert isinstance(layers, nn.ModuleList) and len(layers) == model.config.num_hidden_layers
    assert isinstance(resolve(model, spec.final_norm), nn.Module) and isinstance(resolve(model, spec.head), nn.Linear)
    for layer in layers:
        assert isinstance(resolve(layer, spec.attention), nn.Module) and isinstance(resolve(layer, spec.mlp), nn.Module)
    if spec.logit_softcap_attr:
        assert getattr(model.config, spec.logit_softcap_attr) is not None


def test_every_tiny_model_is_a_supported_family_and_every_family_has_a_tiny_model():
    assert {type(tiny_model(family)).__name__ for family in TINY_CONFIGS} == set(FAMILIES)


def test_resolve_follows_dotted_paths_and_reads_a_missing_or_unset_part_as_none():
    root = nn.Module()
    root.inner = nn.Module()
    root.inner.leaf = nn.Linear(1, 1)
    root.inner.unset = None
    assert resolve(root, "inner.leaf") is root.inner.leaf
    assert resolve(root, "inner.unset") is None and resolve(root, "inner.nothing") is None and resolve(root, None) is None


def test_an_unknown_class_is_refused_with_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture Linear; supported: .*GPT2LMHeadModel"):
        family_of(nn.Linear(1, 1))
