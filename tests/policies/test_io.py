"""Saved policies: every kind round-trips, and a broken, untrusted or foreign directory is refused."""

import hashlib
import json

import numpy as np
import pytest
import skops.io
from policy_data import IDENTITY, KINDS, columns, make_data
from sklearn.linear_model import LogisticRegression

from adainfer.policies.base import PolicyFileError, PolicyMismatchError, StopPolicy
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.io import POLICY_KINDS, load_policy
from adainfer.policies.svm import SVMPolicy


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


def replace_part(directory, name, data: bytes) -> None:
    """Write a part and record its sha256 in config.json, as whoever crafts a policy can."""
    (directory / name).write_bytes(data)
    config = json.loads((directory / "config.json").read_text())
    config["parts"][name] = hashlib.sha256(data).hexdigest()
    (directory / "config.json").write_text(json.dumps(config))


def test_load_corrupted_crf_file(fitted, tmp_path):
    fitted["crf"].save(tmp_path, IDENTITY)
    model = bytearray((tmp_path / "crf.npz").read_bytes())
    model[len(model) // 2] ^= 0xFF
    (tmp_path / "crf.npz").write_bytes(bytes(model))
    with pytest.raises(PolicyFileError, match="corrupted or from another save: sha256"):
        load_policy(tmp_path)
    (tmp_path / "crf.npz").unlink()
    with pytest.raises(PolicyFileError, match="missing .*crf.npz"):
        load_policy(tmp_path)


def test_load_invalid_crf_model_with_matching_sha(fitted, tmp_path):
    fitted["crf"].save(tmp_path, IDENTITY)
    replace_part(tmp_path, "crf.npz", b"not a crf model" * 10)
    with pytest.raises(PolicyFileError, match="not a readable archive"):
        load_policy(tmp_path)


def test_load_garbage_skops_file(fitted, tmp_path):
    fitted["svm"].save(tmp_path, IDENTITY)
    replace_part(tmp_path, "svm.skops", b"\x00garbage" * 20)
    with pytest.raises(PolicyFileError, match="svm.skops is not a readable archive"):
        load_policy(tmp_path)


def test_a_part_from_another_save_is_refused(data, tmp_path):
    # An interrupted retrain used to leave a new svm.skops beside the old config.json.
    X, y = data
    SVMPolicy().fit(X, y).save(tmp_path / "a", IDENTITY)
    SVMPolicy(C=0.01).fit(X[::-1], y[::-1]).save(tmp_path / "b", IDENTITY)
    (tmp_path / "a" / "svm.skops").write_bytes((tmp_path / "b" / "svm.skops").read_bytes())
    with pytest.raises(PolicyFileError, match="from another save"):
        load_policy(tmp_path / "a")


class Untrusted:
    pass


def test_load_skops_with_untrusted_type(fitted, tmp_path):
    fitted["svm"].save(tmp_path, IDENTITY)
    skops.io.dump(Untrusted(), tmp_path / "untrusted.skops")
    replace_part(tmp_path, "svm.skops", (tmp_path / "untrusted.skops").read_bytes())
    with pytest.raises(PolicyFileError, match="Untrusted"):
        load_policy(tmp_path)


def test_load_skops_with_wrong_sklearn_model(data, tmp_path):
    X, y = data
    SVMPolicy().fit(X, y).save(tmp_path, IDENTITY)
    skops.io.dump(LogisticRegression().fit(X.reshape(-1, 2), y.ravel()), tmp_path / "other.skops")
    replace_part(tmp_path, "svm.skops", (tmp_path / "other.skops").read_bytes())
    with pytest.raises(PolicyFileError, match="does not hold a fitted StandardScaler"):
        load_policy(tmp_path)


def test_every_policy_class_of_the_package_is_a_kind_load_policy_knows():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = {cls for cls in subclasses(StopPolicy) if cls.__module__.startswith("adainfer.policies.")}
    assert {cls.kind: cls for cls in ours} == POLICY_KINDS
    assert set(POLICY_KINDS) == {"svm", "crf", "gap", "calibrated-svm", "calibrated-gbt"}
