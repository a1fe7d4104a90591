"""Gradient-boosted trees as plain arrays: fitted by scikit-learn, evaluated and saved without it.

A boosted ensemble is a few hundred (node -> child, feature, threshold, value) rows. Kept as
float arrays it saves to an `.npz` read with ``allow_pickle=False`` (no trusted-type list to get
wrong, nothing unpickled), and one row's score is a few numpy steps, cheap enough to ask after
every checked layer. `TreeEnsemble.check` refuses arrays a crafted file could use to loop or
index out of bounds: every child comes after its parent, so a walk down a tree always ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

ARRAYS: tuple[str, ...] = ("left", "right", "feature", "threshold", "value")


@dataclass
class TreeEnsemble:
    """`n_trees` regression trees of at most `max_nodes` nodes, each array (n_trees, max_nodes);
    the score of a row is `init` plus the value of the leaf it reaches in every tree.

    A node is a leaf when `left` is -1; an inner node sends a row left when
    ``float32(row[feature]) <= threshold`` (scikit-learn's rule, so scores match it exactly).
    """

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray
    init: float

    @classmethod
    def fit(cls, rows: np.ndarray, labels: np.ndarray, n_estimators: int, max_depth: int, learning_rate: float,
            seed: int = 0) -> "TreeEnsemble":
        """Boost trees on `rows` (n, n_features) and 0/1 `labels` (n,) with a fixed seed (deterministic)."""
        booster = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth,
                                             learning_rate=learning_rate, random_state=seed)
        booster.fit(rows.astype(np.float32), labels)
        trees = [estimator.tree_ for estimator in booster.estimators_[:, 0]]
        nodes = max(tree.node_count for tree in trees)
        shape = (len(trees), nodes)
        left, right, feature = np.full(shape, -1.0), np.full(shape, -1.0), np.full(shape, -2.0)
        threshold, value = np.zeros(shape), np.zeros(shape)
        for index, tree in enumerate(trees):
            count = tree.node_count
            left[index, :count], right[index, :count] = tree.children_left, tree.children_right
            feature[index, :count], threshold[index, :count] = tree.feature, tree.threshold
            value[index, :count] = learning_rate * tree.value[:, 0, 0]
        init = float(booster._raw_predict_init(rows[:1].astype(np.float32))[0, 0])
        return cls(left, right, feature, threshold, value, init)

    def check(self, n_features: int) -> str | None:
        """What is wrong with these arrays for rows of `n_features` columns, or None."""
        shape = self.left.shape
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            return f"trees have shape {shape}, expected (n_trees >= 1, max_nodes >= 1)"
        arrays = [getattr(self, name) for name in ARRAYS]
        if any(array.shape != shape or not np.isfinite(array).all() for array in arrays) or not np.isfinite(self.init):
            return "arrays of different shapes or non-finite values"
        if any((array != np.round(array)).any() for array in (self.left, self.right, self.feature)):
            return "child and feature indices must be whole numbers"
        node = np.arange(shape[1])[None, :]
        leaf = self.left == -1
        inner_ok = ((self.left > node) & (self.left < shape[1]) & (self.right > node) & (self.right < shape[1])
                    & (self.feature >= 0) & (self.feature < n_features))
        if not np.where(leaf, self.right == -1, inner_ok).all():
            return "a node's children must come after it and its feature must be one of the row's columns"
        return None

    def score(self, rows: np.ndarray) -> np.ndarray:
        """The boosted score (log-odds of "stable") of each row of (n, n_features) -> (n,)."""
        rows = np.asarray(rows, dtype=np.float32).astype(np.float64)
        trees = np.arange(self.left.shape[0])[None, :]
        node = np.zeros((rows.shape[0], self.left.shape[0]), dtype=np.int64)
        left, right = self.left.astype(np.int64), self.right.astype(np.int64)
        feature = np.maximum(self.feature.astype(np.int64), 0)
        for _ in range(self.left.shape[1]):  # each step goes one level down; children come after parents
            inner = left[trees, node] >= 0
            if not inner.any():
                break
            values = np.take_along_axis(rows, feature[trees, node], axis=1)
            goes_left = values <= self.threshold[trees, node]
            node = np.where(inner, np.where(goes_left, left[trees, node], right[trees, node]), node)
        return self.init + self.value[trees, node].sum(axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        """The node arrays to save (`init` goes to the config)."""
        return {name: getattr(self, name) for name in ARRAYS}
