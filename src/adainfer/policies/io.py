"""Loading saved policies: every kind `load_policy` can rebuild, listed here, and the checks it makes.

`StopPolicy.save` writes a directory of ``config.json`` plus the kind's model file; `load_policy`
reads it back, refusing a broken directory (`PolicyFileError`) or one saved for another model
(`PolicyMismatchError`) before the policy is used. A new kind of policy is one entry in
`POLICY_KINDS`: nothing registers itself on import.
"""

from __future__ import annotations

import json
from pathlib import Path

from adainfer.engine.schedule import check_first_check
from adainfer.policies.base import CONFIG_NAME, PolicyFileError, PolicyMismatchError, StopPolicy
from adainfer.policies.calibrated import CalibratedPolicy
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.svm import SVMPolicy

POLICY_KINDS: dict[str, type[StopPolicy]] = {
    policy.kind: policy for policy in (SVMPolicy, CRFPolicy, GapThresholdPolicy, CalibratedPolicy)
}


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise PolicyFileError(f"policy directory {directory} does not exist")
    if not path.is_file():
        raise PolicyFileError(f"missing {path}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PolicyFileError(f"{path} is not valid JSON: {error}") from None
    keys = ("kind", "params", "features", "model_identity", "n_layers")
    if (not isinstance(config, dict) or any(k not in config for k in keys)
            or not isinstance(config["params"], dict)
            or not isinstance(config["model_identity"], dict)):
        raise PolicyFileError(f"{path} must be an object with keys {', '.join(keys)} "
                              f"(params and model_identity objects)")
    if not isinstance(config["kind"], str) or config["kind"] not in POLICY_KINDS:
        raise PolicyFileError(f"{path}: unknown policy kind {config['kind']!r}; "
                              f"known: {', '.join(sorted(POLICY_KINDS))}")
    return config


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
    except (TypeError, ValueError) as error:
        raise PolicyFileError(f"{directory / CONFIG_NAME}: bad params for {cls.__name__}: "
                              f"{error}") from None
    if list(policy.features) != config["features"]:
        raise PolicyFileError(f"{directory / CONFIG_NAME}: features {config['features']} do not "
                              f"match params {list(policy.features)}")
    policy._load_state(directory, config)
    if config["n_layers"] is not None:
        policy.n_layers_ = config["n_layers"]
        if "first_check" in config:  # older policies have none: they check every layer
            try:
                policy.first_check_ = check_first_check(config["first_check"], config["n_layers"])
            except ValueError as error:
                raise PolicyFileError(f"{directory / CONFIG_NAME}: {error}") from None
    return policy
