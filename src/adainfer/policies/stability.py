"""Has the answer settled? Stability features a scorer derives from the trace rows it was shown.

A per-layer scorer on (gap, top_prob, agree_prev, depth) sees one layer at a time; it cannot tell
a gap that has been large for five layers from one that jumped there just now. These columns say
it, for a closed answer set (`cand_gap`, `cand_agree_prev`) and the full lens (`gap`,
`agree_prev`) alike:

- `run_length`: layers in a row, ending here, with the same (candidate) top-1;
- `gap_change`: this layer's gap minus the previous checked layer's (0 at the first check);
- `gap_min3`: the smallest gap over the last three checked layers;
- `layer_<l>`: the layer as a category (one-hot over 1..L), so a learner can treat layer 3 and
  layer 13 as different kinds of evidence instead of points on a line.

They are computed from the rows the policy receives and nothing else: a walk hands a policy its
trace from the first checked layer on (`engine.walk`), and replay hands it the same window of a
full-depth trace (`decisions.scheduled_decisions`), so live and replayed decisions stay equal,
and a check reads no more lens than before. At the first checked layer the run length counts the
layer before it only through `agree_prev`, whose lens the walk already reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STABILITY_COLUMNS: tuple[str, ...] = ("run_length", "gap_change", "gap_min3")
# Per answer rule, the (gap, agreement) features the columns are derived from.
SOURCES: tuple[tuple[str, str], ...] = (("cand_gap", "cand_agree_prev"), ("gap", "agree_prev"))


def stability_sources(features: Sequence[str]) -> tuple[int, int, int]:
    """Column indices of (gap, agreement, depth) in `features`; ValueError when one is missing."""
    names = list(features)
    for gap, agree in SOURCES:
        if gap in names and agree in names and "depth" in names:
            return names.index(gap), names.index(agree), names.index("depth")
    raise ValueError(f"stability features need depth and a gap with its agreement ({' or '.join(' + '.join(s) for s in SOURCES)}); "
                     f"got {names}")


def stability_names(num_layers: int) -> tuple[str, ...]:
    """Names of the derived columns, in order, for a model of `num_layers` layers."""
    return (*STABILITY_COLUMNS, *(f"layer_{layer}" for layer in range(1, num_layers + 1)))


def with_stability(X: np.ndarray, features: Sequence[str], num_layers: int) -> np.ndarray:
    """X (prompts, reads, n_features), whose first row per prompt is the first checked layer, with
    the stability columns appended: (prompts, reads, n_features + 3 + num_layers), float64.

    Row t depends on rows 0..t only, so a live trace and a replayed window give the same rows.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3 or X.shape[2] != len(features):
        raise ValueError(f"X must be (prompts, reads, {len(features)}); got {X.shape}")
    gap_index, agree_index, depth_index = stability_sources(features)
    gap, agree = X[..., gap_index], X[..., agree_index] > 0.5
    run = np.empty_like(gap)
    run[:, 0] = 1 + agree[:, 0]
    for read in range(1, X.shape[1]):
        run[:, read] = np.where(agree[:, read], run[:, read - 1] + 1, 1)
    change = np.zeros_like(gap)
    change[:, 1:] = gap[:, 1:] - gap[:, :-1]
    lowest = gap.copy()
    lowest[:, 1:] = np.minimum(lowest[:, 1:], gap[:, :-1])
    lowest[:, 2:] = np.minimum(lowest[:, 2:], gap[:, :-2])
    layer = np.clip(np.rint(X[..., depth_index] * num_layers).astype(np.int64), 1, num_layers)
    one_hot = (layer[..., None] == np.arange(1, num_layers + 1)).astype(np.float64)
    return np.concatenate([X, run[..., None], change[..., None], lowest[..., None], one_hot], axis=-1)
