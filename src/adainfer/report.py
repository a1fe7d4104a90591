"""Score stop policies on collected settings: the rows behind the paper's tables.

Every function here replays policies over traces collected by `adainfer.harness`, so a table
costs no model time. A row is a flat dict (task, shots, method, and `PolicyReport`'s figures)
ready for a pandas DataFrame. A policy that cannot be trained on a setting (its train split never
has the gold token on top, so every label is 0) gives a row with its reason instead of figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from adainfer.collect import Collection
from adainfer.evaluate import evaluate_policy, oracle_exit_layers
from adainfer.features import PAPER_FEATURES
from adainfer.harness import SettingData
from adainfer.policies import CRFPolicy, GapThresholdPolicy, SVMPolicy, StopPolicy


@dataclass(frozen=True)
class Method:
    """A named way to build an untrained stop policy."""

    name: str
    make: Callable[[], StopPolicy]


PAPER_METHODS: tuple[Method, ...] = (
    Method("svm", lambda: SVMPolicy(PAPER_FEATURES)),
    Method("crf", lambda: CRFPolicy(PAPER_FEATURES)),
    Method("gap>0.8", lambda: GapThresholdPolicy(0.8)),
)
OUR_METHODS: tuple[Method, ...] = (
    Method("svm+depth", lambda: SVMPolicy((*PAPER_FEATURES, "depth"))),
)
# Paper Table 7: the base features, then each cosine similarity added in turn.
FACTOR_STUDY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gap, top_prob", PAPER_FEATURES),
    ("+ cos_attn", (*PAPER_FEATURES, "cos_attn")),
    ("+ cos_hidden", (*PAPER_FEATURES, "cos_attn", "cos_hidden")),
    ("+ cos_mlp", (*PAPER_FEATURES, "cos_attn", "cos_hidden", "cos_mlp")),
)


def _setting_columns(data: SettingData) -> dict[str, object]:
    return {"task": data.setting.name.split("/")[0], "group": data.group, "shots": data.setting.shots,
            "seed": data.setting.seed}


def score(policy: StopPolicy, train: Collection, evaluation: Collection) -> dict[str, object]:
    """Fit `policy` on `train` and replay it on `evaluation`; an untrainable policy gives its reason."""
    try:
        policy.fit(train.select(policy.features), train.labels)
    except ValueError as error:
        return {"error": str(error).splitlines()[0]}
    report = evaluate_policy(policy, evaluation).to_dict()
    oracle_saved = report["oracle_layers_saved"]
    report["saved_of_oracle"] = round(report["layers_saved"] / oracle_saved, 4) if oracle_saved > 0 else None
    return report


def dense_and_oracle(data: SettingData) -> list[dict[str, object]]:
    """The full model, and the oracle exit (earliest layer whose top-1 stays the final one)."""
    evaluation = data.eval
    cost_layers = evaluation.top1.shape[1]
    dense_correct = evaluation.top1[:, -1] == evaluation.gold
    oracle = oracle_exit_layers(evaluation.top1)
    common = {**_setting_columns(data), "prompts": len(evaluation),
              "dense_accuracy": round(float(dense_correct.mean()), 4)}
    layer_acc = (evaluation.top1 == evaluation.gold[:, None]).mean(axis=0)
    return [
        {**common, "method": "dense", "accuracy": common["dense_accuracy"], "accuracy_change": 0.0,
         "mean_exit_layer": float(cost_layers), "var_exit_layer": 0.0, "layers_saved": 0.0,
         "paper_flops_ratio": 1.0, "honest_flops_ratio": 1.0,
         "best_layer_accuracy": round(float(layer_acc.max()), 4)},
        {**common, "method": "oracle", "accuracy": common["dense_accuracy"], "accuracy_change": 0.0,
         "mean_exit_layer": round(float(oracle.mean()), 4), "var_exit_layer": round(float(oracle.var()), 4),
         "layers_saved": round(float(1 - oracle.mean() / cost_layers), 4), "saved_of_oracle": 1.0},
    ]


def setting_rows(data: SettingData, methods: Sequence[Method] = PAPER_METHODS + OUR_METHODS) -> list[dict]:
    """Dense, oracle and each method on one setting (Tables 2 and 3)."""
    rows = dense_and_oracle(data)
    for method in methods:
        rows.append({**_setting_columns(data), "method": method.name,
                     **score(method.make(), data.train, data.eval)})
    return rows


def factor_rows(data: SettingData) -> list[dict]:
    """SVM with the factor study's feature sets (Table 7)."""
    return [{**_setting_columns(data), "method": "svm", "features": label,
             **score(SVMPolicy(features), data.train, data.eval)} for label, features in FACTOR_STUDY]


def transfer_rows(sources: Sequence[SettingData], targets: Sequence[SettingData],
                  method: Method = PAPER_METHODS[0], label: str = "task") -> list[dict]:
    """A classifier trained on each source setting, replayed on every target (Tables 4 and 6).

    `label` names what varies ("task" or "model"); source and target share the feature columns
    the method reads, nothing else: the exit layers and answers are the target's own.
    """
    rows = []
    for source in sources:
        policy = method.make()
        try:
            policy.fit(source.train.select(policy.features), source.train.labels)
        except ValueError as error:
            rows.append({f"train_{label}": source.setting.name, "error": str(error).splitlines()[0]})
            continue
        for target in targets:
            report = evaluate_policy(policy, target.eval).to_dict()
            rows.append({f"train_{label}": source.setting.name, f"eval_{label}": target.setting.name,
                         "method": method.name, **report})
    return rows


def layer_accuracy(collection: Collection) -> np.ndarray:
    """Fraction of prompts whose top-1 at each layer is the gold first token: (layers,)."""
    return (collection.top1 == collection.gold[:, None]).mean(axis=0)
