"""A certified stop policy scored by gradient-boosted trees (`policies.trees`) instead of an SVM.

Same contract as `CalibratedPolicy` (label-free fit on the layers it will be asked at, a frozen
threshold grid, Learn then Test): only the scorer differs. Trees split on a layer category or a
run length as easily as on a gap, which is what the stability columns (`policies.stability`)
need; `fit.scorer_choice` decides per task, by cross-validation on the train split, whether they
beat the SVM. Saved as ``trees.npz`` (plain float arrays, ``allow_pickle=False``) whose shapes
and node links are checked before use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adainfer.policies.base import PolicyFileError, StopPolicy, check_features, check_number, read_npz_arrays
from adainfer.policies.calibrated import CalibratedScorer
from adainfer.policies.trees import ARRAYS, TreeEnsemble

TREES_FILE = "trees.npz"
MAX_TREES = 2000
MAX_NODES = 4096


class CalibratedTreePolicy(CalibratedScorer, StopPolicy):
    """Boosted trees (fixed seed, so a refit is the same policy) scoring stable layers, certified by `calibrate`."""

    kind = "calibrated-gbt"

    def __init__(self, features: Sequence[str] = ("gap", "top_prob", "agree_prev", "depth"), first_check: int = 1,
                 stability: bool = True, n_estimators: int = 100, max_depth: int = 3,
                 learning_rate: float = 0.1) -> None:
        self.features = features
        self.first_check = first_check
        self.stability = stability
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate

    def check_params(self) -> None:
        check_features(self.features)
        check_number("first_check", self.first_check, minimum=1, integer=True)
        check_number("n_estimators", self.n_estimators, minimum=1, integer=True)
        check_number("max_depth", self.max_depth, minimum=1, integer=True)
        check_number("learning_rate", self.learning_rate, minimum=1e-6)
        if not isinstance(self.stability, bool):
            raise ValueError(f"stability must be true or false; got {self.stability!r}")
        if self.n_estimators > MAX_TREES or 2 ** (self.max_depth + 1) > MAX_NODES:
            raise ValueError(f"at most {MAX_TREES} trees of depth <= {MAX_NODES.bit_length() - 2}")

    def _fit_scorer(self, rows: np.ndarray, labels: np.ndarray) -> None:
        self.trees_ = TreeEnsemble.fit(rows.reshape(-1, rows.shape[2]), labels.ravel(), self.n_estimators,
                                       self.max_depth, self.learning_rate)
        self.n_features_in_ = rows.shape[2]

    def _window_scores(self, X: np.ndarray) -> np.ndarray:
        rows = self._scorer_rows(X)
        return self.trees_.score(rows.reshape(-1, rows.shape[2])).reshape(rows.shape[:2])

    def _trace_score(self, trace: np.ndarray) -> float:
        return float(self.trees_.score(self._trace_rows(trace))[0])

    def _save_state(self, directory: Path) -> dict:
        np.savez(directory / TREES_FILE, **self.trees_.arrays())
        state = super()._save_state(directory)
        state["trees"] = {"n_trees": int(self.trees_.left.shape[0]), "max_nodes": int(self.trees_.left.shape[1]),
                          "init": self.trees_.init}
        return state

    def _load_state(self, directory: Path, config: dict) -> None:
        shape = config.get("trees")
        if not isinstance(shape, dict) or set(shape) != {"n_trees", "max_nodes", "init"}:
            raise PolicyFileError(f"{directory / 'config.json'}: trees must be an object of n_trees, max_nodes, init")
        try:
            check_number("n_trees", shape["n_trees"], minimum=1, integer=True)
            check_number("max_nodes", shape["max_nodes"], minimum=1, integer=True)
            check_number("init", shape["init"])
            if shape["n_trees"] > MAX_TREES or shape["max_nodes"] > MAX_NODES:
                raise ValueError(f"more than {MAX_TREES} trees or {MAX_NODES} nodes")
        except ValueError as error:
            raise PolicyFileError(f"{directory / 'config.json'}: bad trees: {error}") from None
        size = (shape["n_trees"], shape["max_nodes"])
        arrays = read_npz_arrays(directory / TREES_FILE, {name: size for name in ARRAYS})
        trees = TreeEnsemble(**arrays, init=float(shape["init"]))
        width = self._scorer_width(config)
        problem = trees.check(width)
        if problem:
            raise PolicyFileError(f"{directory / TREES_FILE}: {problem}")
        self.trees_, self.n_features_in_ = trees, width
        super()._load_state(directory, config)
