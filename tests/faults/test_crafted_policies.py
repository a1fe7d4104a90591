"""Crafted and truncated policy files of every kind: each is refused with one clean error, nothing crashes.

A crafted file comes with its sha256 rewritten in config.json, as whoever edits a policy can: the
hash only binds the parts of one save together; the structure checks are what stop a crafted part.
"""

import hashlib
import io
import json
import shutil
import zipfile

import numpy as np
import pytest
import skops.io
from cli_runner import assert_clean_error, invoke
from fault_data import IDENTITY, make_traces, write_rows
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from adainfer.policies.base import MAX_PART_BYTES, PolicyFileError
from adainfer.policies.io import load_policy


def set_part(directory, name, data: bytes) -> None:
    (directory / name).write_bytes(data)
    edit_config(directory, lambda config: config["parts"].__setitem__(name, hashlib.sha256(data).hexdigest()))


def edit_config(directory, change) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def crf_arrays(directory) -> dict:
    with np.load(directory / "crf.npz") as stored:
        return {name: stored[name] for name in stored.files}


def svm_pipeline(directory):
    return skops.io.load(directory / "svm.skops", trusted=skops.io.get_untrusted_types(file=directory / "svm.skops"))


def skops_bytes(pipeline) -> bytes:
    return skops.io.dumps(pipeline)


def inflating_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("state_weights.npy", b"\0" * (MAX_PART_BYTES + 1))
    return buffer.getvalue()


def wider_support(directory) -> bytes:
    pipeline = svm_pipeline(directory)
    svc = pipeline[-1]
    svc.support_vectors_ = np.hstack([svc.support_vectors_, svc.support_vectors_[:, :1]])
    return skops_bytes(pipeline)


def without_gamma(directory) -> bytes:
    pipeline = svm_pipeline(directory)
    del pipeline[-1]._gamma
    return skops_bytes(pipeline)


def nan_dual(directory) -> bytes:
    pipeline = svm_pipeline(directory)
    pipeline[-1].dual_coef_[0, 0] = np.nan
    return skops_bytes(pipeline)


def unfitted(directory) -> bytes:
    return skops_bytes(make_pipeline(StandardScaler(), SVC()))


