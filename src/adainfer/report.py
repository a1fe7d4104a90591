"""Score stop policies on collected settings: the rows behind the paper's tables.

Every function here replays policies over traces collected by `adainfer.harness`, so a table
costs no model time. A row is a flat dict (task, shots, method, and `PolicyReport`'s figures)
ready for a pandas DataFrame. A policy that cannot be trained on a setting (its train split never
has the gold token on top, so every label is 0) gives a row with its reason instead of figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from adainfer.calibration import CalibratedPolicy, exits_at, learn_then_test
from adainfer.collect import Collection
from adainfer.evaluate import (evaluate_decisions, evaluate_policy, first_accepted_layer, oracle_exit_layers,
                               reads_candidates_only, training_labels)
from adainfer.features import PAPER_FEATURES
from adainfer.harness import SettingData
from adainfer.policies import CRFPolicy, GapThresholdPolicy, SVMPolicy, StopPolicy


@dataclass(frozen=True)
class Method:
    """A named way to build an untrained stop policy; some need a closed answer set."""

    name: str
    make: Callable[[], StopPolicy]
    needs_candidates: bool = False


PAPER_METHODS: tuple[Method, ...] = (
    Method("svm", lambda: SVMPolicy(PAPER_FEATURES)),
    Method("crf", lambda: CRFPolicy(PAPER_FEATURES)),
    Method("gap>0.8", lambda: GapThresholdPolicy(0.8)),
)
OUR_METHODS: tuple[Method, ...] = (
    Method("svm+depth", lambda: SVMPolicy((*PAPER_FEATURES, "depth"))),
    Method("svm+depth+agree", lambda: SVMPolicy((*PAPER_FEATURES, "depth", "agree_prev"))),
    Method("svm-cand+depth", lambda: SVMPolicy(("cand_gap", "cand_top_prob", "depth", "cand_agree_prev")),
           needs_candidates=True),
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
    """Fit `policy` on `train` and replay it on `evaluation`; an untrainable policy gives its reason.

    Also replays it under the check schedule learned from `train` (no check before the first
    layer it ever accepted there), as the `scheduled_*` figures.
    """
    try:
        policy.fit(train.select(policy.features), training_labels(policy, train))
    except ValueError as error:
        return {"error": str(error).splitlines()[0]}
    decisions = policy.predict(evaluation.select(policy.features))
    candidates_only = reads_candidates_only(policy, evaluation)
    report = _with_oracle_share(evaluate_decisions(decisions, evaluation, candidates_only).to_dict())
    first_check = first_accepted_layer(policy, train)
    scheduled = evaluate_decisions(decisions, evaluation, candidates_only, first_check).to_dict()
    report.update({"first_check": first_check, "scheduled_accuracy_change": scheduled["accuracy_change"],
                   "scheduled_layers_saved": scheduled["layers_saved"],
                   "scheduled_honest_flops_ratio": scheduled["honest_flops_ratio"]})
    return report


def _with_oracle_share(report: dict) -> dict:
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
        if method.needs_candidates and not data.eval.candidate_ids:
            continue
        rows.append({**_setting_columns(data), "method": method.name,
                     **score(method.make(), data.train, data.eval)})
    return rows


def factor_rows(data: SettingData) -> list[dict]:
    """SVM with the factor study's feature sets (Table 7)."""
    return [{**_setting_columns(data), "method": "svm", "features": label,
             **score(SVMPolicy(features), data.train, data.eval)} for label, features in FACTOR_STUDY]


def _fit(policy: StopPolicy, train: Collection) -> str | None:
    """Fit `policy` on `train`; the first line of the reason when it cannot be trained there."""
    try:
        policy.fit(train.select(policy.features), training_labels(policy, train))
    except ValueError as error:
        return str(error).splitlines()[0]
    return None


def transfer_rows(sources: Sequence[SettingData], targets: Sequence[SettingData],
                  method: Method = PAPER_METHODS[0], label: str = "task") -> list[dict]:
    """A classifier trained on each source setting, replayed on every target (Table 4).

    `label` names what varies; source and target share the feature columns the method reads,
    nothing else: the exit layers and answers are the target's own.
    """
    rows = []
    for source in sources:
        policy = method.make()
        if (error := _fit(policy, source.train)) is not None:
            rows.append({f"train_{label}": source.setting.name, "error": error})
            continue
        for target in targets:
            report = evaluate_policy(policy, target.eval).to_dict()
            rows.append({f"train_{label}": source.setting.name, f"eval_{label}": target.setting.name,
                         "method": method.name, **report})
    return rows


