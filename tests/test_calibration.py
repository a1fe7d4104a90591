"""Learn then Test calibration: the certificate, the policy, and the guarantee on synthetic traces."""

import numpy as np
import pytest

from adainfer.calibration import CalibratedPolicy, binomial_p_value, learn_then_test, stable_labels
from adainfer.evaluate import oracle_exit_layers
from adainfer.policies import load_policy

LAYERS = 8
IDENTITY = {"architecture": "Toy", "num_layers": LAYERS}


def traces(prompts: int, seed: int, noise: float = 0.15):
    """top-1 settles on the final token at a random layer; the score rises there, blurred by noise."""
    rng = np.random.default_rng(seed)
    settle = rng.integers(2, LAYERS + 1, size=prompts)
    layer = np.arange(1, LAYERS + 1)
    stable = layer[None, :] >= settle[:, None]
    top1 = np.where(stable, 5, rng.integers(6, 9, size=(prompts, LAYERS)))
    score = stable + rng.normal(0, noise, size=(prompts, LAYERS))
    X = np.stack([score, layer[None, :].repeat(prompts, 0) / LAYERS], axis=-1).astype(np.float32)
    return X, top1


def test_stable_labels_start_at_the_oracle_exit():
    top1 = np.array([[1, 2, 2, 3, 3], [4, 4, 4, 4, 4], [1, 3, 1, 3, 2]])
    assert stable_labels(top1).tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]


def test_binomial_p_value_is_the_lower_tail():
    assert binomial_p_value(0, 200, 0.02) == pytest.approx(0.98 ** 200)
    assert binomial_p_value(4, 100, 0.02) > 0.5


def test_a_perfect_score_is_certified_and_exits_at_the_oracle():
    X, top1 = traces(300, seed=0, noise=0.0)
    certificate = learn_then_test(X[..., 0], top1, epsilon=0.05, delta=0.05)
    assert certificate.empirical_risk == 0.0 and certificate.p_value <= 0.05
    assert 0 <= certificate.threshold < 1  # scores are 0 or 1: any cut between exits on stable layers
    exits = np.where((X[..., 0] > certificate.threshold)[:, :-1].any(1), (X[..., 0] > certificate.threshold).argmax(1) + 1, LAYERS)
    np.testing.assert_array_equal(exits, np.minimum(oracle_exit_layers(top1), LAYERS))


def test_too_few_calibration_prompts_never_exit_early():
    X, top1 = traces(50, seed=1, noise=0.0)
    # Even zero changed answers out of 50 cannot show risk <= 2% at 95%: 0.98**50 = 0.36 > 0.05.
    certificate = learn_then_test(X[..., 0], top1, epsilon=0.02, delta=0.05)
    assert certificate.threshold == float("inf") and certificate.p_value == 1.0


@pytest.mark.parametrize("epsilon, delta", [(0.05, 0.1), (0.1, 0.05)])
def test_the_risk_stays_below_epsilon_in_at_least_one_minus_delta_of_splits(epsilon, delta):
    X, top1 = traces(4000, seed=2, noise=0.6)
    scores = X[..., 0]
    rng = np.random.default_rng(3)
    within = []
    for _ in range(100):
        order = rng.permutation(len(scores))
        calibration, test = order[:200], order[200:]
        certificate = learn_then_test(scores[calibration], top1[calibration], epsilon, delta)
        decisions = scores[test] > certificate.threshold
        first = np.where(decisions[:, :-1].any(1), decisions[:, :-1].argmax(1) + 1, LAYERS)
        risk = (top1[test][np.arange(len(test)), first - 1] != top1[test][:, -1]).mean()
        within.append(risk <= epsilon)
    assert np.mean(within) >= 1 - delta


def test_calibrated_policy_needs_no_labels_saves_its_certificate_and_decides_online(tmp_path):
    X, top1 = traces(300, seed=4)
    policy = CalibratedPolicy(features=("score", "depth"), min_layer=2).fit(X[:150], top1[:150])
    certificate = policy.calibrate(X[150:], top1[150:], epsilon=0.1, delta=0.05)
    assert certificate.calibration_prompts == 150 and np.isfinite(policy.threshold_)
    decisions = policy.predict(X[150:])
    assert not decisions[:, 0].any()  # min_layer 2: layer 1 is never accepted
    for row in range(5):
        for layer in range(1, LAYERS):
            assert policy.should_exit(X[150 + row, : layer + 1]) == bool(decisions[row, layer])
    loaded = load_policy(policy.save(tmp_path / "p", IDENTITY), IDENTITY)
    assert type(loaded) is CalibratedPolicy and loaded.threshold_ == policy.threshold_
    assert loaded.certificate_ == certificate
    np.testing.assert_array_equal(loaded.predict(X[150:]), decisions)


def test_bad_risk_levels_are_refused():
    X, top1 = traces(20, seed=5)
    with pytest.raises(ValueError, match="epsilon and delta"):
        learn_then_test(X[..., 0], top1, epsilon=0.0, delta=0.05)
