"""Boosted trees as plain arrays: the same scores as scikit-learn, a checked file, a certified policy."""

import json

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from adainfer.policies.base import PolicyFileError
from adainfer.policies.calibrated_trees import TREES_FILE, CalibratedTreePolicy
from adainfer.policies.decisions import scheduled_decisions
from adainfer.policies.io import load_policy
from adainfer.policies.trees import TreeEnsemble

IDENTITY = {"architecture": "Toy", "num_layers": 6}
FEATURES = ("gap", "top_prob", "agree_prev", "depth")


def rows(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    return X, (X[:, 0] + 0.5 * X[:, 1] * X[:, 2] > 0).astype(np.int64)


def test_scores_equal_scikit_learns_decision_function():
    X, y = rows()
    trees = TreeEnsemble.fit(X, y, n_estimators=30, max_depth=3, learning_rate=0.1)
    booster = GradientBoostingClassifier(n_estimators=30, max_depth=3, learning_rate=0.1, random_state=0).fit(X, y)
    np.testing.assert_allclose(trees.score(X), booster.decision_function(X), rtol=1e-9, atol=1e-9)
    assert trees.check(5) is None and trees.check(2) is not None  # a feature index beyond the row is refused


def test_a_node_pointing_back_is_refused():
    trees = TreeEnsemble.fit(*rows(), n_estimators=3, max_depth=2, learning_rate=0.1)
    trees.left[0, 0] = 0  # a loop: the root's left child is itself
    assert "after it" in trees.check(5)


def traces(prompts=120, layers=6, seed=1):
    rng = np.random.default_rng(seed)
    settle = rng.integers(2, layers + 1, size=prompts)
    stable = np.arange(1, layers + 1)[None] >= settle[:, None]
    top1 = np.where(stable, 3, rng.integers(4, 9, size=(prompts, layers)))
    agree = np.zeros(top1.shape)
    agree[:, 1:] = top1[:, 1:] == top1[:, :-1]
    depth = np.broadcast_to(np.arange(1, layers + 1) / layers, top1.shape)
    gap = 0.4 * stable + rng.uniform(0, 0.6, size=top1.shape)
    return np.stack([gap, rng.uniform(size=top1.shape), agree, depth], -1).astype(np.float32), top1


def test_a_saved_tree_policy_loads_and_decides_the_same(tmp_path):
    X, top1 = traces()
    policy = CalibratedTreePolicy(FEATURES, first_check=2, n_estimators=20).fit(X[:60], top1[:60])
    policy.calibrate(X[60:], top1[60:], epsilon=0.2, delta=0.1)
    directory = policy.save(tmp_path / "p", IDENTITY)
    loaded = load_policy(directory, IDENTITY)
    assert type(loaded) is CalibratedTreePolicy and loaded.threshold_ == policy.threshold_
    np.testing.assert_array_equal(scheduled_decisions(loaded, X[60:], 2), scheduled_decisions(policy, X[60:], 2))
    assert loaded.should_exit(X[70, 1:4]) == policy.should_exit(X[70, 1:4])


def test_a_tree_file_of_another_shape_is_refused(tmp_path):
    X, top1 = traces()
    directory = CalibratedTreePolicy(FEATURES, first_check=2, n_estimators=5).fit(X, top1).save(tmp_path / "p", IDENTITY)
    config = json.loads((directory / "config.json").read_text())
    config["trees"]["max_nodes"] += 1  # the config no longer describes the arrays (hash of config not checked)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(PolicyFileError, match=TREES_FILE):
        load_policy(directory, IDENTITY)