# Table 6 replays policies across models, so only features with the same meaning at any depth:
# the paper's two, and ours with depth as a fraction of the model's layers.
MODEL_TRANSFER_METHODS: tuple[Method, ...] = (PAPER_METHODS[0], *OUR_METHODS[1:])


def model_transfer_rows(models: Mapping[str, Sequence[SettingData]],
                        methods: Sequence[Method] = MODEL_TRANSFER_METHODS) -> list[dict]:
    """Paper Table 6: a policy fitted on one model's traces, replayed on another model's traces of
    the same setting (same task, shots and seed, hence the same prompts).

    `models` maps a model's display name to its collected settings; only settings every model has
    are used. Rows with `train_model == eval_model` are the intra-model baseline.
    """
    by_model = {name: {data.setting.name: data for data in settings} for name, settings in models.items()}
    shared = sorted(set.intersection(*(set(settings) for settings in by_model.values()))) if by_model else []
    rows = []
    for setting_name in shared:
        settings = [model_settings[setting_name] for model_settings in by_model.values()]
        for method in methods:
            if method.needs_candidates and not all(data.eval.candidate_ids for data in settings):
                continue
            for source_model, source_settings in by_model.items():
                policy = method.make()
                error = _fit(policy, source_settings[setting_name].train)
                for target_model, target_settings in by_model.items():
                    target = target_settings[setting_name]
                    row = {**_setting_columns(target), "method": method.name, "train_model": source_model,
                           "eval_model": target_model}
                    if error is not None:
                        rows.append({**row, "error": error})
                        continue
                    report = _with_oracle_share(evaluate_policy(policy, target.eval).to_dict())
                    rows.append({**row, **report})
    return rows


def layer_accuracy(collection: Collection) -> np.ndarray:
    """Fraction of prompts whose top-1 at each layer is the gold first token: (layers,)."""
    return (collection.top1 == collection.gold[:, None]).mean(axis=0)


def calibration_rows(data: SettingData, epsilon: float, delta: float, splits: int = 100,
                     features: Sequence[str] = ("gap", "top_prob", "depth", "agree_prev"),
                     seed: int = 0) -> dict[str, object]:
    """Check the Learn-then-Test guarantee on one setting over random calibration/test splits.

    The label-free scorer is fitted once on the train traces; each split calibrates on half of
    the eval prompts and measures, on the other half, how many answers differ from the full
    model's. The guarantee holds empirically when the fraction of splits with that rate <= epsilon
    is at least 1 - delta.
    """
    policy = CalibratedPolicy(tuple(features)).fit(data.train.select(features), data.train.top1)
    scores = policy.margins(data.eval.select(features))
    rng = np.random.default_rng(seed)
    risks, saved, certified, accuracy_changes = [], [], [], []
    layers = data.eval.top1.shape[1]
    oracle_saved = 1 - oracle_exit_layers(data.eval.top1).mean() / layers
    for _ in range(splits):
        order = rng.permutation(len(data.eval))
        calibration, test = order[: len(order) // 2], order[len(order) // 2:]
        certificate = learn_then_test(scores[calibration], data.eval.top1[calibration], epsilon, delta)
        exits = exits_at(scores[test], certificate.threshold)
        top1, gold = data.eval.top1[test], data.eval.gold[test]
        answers = top1[np.arange(len(test)), exits - 1]
        risks.append(float((answers != top1[:, -1]).mean()))
        accuracy_changes.append(float((answers == gold).mean() - (top1[:, -1] == gold).mean()))
        saved.append(float(1 - exits.mean() / layers))
        certified.append(bool(np.isfinite(certificate.threshold)))
    risks_array = np.array(risks)
    return {**_setting_columns(data), "method": "calibrated-svm", "features": ", ".join(features),
            "epsilon": epsilon, "delta": delta, "splits": splits, "calibration_prompts": len(data.eval) // 2,
            "fraction_within_epsilon": round(float((risks_array <= epsilon).mean()), 4),
            "mean_disagreement": round(float(risks_array.mean()), 4),
            "p95_disagreement": round(float(np.quantile(risks_array, 0.95)), 4),
            "splits_with_early_exits": round(float(np.mean(certified)), 4),
            "accuracy_change": round(float(np.mean(accuracy_changes)), 4),
            "layers_saved": round(float(np.mean(saved)), 4),
            "saved_of_oracle": round(float(np.mean(saved) / oracle_saved), 4) if oracle_saved > 0 else None}
