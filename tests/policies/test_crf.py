"""The CRF policy decided online on prefixes: no exit on a confident first layer; copies keep their tagger."""

import copy

import numpy as np
from policy_data import make_data

from adainfer.policies.crf import CRFPolicy


def make_confident_first_layer_data(seed: int, n_prompts: int = 60, n_layers: int = 12):
    """Like `make_data`, but layer 1 is confidently wrong: its gap and top_prob are drawn exactly
    like those of the layers labelled 1, as the logit lens of Gemma 3 270M's first layer is on
    SST-2 (mean gap 0.84, label 0 on every prompt). Returns X, y and the first layer (0-based)
    labelled 1 per prompt."""
    rng = np.random.default_rng(seed)
    flip = rng.integers(4, n_layers - 2, size=n_prompts)
    y = (np.arange(n_layers)[None, :] >= flip[:, None]).astype(int)
    confident = (y == 1) | (np.arange(n_layers) == 0)[None, :]
    gap = np.where(confident, rng.uniform(0.8, 0.99, y.shape), rng.uniform(0.0, 0.4, y.shape))
    top_prob = np.clip(gap + rng.uniform(0.0, 0.05, y.shape), 0, 1)
    return np.stack([gap, top_prob], axis=-1), y, flip


def test_online_crf_does_not_exit_on_a_confident_first_layer():
    # Trained on whole sequences and decoded on prefixes, the CRF exited at layer 1 on every
    # prompt here: a one-layer prefix has no transition, and the state features alone say 1.
    X, y, _ = make_confident_first_layer_data(seed=0)
    policy = CRFPolicy().fit(X, y)
    X_eval, _, flip = make_confident_first_layer_data(seed=1)
    pred = policy.predict(X_eval)
    assert not pred[:, 0].any()
    first_exit = np.where(pred.any(axis=1), pred.argmax(axis=1), X_eval.shape[1])
    assert (first_exit == flip).mean() > 0.9  # at the first layer labelled 1, not before or after


def test_fitted_crf_survives_deepcopy(fitted):
    X = make_data(seed=6)[0]
    copied = copy.deepcopy(fitted["crf"])
    assert np.array_equal(copied.predict(X), fitted["crf"].predict(X))
