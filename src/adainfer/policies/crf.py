"""A linear-chain CRF over each prompt's layer sequence, decided online on prefixes (paper App. C)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sklearn_crfsuite
from sklearn.utils.validation import check_is_fitted

from adainfer.policies.base import (PolicyFileError, StopPolicy, check_both_classes, check_features, check_number,
                                    check_trace, check_X, check_y, read_npz_arrays)

CRF_FILE = "crf.npz"
_CRF_BIAS = "_bias"  # crfsuite float features have no intercept of their own
_LABELS = ("0", "1")


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

    crfsuite only trains. The learned weights are kept as two arrays, `state_weights_`
    (n_features + 1, 2): one row per feature then the bias, one column per label 0/1, and
    `transition_weights_` (2, 2) [previous label, label]; decoding is a numpy forward pass over
    them, so a saved policy is plain arrays (`crf.npz`) and no file ever reaches crfsuite's C loader.
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

    def check_params(self) -> None:
        check_features(self.features)
        check_number("c1", self.c1, minimum=0)
        check_number("c2", self.c2, minimum=0)
        check_number("max_iterations", self.max_iterations, minimum=1, integer=True)

    def fit(self, X: Any, y: Any) -> CRFPolicy:
        """Fit on every prefix 1..l of every layer sequence (l = 1..n_layers), the sequences
        `predict` decodes; labels become the crfsuite strings "0"/"1"."""
        self.check_params()
        names = check_features(self.features)
        X = check_X(X, len(names))
        y = check_y(y, X)
        check_both_classes(y)
        with tempfile.TemporaryDirectory() as tmp:
            crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=self.c1, c2=self.c2,
                                       max_iterations=self.max_iterations,
                                       model_filename=str(Path(tmp) / "crf.crfsuite"))
            items, labels = [], []
            for seq, seq_labels in zip(X, y):
                seq_items, seq_tags = self._items(seq), [str(v) for v in seq_labels]
                for end in range(1, len(seq_items) + 1):
                    items.append(seq_items[:end])
                    labels.append(seq_tags[:end])
            crf.fit(items, labels)
            attributes = [*names, _CRF_BIAS]
            self.state_weights_ = np.array([[crf.state_features_.get((attribute, label), 0.0) for label in _LABELS]
                                            for attribute in attributes], dtype=np.float64)
            self.transition_weights_ = np.array([[crf.transition_features_.get((previous, label), 0.0)
                                                  for label in _LABELS] for previous in _LABELS], dtype=np.float64)
        self.n_layers_ = X.shape[1]
        self.n_features_in_ = X.shape[2]
        self._learn_first_check(X)
        return self

    def last_label_log_odds(self, X: Any) -> np.ndarray:
        """log P(y_l = 1 | layers 1..l) - log P(y_l = 0 | layers 1..l) for every prefix, (n_prompts, n_layers).

        The forward pass over a whole sequence holds every prefix's forward scores, and the
        backward scores of a prefix's last label are all 1, so its marginal is the normalised
        forward score at l: one pass gives the online decision at every layer.
        """
        check_is_fitted(self)
        X = check_X(X, self.n_features_in_)
        state = X @ self.state_weights_[:-1] + self.state_weights_[-1]  # (prompts, layers, 2)
        log_odds = np.empty(X.shape[:2])
        alpha = state[:, 0]
        log_odds[:, 0] = alpha[:, 1] - alpha[:, 0]
        for layer in range(1, X.shape[1]):
            scores = alpha[:, :, None] + self.transition_weights_[None]  # [prompt, previous, label]
            alpha = np.logaddexp(scores[:, 0], scores[:, 1]) + state[:, layer]
            log_odds[:, layer] = alpha[:, 1] - alpha[:, 0]
        return log_odds

    def predict(self, X: Any) -> np.ndarray:
        """Online exit decisions, shape (n_prompts, n_layers): P(y_l = 1 | layers 1..l) > 0.5."""
        return (self.last_label_log_odds(X) > 0).astype(np.int64)

    def should_exit(self, trace: Any) -> bool:
        """Decision after the last layer of ``trace`` (n_layers_so_far, n_features)."""
        check_is_fitted(self)
        trace = check_trace(trace, self.n_features_in_)
        return bool(self.last_label_log_odds(trace[None])[0, -1] > 0)

    def _save_state(self, directory: Path) -> dict:
        check_is_fitted(self)
        with open(directory / CRF_FILE, "wb") as stream:
            np.savez(stream, state_weights=self.state_weights_, transition_weights=self.transition_weights_)
        return {}

    def _load_state(self, directory: Path, config: dict) -> None:
        n_attributes = len(self.features) + 1
        arrays = read_npz_arrays(directory / CRF_FILE, {"state_weights": (n_attributes, 2),
                                                         "transition_weights": (2, 2)})
        self.state_weights_ = arrays["state_weights"]
        self.transition_weights_ = arrays["transition_weights"]
        self.n_features_in_ = len(self.features)
