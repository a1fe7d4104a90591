import copy
import json

import numpy as np
import pytest
import skops.io
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

from adainfer.policies.base import PolicyFileError, PolicyMismatchError
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.io import load_policy
from adainfer.policies.svm import SVMPolicy

IDENTITY = {"name": "tiny-model", "n_layers": 12, "head_sha256": "abc"}


def make_data(n_prompts: int = 40, n_layers: int = 12, seed: int = 0):
    """Label flips 0 -> 1 at a random layer; gap and top_prob jump up from that layer on."""
    rng = np.random.default_rng(seed)
    flip = rng.integers(2, n_layers - 2, size=n_prompts)
    y = (np.arange(n_layers)[None, :] >= flip[:, None]).astype(int)
    gap = np.where(y == 1, rng.uniform(0.82, 0.99, y.shape), rng.uniform(0.0, 0.45, y.shape))
    top_prob = np.clip(gap + rng.uniform(0.0, 0.1, y.shape), 0, 1)
    return np.stack([gap, top_prob], axis=-1), y


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


def columns(kind: str, X: np.ndarray) -> np.ndarray:
    return X[..., :1] if kind == "gap" else X


KINDS = ["svm", "crf", "gap"]


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


def test_svm_fast_path_matches_pipeline_for_linear_kernel(data):
    X, y = data
    policy = SVMPolicy(kernel="linear").fit(X, y)
    margins = policy.pipeline_.decision_function(X.reshape(-1, 2)).reshape(y.shape)
    decided = [[policy.should_exit(X[p, : l + 1]) for l in range(X.shape[1])]
               for p in range(X.shape[0])]
    assert np.array_equal(np.array(decided), margins > 0)


def test_gap_rule_is_strictly_greater():
    policy = GapThresholdPolicy(threshold=0.8)
    X = np.array([[[0.1], [0.8], [0.81]]])
    assert policy.predict(X).tolist() == [[0, 0, 1]]
    assert policy.features == ("gap",)
    assert not policy.should_exit(X[0, :2]) and policy.should_exit(X[0])


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


def test_estimators_follow_sklearn_conventions():
    policy = SVMPolicy(features=("gap",), C=3.0, class_weight="balanced")
    assert clone(policy).get_params() == policy.get_params()
    assert GapThresholdPolicy(0.5, "top_prob").get_params() == {"threshold": 0.5,
                                                                "feature": "top_prob"}


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(fitted, kind, tmp_path):
    X = columns(kind, make_data(seed=5)[0])
    fitted[kind].save(tmp_path / kind, IDENTITY)
    loaded = load_policy(tmp_path / kind, expected_identity=dict(IDENTITY))
    assert type(loaded) is type(fitted[kind])
    assert loaded.get_params() == fitted[kind].get_params()
    assert loaded.n_layers_ == 12
    assert np.array_equal(loaded.predict(X), fitted[kind].predict(X))
    assert loaded.should_exit(X[0, :5]) == fitted[kind].should_exit(X[0, :5])
    config = json.loads((tmp_path / kind / "config.json").read_text())
    assert config["kind"] == kind and config["model_identity"] == IDENTITY
    assert config["adainfer_version"]


def test_svm_class_weight_dict_survives_json(data, tmp_path):
    X, y = data
    SVMPolicy(class_weight={0: 1.0, 1: 2.0}).fit(X, y).save(tmp_path, IDENTITY)
    assert load_policy(tmp_path).class_weight == {0: 1.0, 1: 2.0}


# --- error paths -------------------------------------------------------------------------


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


def test_gap_fit_checks_single_feature(data):
    with pytest.raises(ValueError, match="2 features per layer but the policy uses 1"):
        GapThresholdPolicy().fit(data[0])


def test_load_missing_directory_and_config(tmp_path):
    with pytest.raises(PolicyFileError, match="does not exist"):
        load_policy(tmp_path / "nope")
    with pytest.raises(PolicyFileError, match="missing .*config.json"):
        load_policy(tmp_path)


def test_load_invalid_json_and_unknown_kind(tmp_path):
    GapThresholdPolicy().save(tmp_path, IDENTITY)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "kind": "forest"}))
    with pytest.raises(PolicyFileError, match="unknown policy kind 'forest'"):
        load_policy(tmp_path)
    config_path.write_text("{not json")
    with pytest.raises(PolicyFileError, match="not valid JSON"):
        load_policy(tmp_path)


def test_load_identity_mismatch_names_keys_and_values(fitted, tmp_path):
    fitted["gap"].save(tmp_path, IDENTITY)
    expected = {**IDENTITY, "name": "other-model", "extra": 1}
    with pytest.raises(PolicyMismatchError) as raised:
        load_policy(tmp_path, expected_identity=expected)
    message = str(raised.value)
    assert "name: saved 'tiny-model', expected 'other-model'" in message
    assert "extra: saved '<missing>', expected 1" in message
    assert "n_layers" not in message and "\n" not in message
    assert isinstance(raised.value, ValueError)


def test_load_corrupted_crf_file(fitted, tmp_path):
    fitted["crf"].save(tmp_path, IDENTITY)
    model = bytearray((tmp_path / "crf.crfsuite").read_bytes())
    model[len(model) // 2] ^= 0xFF
    (tmp_path / "crf.crfsuite").write_bytes(bytes(model))
    with pytest.raises(PolicyFileError, match="corrupted: sha256"):
        load_policy(tmp_path)
    (tmp_path / "crf.crfsuite").unlink()
    with pytest.raises(PolicyFileError, match="missing .*crf.crfsuite"):
        load_policy(tmp_path)


def test_load_invalid_crf_model_with_matching_sha(fitted, tmp_path):
    import hashlib

    fitted["crf"].save(tmp_path, IDENTITY)
    garbage = b"not a crfsuite model" * 10
    (tmp_path / "crf.crfsuite").write_bytes(garbage)
    config = json.loads((tmp_path / "config.json").read_text())
    config["crf_sha256"] = hashlib.sha256(garbage).hexdigest()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(PolicyFileError, match="cannot open"):
        load_policy(tmp_path)


def test_load_garbage_skops_file(fitted, tmp_path):
    fitted["svm"].save(tmp_path, IDENTITY)
    (tmp_path / "svm.skops").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(PolicyFileError, match="cannot load .*svm.skops"):
        load_policy(tmp_path)


class Untrusted:
    pass


def test_load_skops_with_untrusted_type(fitted, tmp_path):
    fitted["svm"].save(tmp_path, IDENTITY)
    skops.io.dump(Untrusted(), tmp_path / "svm.skops")
    with pytest.raises(PolicyFileError, match="Untrusted"):
        load_policy(tmp_path)


def test_load_skops_with_wrong_sklearn_model(data, tmp_path):
    X, y = data
    SVMPolicy().fit(X, y).save(tmp_path, IDENTITY)
    skops.io.dump(LogisticRegression().fit(X.reshape(-1, 2), y.ravel()), tmp_path / "svm.skops")
    with pytest.raises(PolicyFileError, match="does not hold StandardScaler"):
        load_policy(tmp_path)


def test_save_rejects_non_json_identity(fitted, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        fitted["gap"].save(tmp_path, {"dtype": object()})
