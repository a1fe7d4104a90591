"""Learn then Test calibration: the certificate, the policy, and the guarantee on synthetic traces."""

import json

import numpy as np
import pytest

from adainfer.policies.calibrated import (CalibratedPolicy, binomial_p_value, exits_at, learn_then_test,
                                          threshold_grid)
from adainfer.policies.decisions import exit_layers, oracle_exit_layers, scheduled_decisions, stable_labels
from adainfer.policies.io import load_policy

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
    train, _ = traces(100, seed=10, noise=0.0)
    certificate = learn_then_test(X[..., 0], top1, epsilon=0.05, delta=0.05, grid=threshold_grid(train[..., 0]))
    assert certificate.empirical_risk == 0.0 and certificate.p_value <= 0.05
    assert 0 <= certificate.threshold < 1  # scores are 0 or 1: any cut between exits on stable layers
    exits = np.where((X[..., 0] > certificate.threshold)[:, :-1].any(1), (X[..., 0] > certificate.threshold).argmax(1) + 1, LAYERS)
    np.testing.assert_array_equal(exits, np.minimum(oracle_exit_layers(top1), LAYERS))


def test_too_few_calibration_prompts_never_exit_early():
    X, top1 = traces(50, seed=1, noise=0.0)
    # Even zero changed answers out of 50 cannot show risk <= 2% at 95%: 0.98**50 = 0.36 > 0.05.
    certificate = learn_then_test(X[..., 0], top1, epsilon=0.02, delta=0.05, grid=threshold_grid(X[..., 0]))
    assert certificate.threshold == float("inf") and certificate.p_value == 1.0


@pytest.mark.parametrize("epsilon, delta", [(0.05, 0.1), (0.1, 0.05)])
def test_the_risk_stays_below_epsilon_in_at_least_one_minus_delta_of_splits(epsilon, delta):
    X, top1 = traces(4000, seed=2, noise=0.6)
    scores = X[..., 0]
    grid = threshold_grid(traces(300, seed=20, noise=0.6)[0][..., 0])
    rng = np.random.default_rng(3)
    within = []
    for _ in range(100):
        order = rng.permutation(len(scores))
        calibration, test = order[:200], order[200:]
        certificate = learn_then_test(scores[calibration], top1[calibration], epsilon, delta, grid)
        decisions = scores[test] > certificate.threshold
        first = np.where(decisions[:, :-1].any(1), decisions[:, :-1].argmax(1) + 1, LAYERS)
        risk = (top1[test][np.arange(len(test)), first - 1] != top1[test][:, -1]).mean()
        within.append(risk <= epsilon)
    assert np.mean(within) >= 1 - delta


def test_calibrated_policy_needs_no_labels_saves_its_certificate_and_decides_online(tmp_path):
    X, top1 = traces(300, seed=4)
    policy = CalibratedPolicy(features=("score", "depth"), first_check=2).fit(X[:150], top1[:150])
    certificate = policy.calibrate(X[150:], top1[150:], epsilon=0.1, delta=0.05)
    assert certificate.calibration_prompts == 150 and np.isfinite(policy.threshold_)
    decisions = scheduled_decisions(policy, X[150:], first_check=2)
    assert not decisions[:, 0].any()  # first_check 2: layer 1 is never accepted
    for row in range(5):  # a walk shows the policy its trace from the first checked layer on
        for layer in range(1, LAYERS):
            assert policy.should_exit(X[150 + row, 1: layer + 1]) == bool(decisions[row, layer])
    loaded = load_policy(policy.save(tmp_path / "p", IDENTITY), IDENTITY)
    assert type(loaded) is CalibratedPolicy and loaded.threshold_ == policy.threshold_
    assert loaded.certificate_ == certificate
    np.testing.assert_array_equal(scheduled_decisions(loaded, X[150:], first_check=2), decisions)
    np.testing.assert_array_equal(loaded.threshold_grid_, policy.threshold_grid_)
    assert loaded.calibrate(X[150:], top1[150:], epsilon=0.1, delta=0.05) == certificate  # calibrates the same way


def test_bad_risk_levels_are_refused():
    X, top1 = traces(20, seed=5)
    with pytest.raises(ValueError, match="epsilon and delta"):
        learn_then_test(X[..., 0], top1, epsilon=0.0, delta=0.05, grid=np.array([0.5]))


def test_the_grid_comes_from_training_scores_most_cautious_first():
    train, _ = traces(200, seed=6)
    grid = threshold_grid(train[..., 0], first_check=3, size=50)
    assert len(grid) == 50 and (np.diff(grid) < 0).all()
    eligible = train[:, 2:-1, 0]  # layers 3..L-1: the last layer answers anyway
    assert grid[0] == eligible.max() and grid[-1] == eligible.min()


