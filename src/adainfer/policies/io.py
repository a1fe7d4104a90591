"""Loading saved policies: every kind `load_policy` can rebuild, listed here, and the checks it makes.

`StopPolicy.save` writes a directory of ``config.json`` plus the kind's model file; `load_policy`
reads it back, refusing a broken directory (`PolicyFileError`) or one saved for another model
(`PolicyMismatchError`) before the policy is used. Every field of ``config.json`` is checked, and
every other part must carry the sha256 recorded there: a part from another save is refused. A new kind of policy is one entry in
`POLICY_KINDS`: nothing registers itself on import.
"""

from __future__ import annotations

import json
from pathlib import Path

from adainfer.engine.schedule import check_first_check
from adainfer.policies.base import (CONFIG_NAME, PolicyFileError, PolicyMismatchError, StopPolicy, check_features,
                                    file_sha256)
from adainfer.policies.calibrated import CalibratedPolicy
from adainfer.policies.calibrated_trees import TREES_FILE, CalibratedTreePolicy
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.svm import SVMPolicy

POLICY_KINDS: dict[str, type[StopPolicy]] = {
    policy.kind: policy for policy in (SVMPolicy, CRFPolicy, GapThresholdPolicy, CalibratedPolicy, CalibratedTreePolicy)
}
# The files besides config.json each kind saves; config.json must hold the sha256 of each.
POLICY_PARTS: dict[str, tuple[str, ...]] = {"svm": ("svm.skops",), "calibrated-svm": ("svm.skops",),
                                            "crf": ("crf.npz",), "gap": (),
                                            "calibrated-gbt": (TREES_FILE,)}
# Parts any kind may carry besides its own: a fitted classifier's card (`adainfer.fit.card`) and
# its calibration arrays (`adainfer.fit.calibration_arrays`, which `adainfer verify` reads).
OPTIONAL_PARTS: tuple[str, ...] = ("card.json", "card.md", "calibration.npz")


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise PolicyFileError(f"policy directory {directory} does not exist")
    if not path.is_file():
        raise PolicyFileError(f"missing {path}")
    if path.stat().st_size > 2**24:
        raise PolicyFileError(f"{path} is {path.stat().st_size} bytes; a policy's config is a few kilobytes")
    try:
        config = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, NaN
        raise PolicyFileError(f"{path} is not valid JSON: {error}") from None
    keys = ("kind", "params", "features", "model_identity", "n_layers", "parts")
    if isinstance(config, dict) and "parts" not in config and "kind" in config:
        raise PolicyFileError(f"{path} records no hashes of its parts: saved by an older adainfer (whose CRF "
                              f"was a crfsuite file, which is never read now); train it again")
    if (not isinstance(config, dict) or any(k not in config for k in keys)
            or not isinstance(config["params"], dict)
            or not isinstance(config["model_identity"], dict)):
        raise PolicyFileError(f"{path} must be an object with keys {', '.join(keys)} "
                              f"(params and model_identity objects)")
    if not isinstance(config["kind"], str) or config["kind"] not in POLICY_KINDS:
        raise PolicyFileError(f"{path}: unknown policy kind {config['kind']!r}; "
                              f"known: {', '.join(sorted(POLICY_KINDS))}")
    try:
        _check_fields(config)
    except (TypeError, ValueError) as error:
        raise PolicyFileError(f"{path}: {error}") from None
    _check_parts(directory, config)
    return config


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_fields(config: dict) -> None:
    """Every field `load_policy` reads has the type and range it needs (ValueError names the first bad one)."""
    check_features(config["features"])
    layers = config["n_layers"]
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 2):
        raise ValueError(f"n_layers must be an integer >= 2 or null; got {layers!r}")
    if "first_check" in config:
        if layers is None:
            raise ValueError("first_check needs n_layers")
        check_first_check(config["first_check"], layers)
    candidates = config.get("candidate_ids")
    if candidates is not None and (not isinstance(candidates, list) or not candidates
                                   or len(set(candidates)) != len(candidates)
                                   or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                              for i in candidates)):
        raise ValueError(f"candidate_ids must be null or distinct token ids; got {candidates!r}")
    parts = config["parts"]
    if not isinstance(parts, dict) or not all(isinstance(v, str) for v in parts.values()):
        raise ValueError("parts must be an object of file name -> sha256")


def _check_parts(directory: Path, config: dict) -> None:
    """Each part the kind reads is listed in config.json and has the recorded sha256."""
    expected = POLICY_PARTS[config["kind"]]
    optional = [name for name in config["parts"] if name in OPTIONAL_PARTS]
    if sorted(set(config["parts"]) - set(optional)) != sorted(expected):
        raise PolicyFileError(f"{directory / CONFIG_NAME}: parts {sorted(config['parts'])} should be "
                              f"{list(expected)} (and optionally {', '.join(OPTIONAL_PARTS)}) for a "
                              f"{config['kind']} policy")
    for name in (*expected, *optional):
        path = directory / name
        if not path.is_file():
            raise PolicyFileError(f"missing {path}")
        digest = file_sha256(path)
        if digest != config["parts"][name]:
            raise PolicyFileError(f"{path} is corrupted or from another save: sha256 {digest} != "
                                  f"{config['parts'][name]} recorded in {CONFIG_NAME}")


def _check_identity(saved: dict, expected: dict, directory: Path) -> None:
    expected = json.loads(json.dumps(expected))  # compare as stored (tuples -> lists, ...)
    missing = "<missing>"
    diffs = [f"{key}: saved {saved.get(key, missing)!r}, expected {expected.get(key, missing)!r}"
             for key in sorted(saved.keys() | expected.keys())
             if saved.get(key, missing) != expected.get(key, missing)]
    if diffs:
        raise PolicyMismatchError(f"policy in {directory} was trained for another model: "
                                  + "; ".join(diffs))


def load_policy(directory: str | Path, expected_identity: dict | None = None) -> StopPolicy:
    """Load a policy written by ``save``; fail before use if it is broken or for another model.

    Raises PolicyFileError for a missing/corrupt/untrusted directory and PolicyMismatchError
    when ``expected_identity`` differs from the saved ``model_identity``.
    """
    directory = Path(directory)
    config = _read_config(directory)
    if expected_identity is not None:
        _check_identity(config["model_identity"], expected_identity, directory)
    cls = POLICY_KINDS[config["kind"]]
    params = dict(config["params"])
    try:
        if "features" in params:
            params["features"] = tuple(params["features"])
        policy = cls(**cls._params_from_config(params))
        policy.check_params()
    except (TypeError, ValueError, AttributeError) as error:
        raise PolicyFileError(f"{directory / CONFIG_NAME}: bad params for {cls.__name__}: "
                              f"{error}") from None
    if list(policy.features) != config["features"]:
        raise PolicyFileError(f"{directory / CONFIG_NAME}: features {config['features']} do not "
                              f"match params {list(policy.features)}")
    policy._load_state(directory, config)
    if config["n_layers"] is not None:
        policy.n_layers_ = config["n_layers"]
        if "first_check" in config:  # older policies have none: they check every layer
            policy.first_check_ = config["first_check"]
    policy.candidate_ids_ = tuple(config.get("candidate_ids") or ())
    return policy
