"""Write result rows as the paper's tables: CSV and JSON for machines, Markdown for people.

Each file starts with (Markdown) or carries (JSON) the exact command that produced it. Few-shot
figures are averaged over the numbers of demonstrations, as the paper averages over k.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING
from pathlib import Path

import pandas as pd

if TYPE_CHECKING:
    from adainfer.harness import SettingData

# What a reader of Tables 2/3 wants per (task, method), in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "dense_accuracy", "accuracy", "accuracy_change", "mean_exit_layer", "var_exit_layer",
    "layers_saved", "saved_of_oracle", "paper_flops_ratio", "honest_flops_ratio",
    "first_check", "scheduled_accuracy_change", "scheduled_honest_flops_ratio",
)
# Issue 4's comparison: what each policy keeps, saves and costs, before and after the schedule.
BEYOND_COLUMNS: tuple[str, ...] = (
    "regime", "task", "method", "accuracy_change", "layers_saved", "saved_of_oracle", "paper_flops_ratio",
    "honest_flops_ratio", "first_check", "scheduled_accuracy_change", "scheduled_honest_flops_ratio",
)
RISK_LEVELS: tuple[tuple[float, float], ...] = ((0.05, 0.05), (0.10, 0.05))


def best_within(summary: pd.DataFrame, max_loss: float = 0.01) -> pd.DataFrame:
    """Per regime and task, the method saving most layers among those losing <= `max_loss` accuracy."""
    candidates = summary[(summary["method"] != "oracle") & (summary["method"] != "dense")
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
    """Mean of the summary columns per regime and `by`, over shots and seeds; errors kept as text."""
    frame = pd.DataFrame(rows)
    frame["regime"] = frame["shots"].map(regime)
    columns = [column for column in SUMMARY_COLUMNS if column in frame]
    keys = ["regime", *by]
    grouped = frame.groupby(keys, sort=False)
    summary = grouped[columns].mean(numeric_only=True)
    summary["shots"] = grouped["shots"].agg(lambda values: ",".join(str(v) for v in sorted(set(values))))
    summary["prompts"] = grouped["prompts"].sum() if "prompts" in frame else None
    if "error" in frame:
        summary["error"] = grouped["error"].agg(lambda values: "; ".join(sorted({v for v in values if isinstance(v, str)})))
    return summary.reset_index()


def group_average(summary: pd.DataFrame) -> pd.DataFrame:
    """Per-group means of a task summary (the paper's group columns)."""
    columns = [column for column in SUMMARY_COLUMNS if column in summary]
    return summary.groupby(["regime", "group", "method"], sort=False)[columns].mean().reset_index()


def write_table(frame: pd.DataFrame, path_stem: Path, title: str, command: str, notes: str = "") -> list[Path]:
    """`<stem>.csv`, `<stem>.json` (rows plus the command) and `<stem>.md`; returns the paths."""
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, md_path = (path_stem.with_suffix(suffix) for suffix in (".csv", ".json", ".md"))
    frame.to_csv(csv_path, index=False)
    json_path.write_text(json.dumps({"command": command, "title": title,
                                     "rows": json.loads(frame.to_json(orient="records"))}, indent=1) + "\n")
    markdown = frame.to_markdown(index=False, floatfmt=".3f")
    md_path.write_text(f"# {title}\n\nCommand: `{command}`\n\n{notes}{markdown}\n", encoding="utf-8")
    return [csv_path, json_path, md_path]


def write_report(settings: Sequence["SettingData"], out_dir: Path, command: str) -> list[Path]:
    """Every table and figure of the evaluation for `settings`, under `out_dir`; returns the paths.

    Tables 2/3 (per task and per group), 4 (a classifier trained on one task, applied to the
    others, on the first few-shot setting of each task), 7 (factor study), Figures 1 and 3, and an
    exit-layer histogram per task.
    """
    from adainfer import figures, report  # the report layer sits on top of scoring and plotting

    out_dir = Path(out_dir)
    written: list[Path] = []
    rows = [row for data in settings for row in report.setting_rows(data)]
    tasks = summarise(rows)
    written += write_table(tasks, out_dir / "tasks", "AdaInfer per task (paper Tables 2 and 3)", command,
                           "Few-shot rows average the listed numbers of demonstrations. `honest_flops_ratio` "
                           "charges the LM head (V units) after every checked layer.\n\n")
    if len({row["shots"] for row in rows if row["shots"] > 0}) > 1:
        written += write_table(by_shots(rows), out_dir / "tasks_by_shots", "AdaInfer per task and number of "
                               "demonstrations k (the few-shot rows of `tasks.md` average these)", command)
    groups = tasks.merge(pd.DataFrame(rows)[["task", "group"]].drop_duplicates(), on="task")
    written += write_table(group_average(groups), out_dir / "groups", "AdaInfer per task group", command)
    by_task: dict[str, list] = {}
    for data in settings:
        by_task.setdefault(data.setting.name.split("/")[0], []).append(data)
    # One setting per task stands for it in Table 4 and the figures: its fewest-shot few-shot one.
    shown = [min(items, key=lambda d: (d.setting.shots == 0, d.setting.shots)) for items in by_task.values()]
    first_few_shot = [data for data in shown if data.setting.shots > 0]
    if len(first_few_shot) > 1:
        transfer = pd.DataFrame(report.transfer_rows(first_few_shot, first_few_shot))
        written += write_table(transfer, out_dir / "inter_task", "Inter-task generalization (paper Table 4): "
                               "SVM on gap, top_prob trained on one task, replayed on another", command)
    beyond = tasks[[c for c in BEYOND_COLUMNS if c in tasks]]
    written += write_table(beyond, out_dir / "beyond", "Policies compared with the oracle, before and after the "
                           "check schedule (issue 4)", command,
                           "`saved_of_oracle`: layers saved / layers the oracle saves. `first_check`: the first "
                           "layer the policy ever accepted on training traces; the `scheduled_*` figures never "
                           "check before it. `svm-cand+depth` reads only the candidate answers' logits (|C| "
                           "head rows per check), answers with the best candidate and learns when that candidate "
                           "stops changing (not whether it is gold); its accuracy change and `saved_of_oracle` "
                           "are against the full model and the oracle under the same rule.\n\n")
    written += write_table(best_within(tasks), out_dir / "best_within_1pt", "Best policy per task at <= 1 "
                           "point accuracy loss", command)
    calibration = pd.DataFrame([report.calibration_rows(data, epsilon, delta)
                                for data in settings for epsilon, delta in RISK_LEVELS])
    written += write_table(calibration, out_dir / "calibration", "Learn-then-Test calibration: the guarantee "
                           "checked over 100 random calibration/test splits", command,
                           "Each split calibrates the threshold on half of the eval prompts and measures on the "
                           "other half the fraction of answers that differ from the full model's. The guarantee "
                           "holds empirically when `fraction_within_epsilon` >= 1 - delta.\n\n")
    factors = summarise([row for data in settings for row in report.factor_rows(data)], by=("task", "features"))
    written += write_table(factors, out_dir / "factor_study", "Factor study (paper Table 7): SVM features",
                           command)
    figure_dir = out_dir / "figures"
    written.append(figures.layer_accuracy_figure(shown, figure_dir / "layer_accuracy.png"))
    for data in shown:
        task = data.setting.name.split("/")[0]
        written.append(figures.lens_features_figure(data, figure_dir / f"lens_features_{task}.png"))
        written.append(figures.exit_histogram_figure(
            data, report.PAPER_METHODS[:1] + report.OUR_METHODS, figure_dir / f"exit_layers_{task}.png"))
    (out_dir / "rows.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    written.append(out_dir / "rows.json")
    return written


def write_model_transfer(rows: Sequence[dict], out_dir: Path, command: str) -> list[Path]:
    """Paper Table 6 from `report.model_transfer_rows`: averaged over tasks, then per task."""
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