def test_calibration_scores_outside_the_training_range_change_no_tested_threshold():
    train, _ = traces(200, seed=7)
    grid = threshold_grid(train[..., 0])
    X, top1 = traces(400, seed=8)
    top1[:] = 5  # every layer already gives the final answer: every threshold is safe
    shifted = X[..., 0] + 100.0  # every calibration score above every training score
    certificate = learn_then_test(shifted, top1, epsilon=0.05, delta=0.05, grid=grid)
    # All of the training grid was tested and its lowest threshold chosen; quantiles of the
    # calibration scores would all have been near 100.
    assert certificate.thresholds_tested == len(grid) and certificate.threshold == grid[-1]
    assert certificate.threshold < train[..., 0].max()


def test_fixed_sequence_testing_stops_at_the_first_threshold_not_certified():
    # Layer 1 scores 0.5 with the final answer; layer 2 scores 0.9 with a wrong one. Threshold 0.8
    # exits at layer 2 (every answer changes); 0.4 exits at layer 1 (none changes).
    scores = np.tile([0.5, 0.9, 0.0], (200, 1))
    top1 = np.tile([5, 6, 5], (200, 1))
    assert learn_then_test(scores, top1, 0.05, 0.05, grid=np.array([0.4])).threshold == 0.4
    stopped = learn_then_test(scores, top1, 0.05, 0.05, grid=np.array([0.8, 0.4]))
    assert stopped.threshold == float("inf") and stopped.thresholds_tested == 1
    with pytest.raises(ValueError, match="descending"):
        learn_then_test(scores, top1, 0.05, 0.05, grid=np.array([0.4, 0.8]))


def test_first_check_delays_exits_and_must_leave_a_layer_to_save():
    scores = np.array([[0.9, 0.9, 0.9, 0.9]])
    assert exits_at(scores, 0.5).tolist() == [1]
    assert exits_at(scores, 0.5, first_check=3).tolist() == [3]
    top1 = np.full((1, 4), 5)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="first_check must be in 1..3"):
            learn_then_test(scores, top1, 0.1, 0.1, grid=np.array([0.5]), first_check=bad)
        with pytest.raises(ValueError, match="first_check must be in 1..3"):
            threshold_grid(scores, first_check=bad)


def test_the_policy_grid_is_fixed_at_fit_and_not_moved_by_calibration():
    X, top1 = traces(300, seed=9)
    policy = CalibratedPolicy(features=("score", "depth"), first_check=2).fit(X[:100], top1[:100])
    expected = threshold_grid(policy.margins(X[:100]), first_check=2)
    np.testing.assert_array_equal(policy.threshold_grid_, expected)
    for part in (slice(100, 200), slice(200, 300)):
        certificate = policy.calibrate(X[part], top1[part], epsilon=0.2, delta=0.1)
        np.testing.assert_array_equal(policy.threshold_grid_, expected)
        assert np.isinf(certificate.threshold) or certificate.threshold in expected


def test_an_old_config_with_min_layer_still_loads(tmp_path):
    X, top1 = traces(300, seed=11)
    policy = CalibratedPolicy(features=("score", "depth"), first_check=3).fit(X[:150], top1[:150])
    policy.calibrate(X[150:], top1[150:], epsilon=0.1, delta=0.05)
    directory = policy.save(tmp_path / "p", IDENTITY)
    config = json.loads((directory / "config.json").read_text())
    config["params"]["min_layer"] = config["params"].pop("first_check")  # as saved before the rename
    del config["calibration"]["threshold_grid"]  # nor did old configs store a grid
    (directory / "config.json").write_text(json.dumps(config))
    loaded = load_policy(directory, IDENTITY)
    assert loaded.first_check == 3 and loaded.threshold_ == policy.threshold_
    np.testing.assert_array_equal(loaded.predict(X[150:, 2:]), policy.predict(X[150:, 2:]))
    with pytest.raises(ValueError, match="no threshold grid"):  # never a grid from calibration data
        loaded.calibrate(X[150:], top1[150:], epsilon=0.1, delta=0.05)


@pytest.mark.parametrize("first_check, stability", [(1, False), (3, False), (4, True)])
def test_the_exits_deployed_are_the_exits_certified(first_check, stability):
    """What Learn then Test certified (exits_at on full-depth margins) is what a scheduled walk does:
    a policy asked from layer f on may exit at f itself, not only once it has seen f more layers."""
    X, top1 = traces(300, seed=12)
    agree = np.zeros(top1.shape, dtype=np.float32)
    agree[:, 1:] = top1[:, 1:] == top1[:, :-1]
    X = np.concatenate([X, agree[..., None]], axis=-1)
    policy = CalibratedPolicy(features=("gap", "depth", "agree_prev"), first_check=first_check,
                              stability=stability).fit(X[:150], top1[:150])
    policy.calibrate(X[150:], top1[150:], epsilon=0.2, delta=0.1)
    certified = exits_at(policy.margins(X[150:]), policy.threshold_, first_check)
    deployed = exit_layers(scheduled_decisions(policy, X[150:], first_check))
    np.testing.assert_array_equal(deployed, certified)
    assert (deployed == first_check).any()  # the first checked layer itself is an exit
