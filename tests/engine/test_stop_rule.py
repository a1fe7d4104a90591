"""Every policy kind keeps the engine's contract (`engine.stop_rule.StopRule`), and a stranger does not."""

import pytest

from adainfer.engine.stop_rule import StopRule
from adainfer.policies.io import POLICY_KINDS


@pytest.mark.parametrize("kind", sorted(POLICY_KINDS))
def test_every_policy_kind_is_a_stop_rule(kind):
    assert isinstance(POLICY_KINDS[kind](), StopRule)


def test_an_object_without_should_exit_is_not():
    class FeaturesOnly:
        features = ("gap",)

        def predict(self, X):
            return X

    assert not isinstance(FeaturesOnly(), StopRule)
