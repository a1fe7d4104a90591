"""Score stop policies on collected settings: the rows behind the paper's tables.

Every function here replays policies over traces collected by `adainfer.eval.harness`, so a table
costs no model time. A row is a flat dict (task, shots, method, and `PolicyReport`'s figures)
ready for a pandas DataFrame. A policy that cannot be trained on a setting (its train split never
has the gold token on top, so every label is 0) gives a row with its reason instead of figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from adainfer.engine.cost_profile import CostProfile
from adainfer.engine.features import PAPER_FEATURES
from adainfer.engine.schedule import policy_first_check
from adainfer.eval.traces import Collection
from adainfer.eval.harness import SettingData
from adainfer.eval.replay import evaluate_policy, fit_on, replay_exits
from adainfer.policies.base import StopPolicy
from adainfer.policies.calibrated import CalibratedPolicy, resplit_exits
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.decisions import oracle_exit_layers
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.svm import SVMPolicy


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


def score(policy: StopPolicy, train: Collection, evaluation: Collection,
          profile: CostProfile | None = None) -> dict[str, object]:
    """Fit `policy` on `train` and replay it on `evaluation`; an untrainable policy gives its reason.

    Replays it twice: checking every layer, and under the check schedule its fit learned (no lens
    before `first_check`, the earliest layer it accepted on `train`), as the `scheduled_*` figures,
    which are what a live `predict` with this policy measures. A measured cost `profile` of the
    model adds `estimated_time_ratio` to both.
    """
    if (error := _fit(policy, train)) is not None:
        return {"error": error}
    every_layer = evaluate_policy(policy, evaluation, profile=profile)
    first_check = policy_first_check(policy)
    scheduled = evaluate_policy(policy, evaluation, first_check, profile)
    report = _with_oracle_share(every_layer.to_dict())
    report.update({"train_prompts": len(train), "first_check": first_check,
                   **{f"scheduled_{key}": scheduled.to_dict()[key] for key in SCHEDULED_FIGURES}})
    # Per-prompt values, for intervals over several settings (`eval.report.summarise`); never written.
    report["_per_prompt"] = {**every_layer.per_prompt,
                             **{f"scheduled_{key}": values for key, values in scheduled.per_prompt.items()}}
    return report


# What the `scheduled_*` columns repeat from a replay under the learned check schedule.
SCHEDULED_FIGURES: tuple[str, ...] = ("accuracy_change", "agreement_with_dense", "layers_saved",
                                      "honest_flops_ratio", "estimated_time_ratio", "mean_lens_reads")


def _with_oracle_share(report: dict) -> dict:
    oracle_saved = report["oracle_layers_saved"]
    report["saved_of_oracle"] = round(report["layers_saved"] / oracle_saved, 4) if oracle_saved > 0 else None
    return report


ORACLE = "stable-answer oracle"


def dense_and_oracle(data: SettingData) -> list[dict[str, object]]:
    """The full model, and the stable-answer oracle: each prompt exits at the earliest layer from
    which its top-1 stays the final one (it keeps every dense answer; it is not a bound on what a
    policy can save at equal accuracy)."""
    evaluation = data.eval
    cost_layers = evaluation.top1.shape[1]
    dense_correct = evaluation.top1[:, -1] == evaluation.gold
    oracle = oracle_exit_layers(evaluation.top1)
    common = {**_setting_columns(data), "prompts": len(evaluation), "train_prompts": len(data.train),
              "dense_accuracy": round(float(dense_correct.mean()), 4), "accuracy": round(float(dense_correct.mean()), 4),
              "accuracy_change": 0.0, "agreement_with_dense": 1.0}
    layer_acc = (evaluation.top1 == evaluation.gold[:, None]).mean(axis=0)
    return [
        {**common, "method": "dense", "mean_exit_layer": float(cost_layers), "var_exit_layer": 0.0,
         "layers_saved": 0.0, "paper_flops_ratio": 1.0, "honest_flops_ratio": 1.0, "mean_lens_reads": 1.0,
         "best_layer_accuracy": round(float(layer_acc.max()), 4)},
        {**common, "method": ORACLE, "mean_exit_layer": round(float(oracle.mean()), 4),
         "var_exit_layer": round(float(oracle.var()), 4),
         "layers_saved": round(float(1 - oracle.mean() / cost_layers), 4), "saved_of_oracle": 1.0},
    ]


def setting_rows(data: SettingData, methods: Sequence[Method] = PAPER_METHODS + OUR_METHODS,
                 profile: CostProfile | None = None) -> list[dict]:
    """Dense, oracle and each method on one setting (Tables 2 and 3)."""
    rows = dense_and_oracle(data)
    for method in methods:
        if method.needs_candidates and not data.eval.candidate_ids:
            continue
        rows.append({**_setting_columns(data), "method": method.name,
                     **score(method.make(), data.train, data.eval, profile)})
    return rows


def factor_rows(data: SettingData) -> list[dict]:
    """SVM with the factor study's feature sets (Table 7)."""
    return [{**_setting_columns(data), "method": "svm", "features": label,
             **score(SVMPolicy(features), data.train, data.eval)} for label, features in FACTOR_STUDY]


