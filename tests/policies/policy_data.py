"""Synthetic per-layer features for the policy tests: labels flip 0 -> 1 at a random layer."""

import numpy as np

IDENTITY = {"name": "tiny-model", "n_layers": 12, "head_sha256": "abc"}

KINDS = ["svm", "crf", "gap"]



def make_data(n_prompts: int = 40, n_layers: int = 12, seed: int = 0):
    """Label flips 0 -> 1 at a random layer; gap and top_prob jump up from that layer on."""
    rng = np.random.default_rng(seed)
    flip = rng.integers(2, n_layers - 2, size=n_prompts)
    y = (np.arange(n_layers)[None, :] >= flip[:, None]).astype(int)
    gap = np.where(y == 1, rng.uniform(0.82, 0.99, y.shape), rng.uniform(0.0, 0.45, y.shape))
    top_prob = np.clip(gap + rng.uniform(0.0, 0.1, y.shape), 0, 1)
    return np.stack([gap, top_prob], axis=-1), y


def columns(kind: str, X: np.ndarray) -> np.ndarray:
    return X[..., :1] if kind == "gap" else X
