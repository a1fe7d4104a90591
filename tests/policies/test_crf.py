"""The CRF policy decided online on prefixes: no exit on a confident first layer; its numpy decoding is crfsuite's."""

import copy

import numpy as np
import pytest
import sklearn_crfsuite
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


def _noisy_traces(seed: int, n_prompts: int = 50, n_layers: int = 18):
    """Traces like a real model's: noisy, non-monotone features, labels that flip back and forth."""
    rng = np.random.default_rng(seed)
    flip = rng.integers(3, n_layers - 1, size=n_prompts)
    y = (np.arange(n_layers)[None, :] >= flip[:, None]).astype(int)
    y ^= (rng.random(y.shape) < 0.08).astype(int)
    gap = np.clip(0.45 * y + rng.normal(0.25, 0.2, y.shape), 0, 1)
    top_prob = np.clip(gap + rng.uniform(0, 0.3, y.shape), 0, 1)
    depth = np.broadcast_to(np.arange(1, n_layers + 1) / n_layers, y.shape)
    return np.stack([gap, top_prob, depth], axis=-1), y


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_decoding_equals_the_crfsuite_tagger(seed):
    # The policy keeps crfsuite's weights and decodes them itself: its decision at every prefix must
    # be the marginal that crfsuite's own tagger computes from the same training.
    X, y = _noisy_traces(seed)
    features = ("gap", "top_prob", "depth")
    policy = CRFPolicy(features=features, c1=0.05, c2=0.01).fit(X, y)
    crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=0.05, c2=0.01, max_iterations=100)
    items, labels = [], []
    for seq, tags in zip(X, y):
        seq_items = policy._items(seq)
        for end in range(1, len(seq_items) + 1):
            items.append(seq_items[:end])
            labels.append([str(v) for v in tags[:end]])
    crf.fit(items, labels)
    tagger = crf.tagger_
    X_eval, _ = _noisy_traces(seed + 10)
    expected = np.zeros(X_eval.shape[:2], dtype=np.int64)
    margins = []
    for prompt, seq in enumerate(X_eval):
        seq_items = policy._items(seq)
        for layer in range(len(seq_items)):
            tagger.set(seq_items[: layer + 1])
            marginal = tagger.marginal("1", layer)
            margins.append(abs(marginal - 0.5))
            expected[prompt, layer] = marginal > 0.5
    assert min(margins) > 1e-9  # no tie that rounding could decide
    assert 0 < expected.mean() < 1
    assert np.array_equal(policy.predict(X_eval), expected)
    odds = policy.last_label_log_odds(X_eval)
    assert np.allclose(1 / (1 + np.exp(-odds)).ravel()[:50],
                       [expected_marginal for expected_marginal in _marginals(tagger, policy, X_eval[:3])][:50])


def _marginals(tagger, policy, X):
    for seq in X:
        seq_items = policy._items(seq)
        for layer in range(len(seq_items)):
            tagger.set(seq_items[: layer + 1])
            yield tagger.marginal("1", layer)


def test_should_exit_equals_predict_on_every_prefix(fitted):
    X = make_data(seed=8)[0]
    pred = fitted["crf"].predict(X)
    assert [fitted["crf"].should_exit(X[0, : layer + 1]) for layer in range(X.shape[1])] == pred[0].astype(bool).tolist()
