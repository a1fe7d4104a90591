"""The paper's CRF (App. C; features gap and top_prob) decoded online, as early exit must, and
offline, on collected traces: why the CRF trained on whole layer sequences exited at layer 1.

For every complete k-shot setting under MODEL_FOLDER (`<task>/<k>shot-seed<s>/`, a run cache or
an export of `adainfer.eval.harness.export_setting`), fit on `train`, score on `eval`:

- (a) `online_prefix_viterbi`: the CRF trained on whole sequences; the decision at layer l is
  the last label of the Viterbi path of the prefix 1..l (CRFPolicy before issue 12).
- (b) `offline_full_viterbi`: the same CRF; exit at the first layer labelled 1 in the Viterbi
  path over all layers. Not early exit: it reads layers after the exit.
- (c) `online_fixed`: `CRFPolicy` as it is now (trained on every prefix, decided by the
  marginal P(y_l = 1 | layers 1..l) > 0.5), asked at every layer.
- (c') `online_fixed_scheduled`: the same, asked from its learned `first_check_` only.
- ablations: `online_prefix_trained_viterbi` (prefix training, Viterbi last label) and
  `online_prefix_marginal` (whole-sequence training, marginal decision).

Plus, per setting, the whole-sequence CRF's weights and its layer-1 label alone vs in context.

Usage: python benchmarks/crf_online_offline.py [MODEL_FOLDER] [--shots 5] [--out benchmarks/results]
(prints the JSON; writes crf_online_offline.{json,md} under --out). Deterministic: no timings.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import pycrfsuite

from adainfer.eval.traces import Collection
from adainfer.eval.harness import SettingData, load_setting
from adainfer.eval.replay import evaluate_decisions, evaluate_policy, fit_on
from adainfer.policies.crf import CRFPolicy

FEATURES = ("gap", "top_prob")
DEFAULT_FOLDER = Path("runs/cache/Gemma3ForCausalLM-10f722d50feeb032")
DECODINGS = ("online_prefix_viterbi", "offline_full_viterbi", "online_fixed", "online_fixed_scheduled",
             "online_prefix_trained_viterbi", "online_prefix_marginal")
DIGITS = 4


def complete_settings(folder: Path, shots: int) -> tuple[list[Path], list[str]]:
    """Setting folders with a `setting.json` whose splits hold every prompt their prompt file lists
    (a cache still collecting has none yet, or fewer rows); the others as reasons to skip."""
    found, skipped = [], []
    for path in sorted(folder.glob(f"*/{shots}shot-seed*")):
        if not (path / "setting.json").exists():
            skipped.append(f"{path.relative_to(folder)}: no setting.json (still collecting?)")
            continue
        found.append(path)
    return found, skipped


def prompt_file_counts_match(path: Path, data: SettingData) -> bool:
    for split, collection in (("train", data.train), ("eval", data.eval)):
        prompts = path / f"{split}.prompts.jsonl"
        if prompts.exists() and len(prompts.read_text().splitlines()) != len(collection):
            return False
    return True


def items(rows: np.ndarray) -> list[dict[str, float]]:
    """The items CRFPolicy builds: a `_bias` plus the two features."""
    return [{"_bias": 1.0, **dict(zip(FEATURES, row))} for row in rows.tolist()]


def fit_crf(X: np.ndarray, y: np.ndarray, prefixes: bool) -> bytes:
    """A CRF model file with CRFPolicy's default hyperparameters, fitted on whole sequences or on
    every prefix."""
    params = CRFPolicy().get_params()
    trainer = pycrfsuite.Trainer(algorithm="lbfgs", verbose=False)
    trainer.set_params({"c1": params["c1"], "c2": params["c2"], "max_iterations": params["max_iterations"]})
    for seq, labels in zip(X, y):
        seq_items, tags = items(seq), [str(v) for v in labels]
        for end in range(1 if prefixes else len(seq_items), len(seq_items) + 1):
            trainer.append(seq_items[:end], tags[:end])
    with tempfile.TemporaryDirectory() as tmp:
        trainer.train(str(Path(tmp) / "crf.crfsuite"))
        return (Path(tmp) / "crf.crfsuite").read_bytes()


def open_tagger(model_bytes: bytes) -> pycrfsuite.Tagger:
    """A tagger reading `model_bytes` in place: the caller keeps the bytes alive while it is used."""
    tagger = pycrfsuite.Tagger()
    tagger.open_inmemory(model_bytes)
    return tagger


def prefix_decisions(tagger: pycrfsuite.Tagger, X: np.ndarray, rule: str) -> np.ndarray:
    """Online decisions (prompts, layers): `viterbi` = last label of the prefix's Viterbi path,
    `marginal` = P(last label = 1 | prefix) > 0.5."""
    decisions = np.zeros(X.shape[:2], dtype=np.int64)
    for prompt, seq in enumerate(X):
        seq_items = items(seq)
        for layer in range(len(seq_items)):
            prefix = seq_items[: layer + 1]
            if rule == "viterbi":
                decisions[prompt, layer] = tagger.tag(prefix)[-1] == "1"
            else:
                tagger.set(prefix)
                decisions[prompt, layer] = tagger.marginal("1", layer) > 0.5
    return decisions


def full_viterbi(tagger: pycrfsuite.Tagger, X: np.ndarray) -> np.ndarray:
    """Labels (prompts, layers) of the Viterbi path over all layers: an offline decoding."""
    return np.array([[label == "1" for label in tagger.tag(items(seq))] for seq in X], dtype=np.int64)


def scored(report, decisions: np.ndarray | None = None) -> dict[str, object]:
    figures = report.to_dict()
    row = {key: figures[key] for key in ("prompts", "dense_accuracy", "accuracy", "accuracy_change",
                                          "accuracy_change_low", "accuracy_change_high",
                                          "mean_exit_layer", "layers_saved")}
    if decisions is not None:
        row["exits_at_layer_1"] = int(decisions[:, 0].sum())
    return row


def diagnose(tagger: pycrfsuite.Tagger, X: np.ndarray, collection: Collection) -> dict[str, object]:
    """Why (a) exits at layer 1: weights of the whole-sequence CRF and, on `collection`'s prompts
    X, its layer-1 label and marginal with layer 1 alone (what online decoding sees) and within
    all layers."""
    info = tagger.info()
    state = info.state_features
    alone, in_context = [], []
    for seq in X:
        seq_items = items(seq)
        tagger.set(seq_items[:1])
        alone.append(tagger.marginal("1", 0))
        tagger.set(seq_items)
        in_context.append(tagger.marginal("1", 0))
    return {
        # crfsuite drops weights that L1 zeroed, so ask for all four
        "transition_weights": {f"{a}->{b}": round(info.transitions.get((a, b), 0.0), DIGITS)
                               for a in "01" for b in "01"},
        "state_weight_1_minus_0": {name: round(state.get((name, "1"), 0.0) - state.get((name, "0"), 0.0), DIGITS)
                                   for name in ("_bias", *FEATURES)},
        "layer_1_labelled_1_alone": int(sum(tagger.tag(items(seq[:1]))[0] == "1" for seq in X)),
        "layer_1_labelled_1_in_full_sequence": int(full_viterbi(tagger, X)[:, 0].sum()),
        "layer_1_gold_label_1": int(collection.labels[:, 0].sum()),
        "layer_1_mean_p1_alone": round(float(np.mean(alone)), DIGITS),
        "layer_1_mean_p1_in_full_sequence": round(float(np.mean(in_context)), DIGITS),
    }


def run_setting(data: SettingData) -> dict[str, object]:
    X_train, y_train = data.train.select(FEATURES), data.train.labels
    X_eval = data.eval.select(FEATURES)
    whole_model, prefix_model = fit_crf(X_train, y_train, False), fit_crf(X_train, y_train, True)
    whole, prefix_trained = open_tagger(whole_model), open_tagger(prefix_model)
    decisions = {
        "online_prefix_viterbi": prefix_decisions(whole, X_eval, "viterbi"),
        "offline_full_viterbi": full_viterbi(whole, X_eval),
        "online_prefix_trained_viterbi": prefix_decisions(prefix_trained, X_eval, "viterbi"),
        "online_prefix_marginal": prefix_decisions(whole, X_eval, "marginal"),
    }
    rows = {name: scored(evaluate_decisions(d, data.eval, candidates_only=False), d) for name, d in decisions.items()}
    policy = fit_on(CRFPolicy(features=FEATURES), data.train)
    rows["online_fixed"] = scored(evaluate_policy(policy, data.eval), policy.predict(X_eval))
    rows["online_fixed_scheduled"] = scored(evaluate_policy(policy, data.eval, policy.first_check_))
    rows["online_fixed_scheduled"]["first_check"] = policy.first_check_
    diagnostics = diagnose(whole, X_eval, data.eval)
    diagnostics["train_label_1_share"] = round(float(y_train.mean()), DIGITS)
    diagnostics["train_label_1_share_by_layer"] = [round(float(v), DIGITS) for v in y_train.mean(axis=0)]
    return {"setting": data.setting.name, "group": data.group, "train_prompts": len(data.train),
            "traces_sha256": data.content_sha256(), "decodings": {name: rows[name] for name in DECODINGS},
            "whole_sequence_crf": diagnostics}


def markdown(result: dict[str, object]) -> str:
    lines = ["# The paper's CRF, online vs offline", "", f"`{result['command']}`", "",
             "Features `gap`, `top_prob` (plus crfsuite's `_bias`), paper labels (layer's top-1 = gold), "
             "CRFPolicy's defaults (c1 = c2 = 0.1, 100 L-BFGS iterations); fitted on `train`, scored on `eval`. "
             "Accuracy change is against the dense model (last layer), with its 95 % paired-bootstrap interval; "
             "layers saved = 1 - exit layer / layers. Decodings:", ""]
    lines += ["- (a) `online_prefix_viterbi`: trained on whole sequences, decision at layer l = last label "
              "of the Viterbi path of layers 1..l (CRFPolicy before the fix).",
              "- (b) `offline_full_viterbi`: same CRF, exit at the first layer labelled 1 in the Viterbi path "
              "over all layers; reads later layers, so no early exit can do it.",
              "- (c) `online_fixed`: CRFPolicy now: trained on every prefix 1..l, decision "
              "P(y_l = 1 | layers 1..l) > 0.5; (c') `online_fixed_scheduled`: the same asked from its "
              "learned `first_check_` on (the CRF then sees layers first_check..l only).",
              "- ablations: `online_prefix_trained_viterbi` (prefix training, Viterbi last label), "
              "`online_prefix_marginal` (whole-sequence training, marginal > 0.5).", ""]
    if result["skipped"]:
        lines += ["Skipped: " + "; ".join(result["skipped"]), ""]
    lines += ["| setting | decoding | prompts | dense acc | acc change [95 %] | mean exit layer | layers saved "
              "| exits at layer 1 |", "|---|---|---|---|---|---|---|---|"]
    for setting in result["settings"]:
        for name, row in setting["decodings"].items():
            label = name + (f" (first_check {row['first_check']})" if "first_check" in row else "")
            exits_1 = row.get("exits_at_layer_1", "")
            lines.append(f"| {setting['setting']} | {label} | {row['prompts']} | {row['dense_accuracy']:.3f} "
                         f"| {row['accuracy_change']:+.3f} [{row['accuracy_change_low']:+.3f}, "
                         f"{row['accuracy_change_high']:+.3f}] | {row['mean_exit_layer']:.2f} "
                         f"| {row['layers_saved']:.3f} | {exits_1} |")
    lines += ["", "## The whole-sequence CRF at layer 1 (eval prompts)", "",
              "A one-layer prefix has no transition, so its label is argmax of the state score alone "
              "(w(1) - w(0) per feature below); within the full sequence the 1 -> 0 transition also "
              "weighs in. crfsuite has no start or end transitions.", "",
              "| setting | train label-1 share | transitions 0->0, 0->1, 1->0, 1->1 | state w(1)-w(0): bias, gap, "
              "top_prob | layer 1 labelled 1: alone / in full sequence / gold | mean P(y_1 = 1): alone / in full "
              "sequence |", "|---|---|---|---|---|---|"]
    for setting in result["settings"]:
        d = setting["whole_sequence_crf"]
        t, s = d["transition_weights"], d["state_weight_1_minus_0"]
        lines.append(f"| {setting['setting']} | {d['train_label_1_share']:.3f} "
                     f"| {t['0->0']:+.2f}, {t['0->1']:+.2f}, {t['1->0']:+.2f}, {t['1->1']:+.2f} "
                     f"| {s['_bias']:+.2f}, {s['gap']:+.2f}, {s['top_prob']:+.2f} "
                     f"| {d['layer_1_labelled_1_alone']} / {d['layer_1_labelled_1_in_full_sequence']} / "
                     f"{d['layer_1_gold_label_1']} of {setting['decodings']['online_fixed']['prompts']} "
                     f"| {d['layer_1_mean_p1_alone']:.3f} / {d['layer_1_mean_p1_in_full_sequence']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_folder", type=Path, nargs="?", default=DEFAULT_FOLDER)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    paths, skipped = complete_settings(args.model_folder, args.shots)
    settings = []
    for path in paths:
        data = load_setting(path)
        if not prompt_file_counts_match(path, data):
            skipped.append(f"{path.relative_to(args.model_folder)}: fewer traces than prompts (still collecting?)")
            continue
        settings.append(run_setting(data))
    if not settings:
        sys.exit(f"no complete {args.shots}-shot setting under {args.model_folder}")
    result = {"command": shlex.join(["python", *sys.argv]), "model_folder": str(args.model_folder),
              "shots": args.shots, "features": list(FEATURES), "skipped": sorted(skipped), "settings": settings}
    text, table = json.dumps(result, indent=1, sort_keys=True), markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "crf_online_offline.json").write_text(text + "\n")
    (args.out / "crf_online_offline.md").write_text(table)
    print(text)


if __name__ == "__main__":
    main()