def _fit(policy: StopPolicy, train: Collection) -> str | None:
    """Fit `policy` on `train`; the first line of the reason when it cannot be trained there."""
    try:
        fit_on(policy, train)
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
                    replay = evaluate_policy(policy, target.eval)
                    report = {**_with_oracle_share(replay.to_dict()), "_per_prompt": replay.per_prompt}
                    rows.append({**row, **report})
    return rows


def layer_accuracy(collection: Collection) -> np.ndarray:
    """Fraction of prompts whose top-1 at each layer is the gold first token: (layers,)."""
    return (collection.top1 == collection.gold[:, None]).mean(axis=0)


def calibration_rows(data: SettingData, epsilon: float, delta: float, splits: int = 100,
                     features: Sequence[str] = ("gap", "top_prob", "depth", "agree_prev"),
                     seed: int = 0) -> dict[str, object]:
    """Check the Learn-then-Test guarantee on one setting over random calibration/test splits.

    The label-free scorer is fitted once on the train traces, which also fix the threshold grid
    (`CalibratedPolicy.threshold_grid_`) before any eval prompt is scored. Each split calibrates
    on half of the eval prompts and measures, on the other half, how many answers differ from the
    full model's. A split certifies some early exit when its threshold is finite and at least one
    test prompt exits before the last layer; a split that certifies none keeps any promise
    trivially, so `fraction_within_epsilon` counts only the certifying splits (None when there are
    none) and `fraction_within_epsilon_all_splits` is the vacuous overall figure. The guarantee
    holds empirically when `fraction_within_epsilon` is at least 1 - delta.
    """
    policy = fit_on(CalibratedPolicy(tuple(features)), data.train)
    scores = policy.margins(data.eval.select(features))
    risks, saved, finite, exited, accuracy_changes = [], [], [], [], []
    layers = data.eval.top1.shape[1]
    oracle_saved = 1 - oracle_exit_layers(data.eval.top1).mean() / layers
    calibration_prompts = len(data.eval) // 2
    for test, certificate, exits in resplit_exits(scores, data.eval.top1, calibration_prompts, epsilon, delta,
                                                  policy.threshold_grid_, policy.first_check, splits, seed):
        replayed = replay_exits(exits, data.eval.subset(test))
        risks.append(float(replayed.changed.mean()))
        accuracy_changes.append(float(replayed.correct.mean() - replayed.dense_correct.mean()))
        saved.append(float(1 - exits.mean() / layers))
        finite.append(bool(np.isfinite(certificate.threshold)))
        exited.append(bool((exits < layers).any()))
    risks_array = np.array(risks)
    within = risks_array <= epsilon
    certifying = np.array(finite) & np.array(exited)
    return {**_setting_columns(data), "method": "calibrated-svm", "features": ", ".join(features),
            "epsilon": epsilon, "delta": delta, "splits": splits, "calibration_prompts": calibration_prompts,
            "test_prompts": len(data.eval) - calibration_prompts,
            "splits_with_early_exits": int(np.sum(exited)),
            "splits_certifying_exits": int(certifying.sum()),
            "fraction_within_epsilon": round(float(within[certifying].mean()), 4) if certifying.any() else None,
            "fraction_within_epsilon_all_splits": round(float(within.mean()), 4),
            "mean_disagreement": round(float(risks_array.mean()), 4),
            "p95_disagreement": round(float(np.quantile(risks_array, 0.95)), 4),
            "accuracy_change": round(float(np.mean(accuracy_changes)), 4),
            "layers_saved": round(float(np.mean(saved)), 4),
            "saved_of_oracle": round(float(np.mean(saved) / oracle_saved), 4) if oracle_saved > 0 else None}
