"""Old scorer vs the one `fit` now chooses, on the committed Gemma fits and on tasks not in ../shared.

For each fit of examples/fit_tables.sh (Gemma 3 270M) and two generated tasks, `fit_classifier`
runs twice on the same cached traces (no timing; `--runs` keeps the traces):

- `old`: the paper-style SVM on the four features, first check = the oracle's cheapest
  (what `fit` did before the scorer choice; it also no longer masks the layers before the first
  check a second time, a bug of the shipped policies, so it saves at least as much as they did);
- `new`: scorer and first check chosen by cross-validation on the train split (`fit.scorer_choice`);
- `new_cheapest`: the scorer `new` chose, from the old first check: what the old schedule costs it.

Beside them, `shipped` is the committed card (results/fit/gemma3-270m-<name>) where there is one.
Every figure is on the test split (layers saved, share of the stable-answer oracle's, disagreement
with the dense answers) or the re-split check (fraction of random calibration/test splits within
epsilon). The generated tasks are written at run time from a rule, never stored in the repository:
`parity` (a number in words -> even/odd) and `earlier-letter` (two letters -> the one earlier in the
alphabet, a 26-way single-letter answer).

Usage: OMP_NUM_THREADS=1 python benchmarks/scorer_choice.py --runs /work/runs-24 --out benchmarks/results/scorer_choice
(writes scorer_choice.json and scorer_choice.md; `--only sst2,parity` runs a subset).
"""

from __future__ import annotations

import argparse
import json
import shlex
import string
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_files import write_report  # noqa: E402

