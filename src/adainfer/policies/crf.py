"""A linear-chain CRF over each prompt's layer sequence, decided online on prefixes (paper App. C)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pycrfsuite
import sklearn_crfsuite
from sklearn.utils.validation import check_is_fitted

from adainfer.policies.base import (CONFIG_NAME, PolicyFileError, StopPolicy, check_both_classes, check_features,
                                    check_trace, check_X, check_y)

CRF_FILE = "crf.crfsuite"
_CRF_BIAS = "_bias"  # crfsuite float features have no intercept of their own


class CRFPolicy(StopPolicy):
    """Linear-chain CRF over each prompt's layer sequence (App. C's alternative to the SVM).

    Early exit decides at layer l from layers 1..l alone, so the CRF is trained and decoded on
    prefixes: `fit` learns from every prefix 1..l of every training sequence, and the decision at
    layer l is P(y_l = 1 | layers 1..l) > 0.5, the marginal of the prefix's last label (a decision
    about that one label; the Viterbi path answers a question about the whole prefix). Later
    layers can never change an earlier decision.

    Why prefixes (benchmarks/results/crf_online_offline.md): crfsuite has no start or end
    transitions, so the last label of a prefix is scored by its state features and its incoming
    transition alone. Trained on whole sequences, the CRF kept "early layers are wrong" in the
    1 -> 0 transition (-3.0 on Gemma 3 270M 5-shot SST-2), which a prefix's last label never
    meets: layer 1 alone scored 0.24 higher as 1 than as 0 from its confident junk (mean gap 0.84),
    so the CRF exited there on all 200 eval prompts (-61 points), though its full-sequence path
    labels that layer 0 on every one. Trained on prefixes, it sees a sequence end at every depth.
    """

    kind = "crf"

    def __init__(self, features: Sequence[str] = ("gap", "top_prob"), c1: float = 0.1,
                 c2: float = 0.1, max_iterations: int = 100) -> None:
        self.features = features
        self.c1 = c1
        self.c2 = c2
        self.max_iterations = max_iterations

    def _items(self, rows: np.ndarray) -> list[dict[str, float]]:
        names = self.features
        return [{_CRF_BIAS: 1.0, **dict(zip(names, row))} for row in rows.tolist()]

    def fit(self, X: Any, y: Any) -> CRFPolicy:
        """Fit on every prefix 1..l of every layer sequence (l = 1..n_layers), the sequences
        `predict` decodes; labels become the crfsuite strings "0"/"1"."""
        X = check_X(X, len(check_features(self.features)))
        y = check_y(y, X)
        check_both_classes(y)
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / CRF_FILE
            crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=self.c1, c2=self.c2,
                                       max_iterations=self.max_iterations,
                                       model_filename=str(model_path))
            items, labels = [], []
            for seq, seq_labels in zip(X, y):
                seq_items, seq_tags = self._items(seq), [str(v) for v in seq_labels]
                for end in range(1, len(seq_items) + 1):
                    items.append(seq_items[:end])
                    labels.append(seq_tags[:end])
            crf.fit(items, labels)
            model_bytes = model_path.read_bytes()
        self._open_tagger(model_bytes)
        self.n_layers_ = X.shape[1]
        self.n_features_in_ = X.shape[2]
        self._learn_first_check(X)
        return self

    def _open_tagger(self, model_bytes: bytes) -> None:
        tagger = pycrfsuite.Tagger()
        tagger.open_inmemory(model_bytes)  # ValueError on an invalid model
        if sorted(tagger.labels()) != ["0", "1"]:
            raise ValueError(f"CRF model labels are {tagger.labels()}, expected ['0', '1']")
        self.model_bytes_ = model_bytes  # crfsuite reads from this buffer: keep it alive
        self._tagger = tagger

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # may be the live __dict__: never mutate it
        state.pop("_tagger", None)  # a C object; rebuilt from model_bytes_ (deepcopy, clone)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "model_bytes_" in state:
            self._open_tagger(state["model_bytes_"])

    def predict(self, X: Any) -> np.ndarray:
        """Online exit decisions, shape (n_prompts, n_layers): one prefix tagged per layer."""
        check_is_fitted(self)
        X = check_X(X, self.n_features_in_)
        decisions = np.empty(X.shape[:2], dtype=np.int64)
        for prompt, seq in enumerate(X):
            items = self._items(seq)
            for layer in range(len(items)):
                decisions[prompt, layer] = self._exit_last(items[: layer + 1])
        return decisions

    def should_exit(self, trace: Any) -> bool:
        """Decision after the last layer of ``trace`` (n_layers_so_far, n_features)."""
        check_is_fitted(self)
        trace = check_trace(trace, self.n_features_in_)
        return self._exit_last(self._items(trace))

    def _exit_last(self, items: list[dict[str, float]]) -> bool:
        """P(last label = 1 | items) > 0.5, by forward-backward over the prefix ``items``."""
        self._tagger.set(items)
        return self._tagger.marginal("1", len(items) - 1) > 0.5

    def _save_state(self, directory: Path) -> dict:
        check_is_fitted(self)
        (directory / CRF_FILE).write_bytes(self.model_bytes_)
        return {"crf_sha256": hashlib.sha256(self.model_bytes_).hexdigest()}

    def _load_state(self, directory: Path, config: dict) -> None:
        path = directory / CRF_FILE
        if not path.is_file():
            raise PolicyFileError(f"missing {path}")
        model_bytes = path.read_bytes()
        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest != config.get("crf_sha256"):
            raise PolicyFileError(f"{path} is corrupted: sha256 {digest} != "
                                  f"{config.get('crf_sha256')} recorded in {CONFIG_NAME}")
        try:
            self._open_tagger(model_bytes)
        except ValueError as error:
            raise PolicyFileError(f"cannot open {path}: {error}") from None
        self.n_features_in_ = len(self.features)
