"""The one contract between the engine and a stop policy, stated where the engine can see it.

The engine sits below `adainfer.policies`, so it cannot import `StopPolicy`; this Protocol says
what the walk, the check schedule and replay ask of any policy, and `StopPolicy` keeps it (a
test checks every kind against it). Type checkers then see the seam that `Any` used to hide.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class StopRule(Protocol):
    """What a stop policy must offer. A learned check schedule (`first_check_`, the first layer
    to ask) is optional and read with `engine.schedule.policy_first_check`."""

    features: tuple[str, ...]  # the feature columns it reads, in order

    def should_exit(self, trace: np.ndarray) -> bool:
        """Stop after the last row of `trace` (layers checked so far, n_features)? What a live walk asks."""
        ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Decisions (prompts, layers) on features X (prompts, layers, n_features): what replay asks."""
        ...
