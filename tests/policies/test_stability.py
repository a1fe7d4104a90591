"""Stability columns: their values, and that a row depends only on the rows before it."""

import numpy as np
import pytest

from adainfer.policies.stability import stability_names, with_stability

FEATURES = ("cand_gap", "cand_agree_prev", "depth")
LAYERS = 6


def window(gaps, agrees, first_layer):
    layers = np.arange(first_layer, first_layer + len(gaps)) / LAYERS
    return np.stack([gaps, agrees, layers], axis=-1)[None].astype(np.float32)


def test_values_of_a_known_window():
    X = window([0.1, 0.4, 0.3, 0.9], [1, 1, 0, 1], first_layer=2)
    columns = with_stability(X, FEATURES, LAYERS)[0, :, 3:]
    assert columns[:, 0].tolist() == [2, 3, 1, 2]  # run length: the first read's agreement counts its predecessor
    np.testing.assert_allclose(columns[:, 1], [0, 0.3, -0.1, 0.6], atol=1e-6)  # gap change, 0 at the first read
    np.testing.assert_allclose(columns[:, 2], [0.1, 0.1, 0.1, 0.3], atol=1e-6)  # smallest of the last three gaps
    assert columns[:, 3:].argmax(axis=1).tolist() == [1, 2, 3, 4]  # layers 2..5, one-hot
    assert len(stability_names(LAYERS)) == columns.shape[1]


def test_a_row_depends_only_on_the_rows_before_it():
    rng = np.random.default_rng(0)
    X = window(rng.uniform(size=5), rng.integers(0, 2, size=5), first_layer=1)
    full = with_stability(X, FEATURES, LAYERS)
    for reads in range(1, 6):  # a live trace after `reads` checks is a prefix of the replayed window
        np.testing.assert_array_equal(with_stability(X[:, :reads], FEATURES, LAYERS), full[:, :reads])


def test_features_without_a_gap_and_its_agreement_are_refused():
    with pytest.raises(ValueError, match="stability features need"):
        with_stability(np.zeros((1, 2, 2)), ("gap", "depth"), LAYERS)