def truncated(name):
    return lambda d: set_part(d, name, (d / name).read_bytes()[: len((d / name).read_bytes()) // 2])


CASES = {
    # kind, what is done to the saved directory, a word of the error
    "crf-truncated": ("crf", truncated("crf.npz"), "crf.npz"),
    "crf-pickled-object-array": ("crf", lambda d: set_part(d, "crf.npz", npz_bytes(
        state_weights=np.array([object()] * 6, dtype=object).reshape(3, 2), transition_weights=np.zeros((2, 2)))),
        "crf.npz"),
    "crf-wrong-shape": ("crf", lambda d: set_part(d, "crf.npz", npz_bytes(
        state_weights=np.zeros((5, 2)), transition_weights=np.zeros((2, 2)))), "shape (3, 2)"),
    "crf-nan-weight": ("crf", lambda d: set_part(d, "crf.npz", npz_bytes(
        state_weights=np.full((3, 2), np.nan), transition_weights=np.zeros((2, 2)))), "finite"),
    "crf-extra-array": ("crf", lambda d: set_part(d, "crf.npz", npz_bytes(**crf_arrays(d), extra=np.zeros(1))),
                        "holds arrays"),
    "crf-zip-bomb": ("crf", lambda d: set_part(d, "crf.npz", inflating_zip()), "inflate"),
    "crf-old-crfsuite-file": ("crf", lambda d: ((d / "crf.crfsuite").write_bytes(b"lCRF" + b"\xff" * 64),
                                                edit_config(d, lambda c: c.pop("parts"))), "parts"),
    "svm-truncated": ("svm", truncated("svm.skops"), "svm.skops"),
    "svm-support-vectors-wrong-width": ("svm", lambda d: set_part(d, "svm.skops", wider_support(d)), "support_vectors_"),
    "svm-without-gamma": ("svm", lambda d: set_part(d, "svm.skops", without_gamma(d)), "_gamma"),
    "svm-nan-dual-coef": ("svm", lambda d: set_part(d, "svm.skops", nan_dual(d)), "NaN"),
    "svm-unfitted-pipeline": ("svm", lambda d: set_part(d, "svm.skops", unfitted(d)), "mean_"),
    "svm-zip-bomb": ("svm", lambda d: set_part(d, "svm.skops", inflating_zip()), "inflate"),
    "svm-part-of-another-save": ("svm", lambda d: (d / "svm.skops").write_bytes(unfitted(d)), "another save"),
    "calibrated-truncated": ("calibrated-svm", truncated("svm.skops"), "svm.skops"),
    "calibrated-grid-ascending": ("calibrated-svm", lambda d: edit_config(
        d, lambda c: c["calibration"].__setitem__("threshold_grid", [0.0, 1.0])), "descending"),
    "calibrated-threshold-text": ("calibrated-svm", lambda d: edit_config(
        d, lambda c: c["calibration"].__setitem__("threshold", "abc")), "threshold"),
    "calibrated-config-damaged": ("calibrated-svm", lambda d: edit_config(
        d, lambda c: c.__setitem__("calibration", [1, 2])), "calibration"),
    "gap-threshold-text": ("gap", lambda d: edit_config(d, lambda c: c["params"].__setitem__("threshold", "abc")),
                           "threshold"),
    "gap-threshold-nan": ("gap", lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"threshold": 0.8', '"threshold": NaN')), "NaN"),
    "svm-repeated-features": ("svm", lambda d: edit_config(d, lambda c: (c.__setitem__("features", ["gap", "gap"]),
                                                                         c["params"].__setitem__("features", ["gap", "gap"]))),
                              "unique"),
    "svm-n-layers-text": ("svm", lambda d: edit_config(d, lambda c: c.__setitem__("n_layers", "8")), "n_layers"),
    "svm-first-check-past-the-end": ("svm", lambda d: edit_config(d, lambda c: c.__setitem__("first_check", 99)),
                                     "first_check"),
    "svm-candidate-ids-text": ("svm", lambda d: edit_config(d, lambda c: c.__setitem__("candidate_ids", "ab")),
                               "candidate_ids"),
    "svm-kernel-unknown": ("svm", lambda d: edit_config(d, lambda c: c["params"].__setitem__("kernel", "magic")),
                           "kernel"),
    "crf-config-truncated": ("crf", lambda d: (d / "config.json").write_bytes((d / "config.json").read_bytes()[:40]),
                             "not valid JSON"),
    "gap-config-deeply-nested": ("gap", lambda d: (d / "config.json").write_text("[" * 100000 + "]" * 100000),
                                 "config.json"),
}


@pytest.fixture
def copy_of(saved_policies, tmp_path):
    def copy(kind):
        target = tmp_path / kind
        shutil.copytree(saved_policies[kind], target)
        return target
    return copy


def test_every_kind_loads_before_it_is_crafted(saved_policies):
    X = make_traces(seed=3)[0]
    for kind, directory in saved_policies.items():
        policy = load_policy(directory, IDENTITY)
        policy.predict(X[..., :1] if kind == "gap" else X)


@pytest.mark.parametrize("case", CASES)
def test_a_crafted_policy_is_refused(copy_of, case):
    kind, craft, keyword = CASES[case]
    directory = copy_of(kind)
    craft(directory)
    with pytest.raises(PolicyFileError) as raised:
        load_policy(directory, IDENTITY)
    assert keyword in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("case", ["crf-truncated", "crf-pickled-object-array", "svm-without-gamma",
                                  "calibrated-config-damaged", "gap-threshold-text", "svm-unfitted-pipeline"])
def test_a_crafted_policy_is_one_error_line_on_the_command_line(copy_of, tmp_path, case):
    kind, craft, keyword = CASES[case]
    directory = copy_of(kind)
    craft(directory)
    rows = write_rows(tmp_path / "rows.jsonl")
    assert_clean_error(invoke("evaluate", rows, "--policy", directory), keyword)
