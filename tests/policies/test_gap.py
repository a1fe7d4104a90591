"""The paper's fixed rule: gap strictly above the threshold, on one feature."""

import numpy as np
import pytest

from adainfer.policies.gap import GapThresholdPolicy


def test_gap_rule_is_strictly_greater():
    policy = GapThresholdPolicy(threshold=0.8)
    X = np.array([[[0.1], [0.8], [0.81]]])
    assert policy.predict(X).tolist() == [[0, 0, 1]]
    assert policy.features == ("gap",)
    assert not policy.should_exit(X[0, :2]) and policy.should_exit(X[0])


def test_gap_fit_checks_single_feature(data):
    with pytest.raises(ValueError, match="2 features per layer but the policy uses 1"):
        GapThresholdPolicy().fit(data[0])
