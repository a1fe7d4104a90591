"""The cards of fitted classifiers (`adainfer fit`, examples/fit_tables.sh) gathered in one table,
against the targets of the issue that asked for `fit`:

- test disagreement with the dense answers <= epsilon;
- layers saved beside the stable-answer oracle's, and their ratio (share of oracle: median >= 75 %
  over the closed-set fits, none below 40 % where the oracle saves >= 10 % with >= 100 calibration
  prompts);
- over the re-split check's random calibration/test splits, the fraction within epsilon >= 0.95;
- measured wall-clock speedup against the model's forward at batch 16 (>= 1.4x SST-2 on Qwen,
  >= 1.2x on Gemma), and at batch 1; beside it, early exit's own gain over our walk at full depth.

Every figure is read from a card (each card records the command that measured it), so the table
regenerates byte for byte from the committed cards.

Usage: python benchmarks/fit_targets.py results/fit --out benchmarks/results/fit_targets
(writes fit_targets.json and fit_targets.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_files import write_report  # noqa: E402

from adainfer.fit.card import read_card  # noqa: E402
from adainfer.fit.scorer_choice import share_of_oracle  # noqa: E402


def row(directory: Path) -> dict:
    card = read_card(directory)
    test, speed = card.test, {figure["batch_size"]: figure for figure in card.speed}
    disagreement = round(1 - test["agreement_with_dense"], 4)
    return {
        "classifier": directory.name, "model": card.model, "task": card.task, "shots": card.shots,
        "answer_set": len(card.answer_set) if card.answer_set else None, **card.split_sizes,
        "epsilon": card.epsilon, "delta": card.delta, "certified": card.certificate["threshold"] is not None,
        "dense_accuracy": test["dense_accuracy"], "accuracy": test["accuracy"],
        "test_disagreement": disagreement, "within_epsilon": disagreement <= card.epsilon,
        "layers_saved": test["layers_saved"], "oracle_layers_saved": test["oracle_layers_saved"],
        "share_of_oracle": share_of_oracle(test["layers_saved"], test["oracle_layers_saved"]),
        "scorer": card.scorer.get("scorer"), "first_check": card.first_check,
        "honest_flops_ratio": test["honest_flops_ratio"],
        "resplit_fraction_within_epsilon": card.resplit_check.get("fraction_within_epsilon"),
        "resplits": card.resplit_check.get("splits"),
        "speedup_batch_1": speed.get(1, {}).get("speedup"), "speedup_batch_16": speed.get(16, {}).get("speedup"),
        # Against our own walk at full depth: early exit's own gain (absent from cards that predate it).
        "exit_gain_batch_1": speed.get(1, {}).get("speedup_vs_full_depth"),
        "exit_gain_batch_16": speed.get(16, {}).get("speedup_vs_full_depth"),
        # Against the model's forward over the cached demonstrations (absent from cards that predate it).
        "vs_cached_dense_batch_1": speed.get(1, {}).get("speedup_vs_cached_dense"),
        "vs_cached_dense_batch_16": speed.get(16, {}).get("speedup_vs_cached_dense"),
        "timed_prompts": speed.get(16, speed.get(1, {})).get("prompts"),
        "torch_threads": speed.get(16, speed.get(1, {})).get("torch_threads"), "command": card.command,
    }


def markdown(rows: list[dict], command: str) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "–"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    columns = ("model", "task", "answer_set", "train", "calibration", "test", "epsilon", "dense_accuracy",
               "accuracy", "test_disagreement", "within_epsilon", "resplit_fraction_within_epsilon", "scorer",
               "first_check", "layers_saved", "oracle_layers_saved", "share_of_oracle", "honest_flops_ratio", "speedup_batch_1", "speedup_batch_16", "exit_gain_batch_1", "exit_gain_batch_16",
               "vs_cached_dense_batch_1", "vs_cached_dense_batch_16", "torch_threads")
    lines = [f"Command: `{command}`", "", "Each row is one classifier's card (results/fit/<name>/card.md has the command "
             "that measured it). Disagreement and accuracy are on the test split; the re-split column is the fraction "
             "of random calibration/test splits whose test disagreement stays within epsilon; share of oracle is layers saved over the stable-answer oracle's (– where the oracle saves under 1 %); the scorer "
             "is the one cross-validation on the train split chose (– : the card predates the choice, an SVM); speedups are measured "
             "wall-clock against the model's own forward on the first test prompts; exit gain is the same early-exit time "
             "against our own walk at full depth (every layer, one lens read), which isolates what exiting saves from "
             "any difference between our layer loop and the model's forward; vs cached dense is early exit against the "
             "model's forward over the demonstrations' keys and values computed once (– : the card predates that "
             "timing).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of classifier directories, e.g. results/fit")
    parser.add_argument("--out", type=Path, required=True, help="path prefix of the .json and .md to write")
    args = parser.parse_args()
    rows = [row(directory) for directory in sorted(args.folder.iterdir()) if (directory / "card.json").is_file()]
    if not rows:
        raise SystemExit(f"error: no classifier (card.json) under {args.folder}")
    command = shlex.join(["python", "benchmarks/fit_targets.py", *sys.argv[1:]])
    write_report(args.out, {"command": command, "rows": rows}, markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
