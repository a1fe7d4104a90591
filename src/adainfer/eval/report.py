"""Write result rows as the paper's tables: CSV and JSON for machines, Markdown for people.

Each file starts with (Markdown) or carries (JSON) the exact command that produced it. Few-shot
figures are averaged over the numbers of demonstrations, as the paper averages over k.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from adainfer.engine.cost_profile import CostProfile
from adainfer.engine.files import write_text_atomic
from adainfer.eval import experiments, figures
from adainfer.eval.harness import SettingData
from adainfer.eval.replay import bootstrap_interval

# What a reader of Tables 2/3 wants per (task, method), in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "dense_accuracy", "accuracy", "accuracy_change", "accuracy_change_low", "accuracy_change_high",
    "agreement_with_dense", "mean_exit_layer", "var_exit_layer", "layers_saved", "layers_saved_low",
    "layers_saved_high", "saved_of_oracle", "paper_flops_ratio", "honest_flops_ratio", "estimated_time_ratio",
    "mean_lens_reads",
    "first_check", "scheduled_accuracy_change", "scheduled_accuracy_change_low", "scheduled_accuracy_change_high",
    "scheduled_agreement_with_dense", "scheduled_layers_saved", "scheduled_layers_saved_low",
    "scheduled_layers_saved_high", "scheduled_honest_flops_ratio", "scheduled_estimated_time_ratio",
    "scheduled_mean_lens_reads",
)
# Issue 4's comparison: what each policy keeps, saves and costs, before and after the schedule.
BEYOND_COLUMNS: tuple[str, ...] = (
    "regime", "task", "method", "accuracy_change", "accuracy_change_low", "accuracy_change_high",
    "agreement_with_dense", "layers_saved", "layers_saved_low", "layers_saved_high", "saved_of_oracle",
    "paper_flops_ratio", "honest_flops_ratio", "estimated_time_ratio", "first_check", "scheduled_accuracy_change",
    "scheduled_agreement_with_dense", "scheduled_layers_saved", "scheduled_honest_flops_ratio",
    "scheduled_estimated_time_ratio",
)
# Every table of policies says what its columns mean.
LEGEND = (
    "`accuracy_change`: accuracy minus the dense model's, over the same prompts; `agreement_with_dense`: the "
    "fraction of answers equal to the dense model's (a policy can keep accuracy and still change answers). "
    "`*_low`/`*_high`: 95 % paired-bootstrap interval over prompts (1,000 resamples; with several settings, "
    "prompts are resampled within each). `stable-answer oracle`: each prompt exits at the earliest layer from "
    "which its top-1 stays the final one; it keeps every dense answer, and is not a bound on savings at equal "
    "accuracy (a policy may exit earlier where an intermediate layer is right and the last is wrong). "
    "`saved_of_oracle`: layers saved / layers that oracle saves. `paper_flops_ratio`: the paper's eq. (2), per "
    "token, the head counted once. `honest_flops_ratio`: prefill FLOPs of the prompt through the layers "
    "run, plus one LM-head product (V units, |C| for candidate-only policies) per lens read, over the dense "
    "model's (every layer, one head product). `estimated_time_ratio`: the same count priced by a measured "
    "cost profile of the model (`adainfer profile`: seconds of one layer at the prompt's length, of one full "
    "and one candidate check), empty without one. `mean_lens_reads`: lens products per prompt. `first_check`: the "
    "first layer the policy accepted on any training prompt; the `scheduled_*` figures read no lens before it "
    "(but the one before it for `agree_prev`) and are what a live `adainfer predict` measures.\n\n"
)
RISK_LEVELS: tuple[tuple[float, float], ...] = ((0.05, 0.05), (0.10, 0.05))


def best_within(summary: pd.DataFrame, max_loss: float = 0.01) -> pd.DataFrame:
    """Per regime and task, the method saving most layers among those losing <= `max_loss` accuracy."""
    candidates = summary[~summary["method"].isin(("dense", "stable-answer oracle"))
                         & (summary["accuracy_change"] >= -max_loss - 1e-9)]
    best = candidates.sort_values("layers_saved", ascending=False).groupby(["regime", "task"], sort=False).head(1)
    return best[[c for c in BEYOND_COLUMNS if c in best]].sort_values(["regime", "task"])


# What `tasks_by_shots` shows per k; the few-shot rows of `tasks` are their mean over k.
BY_SHOTS_COLUMNS: tuple[str, ...] = (
    "dense_accuracy", "accuracy_change", "layers_saved", "saved_of_oracle", "honest_flops_ratio",
    "scheduled_honest_flops_ratio",
)


def by_shots(rows: Sequence[dict]) -> pd.DataFrame:
    """Few-shot figures per task, method and k, unaveraged, so a trend over k stays visible."""
    frame = pd.DataFrame(rows)
    frame = frame[frame["shots"] > 0]
    columns = [column for column in BY_SHOTS_COLUMNS if column in frame]
    table = frame.groupby(["task", "method", "shots"], sort=False)[columns].mean(numeric_only=True)
    return table.reset_index().sort_values(["task", "method", "shots"], kind="stable")


def regime(shots: int) -> str:
    return "zero-shot" if shots == 0 else "few-shot"


def summarise(rows: Sequence[dict], by: Sequence[str] = ("task", "method")) -> pd.DataFrame:
    """Mean of the summary columns per regime and `by`, over shots and seeds; errors kept as text.

    The `*_low`/`*_high` interval of a mean over several settings is bootstrapped again from the
    settings' per-prompt values (`_per_prompt`), never averaged from their own intervals.
    """
    frame = pd.DataFrame(rows)
    frame["regime"] = frame["shots"].map(regime)
    columns = [column for column in SUMMARY_COLUMNS if column in frame]
    keys = ["regime", *by]
    grouped = frame.groupby(keys, sort=False)
    summary = grouped[columns].mean(numeric_only=True)
    if "_per_prompt" in frame:
        for name, low, high in _intervals(grouped["_per_prompt"]):
            summary[f"{name}_low"], summary[f"{name}_high"] = low, high
    summary["shots"] = grouped["shots"].agg(lambda values: ",".join(str(v) for v in sorted(set(values))))
    for count in ("prompts", "train_prompts"):
        if count in frame:
            summary[count] = grouped[count].sum()
    if "error" in frame:
        summary["error"] = grouped["error"].agg(lambda values: "; ".join(sorted({v for v in values if isinstance(v, str)})))
    return summary.reset_index()


def _intervals(per_prompt: "pd.core.groupby.SeriesGroupBy") -> list[tuple[str, list, list]]:
    """(figure, lows, highs) for each per-prompt figure, one value per group, in group order."""
    names = sorted({name for values in per_prompt.obj if isinstance(values, dict) for name in values})
    result = []
    for name in names:
        bounds = [bootstrap_interval([values[name] for values in group if isinstance(values, dict)])
                  if any(isinstance(values, dict) for values in group) else (None, None)
                  for _, group in per_prompt]
        result.append((name, [low for low, _ in bounds], [high for _, high in bounds]))
    return result


def group_average(summary: pd.DataFrame) -> pd.DataFrame:
    """Per-group means of a task summary (the paper's group columns)."""
    columns = [column for column in SUMMARY_COLUMNS if column in summary]
    return summary.groupby(["regime", "group", "method"], sort=False)[columns].mean().reset_index()


def write_table(frame: pd.DataFrame, path_stem: Path, title: str, command: str, notes: str = "") -> list[Path]:
    """`<stem>.csv`, `<stem>.json` (rows plus the command) and `<stem>.md`; returns the paths."""
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    frame = frame[[column for column in frame.columns if not column.startswith("_")]]
    csv_path, json_path, md_path = (path_stem.with_suffix(suffix) for suffix in (".csv", ".json", ".md"))
    write_text_atomic(csv_path, frame.to_csv(index=False))
    write_text_atomic(json_path, json.dumps({"command": command, "title": title,
                                             "rows": json.loads(frame.to_json(orient="records"))}, indent=1) + "\n")
    markdown = frame.to_markdown(index=False, floatfmt=".3f")
    write_text_atomic(md_path, f"# {title}\n\nCommand: `{command}`\n\n{notes}{markdown}\n")
    return [csv_path, json_path, md_path]


def write_report(settings: Sequence[SettingData], out_dir: Path, command: str,
                 profile: CostProfile | None = None) -> list[Path]:
    """Every table and figure of the evaluation for `settings`, under `out_dir`; returns the paths.

    Tables 2/3 (per task and per group), 4 (a classifier trained on one task, applied to the
    others, on the first few-shot setting of each task), 7 (factor study), Figures 1 and 3, and an
    exit-layer histogram per task.
    """
    out_dir = Path(out_dir)
    rows = [row for data in settings for row in experiments.setting_rows(data, profile=profile)]
    origin = provenance(settings, profile)
    traced = (f"Traces: {len(settings)} settings, {sum(item['eval_prompts'] for item in origin['settings'])} eval "
              f"and {sum(item['train_prompts'] for item in origin['settings'])} train prompts in all, content "
              f"sha256 `{origin['traces_sha256'][:16]}` (per setting in `provenance.json`).\n\n")

    def table(frame: pd.DataFrame, name: str, title: str, notes: str = "") -> list[Path]:
        return write_table(frame, out_dir / name, title, command, traced + notes)

    shown = _one_setting_per_task(settings)
    written = _policy_tables(rows, shown, table)
    calibration = pd.DataFrame([experiments.calibration_rows(data, epsilon, delta)
                                for data in settings for epsilon, delta in RISK_LEVELS])
    written += table(calibration, "calibration", "Learn-then-Test calibration: the guarantee "
                     "checked over 100 random calibration/test splits", _calibration_notes(calibration))
    factors = summarise([row for data in settings for row in experiments.factor_rows(data)], by=("task", "features"))
    written += table(factors, "factor_study", "Factor study (paper Table 7): SVM features", LEGEND)
    written += _figures(shown, out_dir / "figures")
    public_rows = [{key: value for key, value in row.items() if not key.startswith("_")} for row in rows]
    written.append(write_text_atomic(out_dir / "rows.json", json.dumps({"command": command, "rows": public_rows},
                                                                       indent=1) + "\n"))
    written.append(write_text_atomic(out_dir / "provenance.json", json.dumps(origin, indent=1) + "\n"))
    return written


def _one_setting_per_task(settings: Sequence[SettingData]) -> list[SettingData]:
    """The setting that stands for each task in Table 4 and the figures: its fewest-shot few-shot one."""
    by_task: dict[str, list] = {}
    for data in settings:
        by_task.setdefault(data.setting.name.split("/")[0], []).append(data)
    return [min(items, key=lambda d: (d.setting.shots == 0, d.setting.shots)) for items in by_task.values()]


def _policy_tables(rows: list[dict], shown: list[SettingData],
                   table: Callable[..., list[Path]]) -> list[Path]:
    """Tables 2/3 per task (and per k), per group, Table 4 across tasks, and the oracle comparisons."""
    tasks = summarise(rows)
    written = table(tasks, "tasks", "AdaInfer per task (paper Tables 2 and 3)",
                    "Few-shot rows average the listed numbers of demonstrations; `prompts` and `train_prompts` "
                    "add up the settings averaged. " + LEGEND)
    if len({row["shots"] for row in rows if row["shots"] > 0}) > 1:
        written += table(by_shots(rows), "tasks_by_shots", "AdaInfer per task and number of demonstrations k "
                         "(the few-shot rows of `tasks.md` average these)", LEGEND)
    groups = tasks.merge(pd.DataFrame(rows)[["task", "group"]].drop_duplicates(), on="task")
    written += table(group_average(groups), "groups", "AdaInfer per task group",
                     "Unweighted means of the per-task rows; intervals are per task, in `tasks.md`.\n\n")
    first_few_shot = [data for data in shown if data.setting.shots > 0]
    if len(first_few_shot) > 1:
        transfer = pd.DataFrame(experiments.transfer_rows(first_few_shot, first_few_shot))
        written += table(transfer, "inter_task", "Inter-task generalization (paper Table 4): SVM on gap, "
                         "top_prob trained on one task, replayed on another", LEGEND)
    beyond = tasks[[c for c in BEYOND_COLUMNS if c in tasks]]
    written += table(beyond, "beyond", "Policies compared with the stable-answer oracle, before and after the "
                     "check schedule", LEGEND + "`svm-cand+depth` reads only the candidate answers' logits (|C| "
                     "head rows per check), answers with the best candidate and learns when that candidate "
                     "stops changing (not whether it is gold); its accuracy change and `saved_of_oracle` "
                     "are against the full model and the oracle under the same rule.\n\n")
    written += table(best_within(tasks), "best_within_1pt", "Best policy per task at <= 1 point accuracy loss",
                     "The method saving most layers among those whose mean accuracy change is >= -1 point; the "
                     "interval says whether that loss is resolved at this number of prompts.\n\n" + LEGEND)
    return written


def _calibration_notes(calibration: pd.DataFrame) -> str:
    """What the calibration table's columns mean, with the split sizes it used."""
    return ("Each split calibrates the threshold on `calibration_prompts` eval prompts ("
            f"{', '.join(map(str, sorted(set(calibration['calibration_prompts']))))} here) and "
            "measures, on the other `test_prompts` ("
            f"{', '.join(map(str, sorted(set(calibration['test_prompts']))))}), the fraction of "
            "answers that differ from the full model's (`mean_disagreement`, `p95_disagreement` "
            "over splits). The thresholds tested come from the train traces' scores, fixed before "
            "calibration. `splits_certifying_exits` (out of `splits`): splits whose certified "
            "threshold is finite and lets at least one test prompt exit before the last layer (a "
            "finite threshold is needed for any exit, so it equals `splits_with_early_exits`). "
            "`fraction_within_epsilon`: among those splits only, the fraction whose test "
            "disagreement is <= epsilon; empty when no split certifies an early exit. The "
            "guarantee holds empirically when it is >= 1 - delta. "
            "`fraction_within_epsilon_all_splits` also counts splits that never exit early, "
            "which keep any promise trivially. `accuracy_change`, `layers_saved` and "
            "`saved_of_oracle` are means over all splits.\n\n")


def _figures(shown: list[SettingData], figure_dir: Path) -> list[Path]:
    """Figure 1 over the tasks, then Figure 3 and an exit-layer histogram per task."""
    written = [figures.layer_accuracy_figure(shown, figure_dir / "layer_accuracy.png")]
    for data in shown:
        task = data.setting.name.split("/")[0]
        written.append(figures.lens_features_figure(data, figure_dir / f"lens_features_{task}.png"))
        written.append(figures.exit_histogram_figure(
            data, experiments.PAPER_METHODS[:1] + experiments.OUR_METHODS, figure_dir / f"exit_layers_{task}.png"))
    return written


def provenance(settings: Sequence[SettingData], profile: CostProfile | None = None) -> dict[str, object]:
    """What a set of tables was computed from: each setting's prompt counts and trace hash, the
    hash of them all, the cost profile's machine, and the versions of the libraries that fit and
    score the policies."""
    items = [{"setting": data.setting.name, "train_prompts": len(data.train), "eval_prompts": len(data.eval),
              "traces_sha256": data.content_sha256()} for data in settings]
    combined = hashlib.sha256("".join(item["traces_sha256"] for item in items).encode()).hexdigest()
    measured = None if profile is None else {"device": profile.device, "torch_threads": profile.torch_threads,
                                             "seq_lens": list(profile.seq_lens), "repeats": profile.repeats}
    return {"traces_sha256": combined, "settings": items, "cost_profile": measured,
            "versions": {name: importlib.metadata.version(name) for name in PROVENANCE_PACKAGES}}


PROVENANCE_PACKAGES: tuple[str, ...] = ("adainfer", "numpy", "scipy", "scikit-learn", "sklearn-crfsuite",
                                        "python-crfsuite", "pandas")


def write_model_transfer(rows: Sequence[dict], out_dir: Path, command: str) -> list[Path]:
    """Paper Table 6 from `experiments.model_transfer_rows`: averaged over tasks, then per task."""
    notes = ("A policy fitted on the train traces of `train_model`, replayed on the eval traces of "
             "`eval_model` for the same prompts; the diagonal (`train_model == eval_model`) is the "
             "intra-model result. `depth` is the layer as a fraction of the model's depth. "
             "`accuracy_change` and `saved_of_oracle` are against the evaluated model's own dense run "
             "and oracle.\n\n")
    out_dir = Path(out_dir)
    overall = summarise(rows, by=("method", "train_model", "eval_model"))
    per_task = summarise(rows, by=("task", "method", "train_model", "eval_model"))
    return (write_table(overall, out_dir / "inter_model", "Inter-model generalization (paper Table 6), "
                        "averaged over tasks", command, notes)
            + write_table(per_task, out_dir / "inter_model_tasks", "Inter-model generalization (paper "
                          "Table 6), per task", command, notes))
