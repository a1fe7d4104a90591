"""Synthetic traces for the report tests: no model, a learnable signal, known answers."""

import numpy as np

from adainfer.eval.traces import Collection
from adainfer.eval.harness import Setting, SettingData

LAYERS = 6

NAMES = ("gap", "top_prob", "depth", "cos_attn", "cos_mlp", "cos_hidden", "agree_prev")

IDENTITY = {"architecture": "Toy", "num_layers": LAYERS, "hidden_size": 64, "vocab_size": 100, "head_sha256": "0"}



def synthetic(prompts: int, seed: int, settle: int = 3) -> Collection:
    """Traces whose top-1 becomes the gold token (7) at layer `settle` or later, and gap jumps with it."""
    rng = np.random.default_rng(seed)
    settles = rng.integers(settle, LAYERS + 1, size=prompts)
    layer = np.arange(1, LAYERS + 1)
    right = layer[None, :] >= settles[:, None]
    top1 = np.where(right, 7, 3)
    features = rng.uniform(0, 0.3, size=(prompts, LAYERS, len(NAMES))).astype(np.float32)
    features[..., 0] += 0.6 * right  # gap
    features[..., 2] = layer / LAYERS  # depth
    return Collection(features=features, labels=right.astype(np.int64), top1=top1, gold=np.full(prompts, 7),
                      seq_len=np.full(prompts, 20), feature_names=NAMES, model_identity=IDENTITY)


def setting(task: str, shots: int, seed: int = 0) -> SettingData:
    return SettingData(Setting(task, shots), "toys", synthetic(40, seed), synthetic(30, seed + 100))
