"""Shared pieces of the fault suite: a rows file written by hand, and one saved policy of each kind."""

import json
from pathlib import Path

import numpy as np

from adainfer.policies.calibrated import CalibratedPolicy
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.svm import SVMPolicy

IDENTITY = {"architecture": "TinyForCausalLM", "num_layers": 8, "hidden_size": 16, "vocab_size": 100,
            "head_sha256": "0123456789abcdef"}
LAYERS = 8


def make_traces(n_prompts: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    flip = rng.integers(2, LAYERS - 1, size=n_prompts)
    y = (np.arange(LAYERS)[None, :] >= flip[:, None]).astype(int)
    gap = np.where(y == 1, rng.uniform(0.7, 0.99, y.shape), rng.uniform(0.0, 0.5, y.shape))
    top_prob = np.clip(gap + rng.uniform(0, 0.1, y.shape), 0, 1)
    return np.stack([gap, top_prob], axis=-1), y


def write_rows(path: Path, n_prompts: int = 30, seed: int = 0) -> Path:
    """A collection file as `collect` writes it, for verbs that need no model (`train`, `evaluate`)."""
    X, y = make_traces(n_prompts, seed)
    lines = [json.dumps({"adainfer_collection": 1, "model_identity": IDENTITY, "num_layers": LAYERS,
                         "feature_names": ["gap", "top_prob"]})]
    for prompt in range(n_prompts):
        for layer in range(LAYERS):
            top1 = 7 if y[prompt, layer] else 3
            lines.append(json.dumps({"prompt_index": prompt, "layer": layer + 1, "gap": round(X[prompt, layer, 0], 6),
                                     "top_prob": round(X[prompt, layer, 1], 6), "top1": top1, "gold": 7,
                                     "label": int(y[prompt, layer]), "seq_len": 10, "prompt_sha256": "0" * 64}))
    path.write_text("\n".join(lines) + "\n")
    return path


def fitted_policies():
    X, y = make_traces()
    top1 = np.where(y == 1, 7, np.arange(LAYERS)[None, :] + 20)
    return {"svm": SVMPolicy().fit(X, y), "crf": CRFPolicy().fit(X, y),
            "gap": GapThresholdPolicy().fit(X[..., :1], y),
            "calibrated-svm": CalibratedPolicy(features=("gap", "top_prob")).fit(X, top1)}
