"""Fixtures of the fault suite: each policy kind saved once per session."""

import sys
from pathlib import Path

import pytest
from fault_data import IDENTITY, fitted_policies


@pytest.fixture(scope="session")
def saved_policies(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    return {kind: policy.save(root / kind, IDENTITY) for kind, policy in fitted_policies().items()}


# The CLI helpers live beside the CLI tests; the fault suite checks the same one-line errors.
sys.path.insert(0, str(Path(__file__).parent.parent / "cli"))
