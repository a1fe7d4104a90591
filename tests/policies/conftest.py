"""The policies' shared fixtures: training data and one fitted policy of each kind."""

import pytest
from policy_data import make_data

from adainfer.policies.crf import CRFPolicy
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.svm import SVMPolicy


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return {
        "svm": SVMPolicy().fit(X, y),
        "crf": CRFPolicy().fit(X, y),
        "gap": GapThresholdPolicy().fit(X[..., :1], y),
    }
