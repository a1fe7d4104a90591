"""The SVM policy: its fast margin equals sklearn's, its class weights survive JSON."""

import numpy as np
from policy_data import IDENTITY

from adainfer.policies.io import load_policy
from adainfer.policies.svm import SVMPolicy


def test_svm_fast_path_matches_pipeline_for_linear_kernel(data):
    X, y = data
    policy = SVMPolicy(kernel="linear").fit(X, y)
    margins = policy.pipeline_.decision_function(X.reshape(-1, 2)).reshape(y.shape)
    decided = [[policy.should_exit(X[p, : l + 1]) for l in range(X.shape[1])]
               for p in range(X.shape[0])]
    assert np.array_equal(np.array(decided), margins > 0)


def test_svm_class_weight_dict_survives_json(data, tmp_path):
    X, y = data
    SVMPolicy(class_weight={0: 1.0, 1: 2.0}).fit(X, y).save(tmp_path, IDENTITY)
    assert load_policy(tmp_path).class_weight == {0: 1.0, 1: 2.0}