from adainfer.engine.files import write_text_atomic  # noqa: E402
from adainfer.engine.model import EarlyExitModel  # noqa: E402
from adainfer.fit.card import read_card  # noqa: E402
from adainfer.fit.pipeline import FitOptions, fit_classifier, task_source  # noqa: E402
from adainfer.fit.scorer_choice import share_of_oracle  # noqa: E402
from adainfer.fit.splits import SplitSizes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(shots=3, sizes=SplitSizes(60, 100, 100), epsilon=0.1)
# name -> (task, FitOptions keywords): the Gemma lines of examples/fit_tables.sh, then the generated tasks.
FITS: dict[str, tuple[str, dict]] = {
    "sst2": ("sst2", {}), "ag_news": ("ag_news", {}), "person-sport": ("user/person-sport.jsonl", {}),
    "mmlu": ("mmlu", SMALL), "commonsense_qa": ("commonsense_qa", SMALL),
    "parity": ("user/parity.jsonl", {}), "earlier-letter": ("user/earlier-letter.jsonl", {}),
}
ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def in_words(number: int) -> str:
    """1..999 in English words."""
    hundreds, rest = divmod(number, 100)
    words = [f"{ONES[hundreds]} hundred"] if hundreds else []
    if rest or not words:
        words.append(ONES[rest] if rest < 20 else TENS[rest // 10] + (f"-{ONES[rest % 10]}" if rest % 10 else ""))
    return " ".join(words)


def write_tasks(folder: Path, data_dir: Path) -> None:
    """The generated tasks (by a fixed seed) and person-sport as fit_tables.sh writes it, under `folder`/user."""
    rng = np.random.default_rng(0)
    user = folder / "user"
    user.mkdir(parents=True, exist_ok=True)
    numbers = rng.permutation(np.arange(1, 1000))[:800]
    parity = [{"input": in_words(int(n)), "output": "odd" if n % 2 else "even"} for n in numbers]
    letters = string.ascii_lowercase
    pairs = {tuple(sorted(rng.choice(26, size=2, replace=False))) for _ in range(2000)}
    ordered = sorted(pairs)
    earlier = [{"input": f"{letters[b]} or {letters[a]}" if flip else f"{letters[a]} or {letters[b]}",
                "output": letters[a]}
               for (a, b), flip in zip([ordered[i] for i in rng.permutation(len(ordered))], rng.integers(0, 2, 2000))]
    people = json.loads((data_dir / "function_vectors/abstractive/person-sport.json").read_text())
    for name, rows in (("parity", parity), ("earlier-letter", earlier), ("person-sport", people)):
        write_text_atomic(user / f"{name}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


def figures(card) -> dict:
    test = card.test
    return {"first_check": card.first_check, "scorer": card.scorer.get("scorer", "svm"),
            "layers_saved": test["layers_saved"], "oracle_layers_saved": test["oracle_layers_saved"],
            "share_of_oracle": share_of_oracle(test["layers_saved"], test["oracle_layers_saved"]),
            "test_disagreement": round(1 - test["agreement_with_dense"], 4),
            "resplit_fraction_within_epsilon": card.resplit_check.get("fraction_within_epsilon"),
            "calibration_needed": card.calibration_needed.get("cv_savings_of_chosen_scorer")}


def run(model: EarlyExitModel, name: str, runs: Path) -> dict:
    task, keywords = FITS[name]
    source = task_source(str(runs / task) if task.startswith("user/") else task)
    row = {"fit": name, "epsilon": keywords.get("epsilon", 0.05)}
    shipped = ROOT / "results/fit" / f"gemma3-270m-{name}"
    row["shipped"] = figures(read_card(shipped)) if (shipped / "card.json").is_file() else None
    for variant in ("old", "new", "new_cheapest"):
        extra = ({} if variant == "new" else
                 dict(scorers=("svm",) if variant == "old" else (row["new"]["scorer"],), joint_schedule=False))
        fitted = fit_classifier(model, source, FitOptions(timing_prompts=0, **keywords, **extra), cache_dir=runs / "cache")
        row[variant] = figures(fitted.card)
        row["calibration"] = fitted.card.split_sizes["calibration"]
        if variant == "new":
            row["reason"] = fitted.card.scorer["reason"]
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: list[dict], command: str) -> str:
    def cell(value: object) -> str:
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = [f"Command: `{command}`", "",
             "Gemma 3 270M, test split. `shipped`: the committed card; `old`: the paper-style SVM from the oracle's "
             "cheapest first check (the procedure before this change, with the double first-check mask fixed); "
             "`new`: scorer and first check chosen by cross-validation on the train split; beside it, the same scorer "
             "from the old first check (what the old schedule costs). Share = layers saved / "
             "the stable-answer oracle's (– where the oracle saves under 1 %). parity and earlier-letter are generated "
             "tasks, not in ../shared.", "",
             "| fit | calibration | epsilon | oracle saved | shipped saved | old saved | new saved | new scorer from old "
             "first check | shipped share | old share | new share | new scorer | old / new first check | "
             "new disagreement | new re-split within eps | calibration needed (new) |", "|" + "---|" * 16]
    for r in rows:
        shipped, old, new = r["shipped"] or {}, r["old"], r["new"]
        lines.append("| " + " | ".join(cell(v) for v in (
            r["fit"], r["calibration"], r["epsilon"], new["oracle_layers_saved"], shipped.get("layers_saved"),
            old["layers_saved"], new["layers_saved"], r["new_cheapest"]["layers_saved"], shipped.get("share_of_oracle"), old["share_of_oracle"],
            new["share_of_oracle"], new["scorer"], f"{old['first_check']} / {new['first_check']}",
            new["test_disagreement"], new["resplit_fraction_within_epsilon"], new["calibration_needed"])) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder for generated tasks and the trace cache")
    parser.add_argument("--out", type=Path, required=True, help="path prefix of the .json and .md to write")
    parser.add_argument("--only", default=",".join(FITS), help="comma-separated fits to run")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name]
    if any(name not in FITS for name in names):
        raise SystemExit(f"error: --only takes some of {', '.join(FITS)}")
    write_tasks(args.runs, args.data_dir)
    model = EarlyExitModel.from_pretrained(None)
    rows = [run(model, name, args.runs) for name in names]
    command = shlex.join(["python", "benchmarks/scorer_choice.py", *sys.argv[1:]])
    write_report(args.out, {"command": command, "rows": rows}, markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
