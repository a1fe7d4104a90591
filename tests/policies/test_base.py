"""What every stop policy does: online decisions, should_exit as predict, sklearn conventions, checks."""

import numpy as np
import pytest
from policy_data import KINDS, columns, make_data
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from adainfer.policies.base import StopPolicy
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.svm import SVMPolicy


@pytest.mark.parametrize("kind", KINDS)
def test_predicts_sensible_labels(fitted, kind):
    X, y = make_data(seed=1)  # held-out prompts
    pred = fitted[kind].predict(columns(kind, X))
    assert pred.shape == y.shape and pred.dtype.kind == "i"
    assert (pred == y).mean() > 0.9  # always-0 or always-1 scores about 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_predict_is_online(fitted, kind):
    X = columns(kind, make_data(seed=2)[0])
    full = fitted[kind].predict(X)
    rng = np.random.default_rng(3)
    for layer in range(X.shape[1]):
        assert np.array_equal(fitted[kind].predict(X[:, : layer + 1]), full[:, : layer + 1])
        future_changed = X.copy()
        future_changed[:, layer + 1 :] = rng.uniform(0, 1, future_changed[:, layer + 1 :].shape)
        assert np.array_equal(fitted[kind].predict(future_changed)[:, : layer + 1],
                              full[:, : layer + 1])


@pytest.mark.parametrize("kind", KINDS)
def test_should_exit_agrees_with_predict(fitted, kind):
    X = columns(kind, make_data(seed=4)[0])
    pred = fitted[kind].predict(X)
    decided = [[fitted[kind].should_exit(X[p, : l + 1]) for l in range(X.shape[1])]
               for p in range(X.shape[0])]
    assert np.array_equal(np.array(decided, dtype=int), pred)


def test_estimators_follow_sklearn_conventions():
    policy = SVMPolicy(features=("gap",), C=3.0, class_weight="balanced")
    assert clone(policy).get_params() == policy.get_params()
    assert GapThresholdPolicy(0.5, "top_prob").get_params() == {"threshold": 0.5,
                                                                "feature": "top_prob"}


@pytest.mark.parametrize("policy", [SVMPolicy(), CRFPolicy()])
def test_predict_before_fit(policy, data):
    with pytest.raises(NotFittedError):
        policy.predict(data[0])
    with pytest.raises(NotFittedError):
        policy.should_exit(data[0][0])


@pytest.mark.parametrize("make", [SVMPolicy, CRFPolicy])
def test_fit_rejects_bad_inputs(make, data):
    X, y = data
    with pytest.raises(ValueError, match="shape"):
        make().fit(X[0], y)
    with pytest.raises(ValueError, match="features per layer"):
        make().fit(np.concatenate([X, X[..., :1]], axis=-1), y)
    with pytest.raises(ValueError, match="y must have shape"):
        make().fit(X, y[:, :-1])
    with pytest.raises(ValueError, match="binary"):
        make().fit(X, y * 2)
    with pytest.raises(ValueError, match="NaN"):
        make().fit(np.full_like(X, np.nan), y)
    with pytest.raises(ValueError, match="unique names"):
        make(features=("gap", "gap")).fit(X, y)
    with pytest.raises(ValueError, match="only label 1: every layer"):
        make().fit(X, np.ones_like(y))
    with pytest.raises(ValueError, match="only label 0: no layer"):
        make().fit(X, np.zeros_like(y))


@pytest.mark.parametrize("kind", KINDS)
def test_predict_rejects_bad_shapes(fitted, kind):
    X = columns(kind, make_data()[0])
    with pytest.raises(ValueError, match="features per layer"):
        fitted[kind].predict(np.concatenate([X, X], axis=-1))
    with pytest.raises(ValueError, match="trace must have shape"):
        fitted[kind].should_exit(X[0, :0])
    with pytest.raises(ValueError, match="trace must have shape"):
        fitted[kind].should_exit(X[0, 0])


def test_save_rejects_non_json_identity(fitted, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        fitted["gap"].save(tmp_path, {"dtype": object()})


def test_the_base_class_names_what_a_policy_must_decide():
    policy = StopPolicy()
    with pytest.raises(NotImplementedError):
        policy.predict(np.zeros((1, 2, 1)))
    with pytest.raises(NotImplementedError):
        policy.should_exit(np.zeros((2, 1)))
    assert not SVMPolicy.label_free and not CRFPolicy.label_free and not GapThresholdPolicy.label_free
