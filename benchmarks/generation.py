"""Multi-token generation with early exit against Hugging Face greedy `generate`, in one run.

For each prompt, in turn: `model.generate(do_sample=False)` (timed, the reference output), then
`adainfer.inference.generate.generate` in lossless mode at each `--draft-layer`, then in fast mode at each
`--fast-exit-layer` and with `--policy` if given. Running every method on a prompt back to back
keeps the comparison fair on a shared machine whose load drifts; speed is reported as the median
over prompts of the per-prompt tokens/s ratio to HF (end to end, and for decoding only, i.e.
after the first token, which both pay the same prompt pass for).

Prompts: SQuAD v1.1 dev questions with their paragraph, "{context}\\nQ: {question}\\nA:" (two
thirds), and free continuations, the first sentence of other dev paragraphs (one third), drawn
with a fixed seed. Quality: lossless output must equal HF's token for token; fast output is
compared with it (whole output identical, tokens before the first difference) and answers are
scored with SQuAD exact match / F1 (the official normalisation; the answer is the text up to the
first newline).

With `--hf-prompt-lookup N`, Hugging Face's own prompt-lookup decoding (`prompt_lookup_num_tokens=N`,
drafts copied from the prompt, verified by the full model) runs too, as the lossless speed-up a user
gets from transformers alone; it is timed and compared with plain `generate` like the others.

The honest FLOPs ratio of a method is the FLOPs it spent on the tokens after the first (drafts that were
rejected, lens reads and state-propagation fills included; `adainfer.engine.cost` units) over what dense
decoding of the same tokens costs, summed over prompts.

Usage: python benchmarks/generation.py [--model gemma3-270m] [--prompts 50] [--max-new-tokens 24]
       [--draft-layer 18] [--draft-weights model,int8,int8+lookup] [--prompt-lookup 10] [--draft-vocab 32768] [--fast-exit-layer 15,17] [--policy DIR]
       [--first-check 12] [--hf-prompt-lookup 0] [--threads 1] [--out benchmarks/results/generation-MODEL]
       (writes OUT.json, every prompt's outputs and timings, and OUT.md, the summary table)
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import shlex
import statistics
import string
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_files import write_report  # noqa: E402

from adainfer.data.tasks import default_data_dir  # noqa: E402
from adainfer.engine.model import EarlyExitModel  # noqa: E402
from adainfer.inference.generate import generate  # noqa: E402
from adainfer.policies.io import load_policy  # noqa: E402


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(char for char in text.lower() if char not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(generated: str, golds: list[str]) -> tuple[float, float]:
    """Exact match and F1 of the answer (text up to the first newline) against the best gold answer."""
    answer = generated.strip().split("\n")[0].strip()
    exact = max(float(normalize_answer(answer) == normalize_answer(gold)) for gold in golds)
    return exact, max(squad_f1(answer, gold) for gold in golds)


def build_prompts(count: int, seed: int = 0) -> list[dict]:
    """`count` prompts: two thirds SQuAD questions with their paragraph, one third free continuations."""
    data = json.loads((default_data_dir() / "squad" / "dev-v1.1.json").read_text())
    paragraphs = [paragraph for article in data["data"] for paragraph in article["paragraphs"]]
    chosen = random.Random(seed).sample(paragraphs, count)
    questions = count - count // 3
    prompts = []
    for index, paragraph in enumerate(chosen):
        if index < questions:
            qa = paragraph["qas"][0]
            prompts.append({"kind": "squad", "prompt": f"{paragraph['context']}\nQ: {qa['question']}\nA:",
                            "golds": [answer["text"] for answer in qa["answers"]]})
        else:
            first_sentence = re.split(r"(?<=[.!?])\s", paragraph["context"].strip())[0]
            prompts.append({"kind": "continuation", "prompt": first_sentence, "golds": []})
    return prompts


class FirstTokenClock:
    """A `generate` streamer noting when the first new token arrives (its first `put` is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def hf_greedy(model: EarlyExitModel, prompt: str, max_new_tokens: int, prompt_lookup: int = 0) -> dict:
    """`model.generate(do_sample=False)`, timed; with `prompt_lookup` > 0, its prompt-lookup decoding."""
    input_ids = model.encode(prompt)
    clock = FirstTokenClock()
    lookup = {"prompt_lookup_num_tokens": prompt_lookup} if prompt_lookup else {}
    start = time.perf_counter()
    output = model.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                  max_new_tokens=max_new_tokens, streamer=clock, **lookup)
    seconds = time.perf_counter() - start
    token_ids = output[0, input_ids.shape[1]:].tolist()
    return {"token_ids": token_ids, "text": model.tokenizer.decode(token_ids, skip_special_tokens=True),
            "seconds": seconds, "first_token_seconds": clock.first_token_at - start}


def decode_rate(tokens: int, seconds: float, first_token_seconds: float) -> float:
    """Tokens per second after the first token; NaN when there was nothing after it."""
    return (tokens - 1) / (seconds - first_token_seconds) if tokens > 1 and seconds > first_token_seconds else float("nan")


def common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


def mean_or_none(values: list[float]) -> float | None:
    """The mean rounded to 2 places; None for no values (HF's own methods count no layers)."""
    return round(statistics.mean(values), 2) if values else None


def summarise(records: list[dict], name: str, num_layers: int) -> dict:
    rows = [record["methods"][name] for record in records]
    dense = [record["hf"] for record in records]
    squad = [(row, record) for row, record in zip(rows, records) if record["kind"] == "squad"]
    finite = lambda values: [value for value in values if value is not None and value == value]  # noqa: E731
    summary = {
        "identical_to_hf": f"{sum(row['token_ids'] == hf['token_ids'] for row, hf in zip(rows, dense))}/{len(rows)}",
        "median_tokens_per_second_ratio": round(statistics.median(row["speed_ratio"] for row in rows), 3),
        "median_decode_tokens_per_second_ratio": round(statistics.median(finite([row["decode_ratio"] for row in rows])), 3),
        "median_tokens_per_second": round(statistics.median(row["tokens_per_second"] for row in rows), 2),
        "mean_layers_per_token": mean_or_none(finite([row["layers_per_token"] for row in rows])),
        "mean_exit_layer": mean_or_none([layer for row in rows for layer in row["exit_layers"][1:]]),
        "lens_rows_per_token": round(sum(row["lens_rows"] for row in rows) / sum(len(row["token_ids"]) for row in rows), 2),
        "mean_tokens_before_first_difference": round(statistics.mean(
            common_prefix(row["token_ids"], hf["token_ids"]) for row, hf in zip(rows, dense)), 2),
    }
    if "flops_units" in rows[0]:
        dense_units = sum(row["dense_flops_units"] for row in rows)
        summary["honest_flops_ratio"] = round(sum(row["flops_units"] for row in rows) / dense_units, 3)
    if rows[0].get("accepted_lengths") is not None:
        accepted = [length for row in rows for length in row["accepted_lengths"]]
        drafted = [length for row in rows for length in row["draft_lengths"]]
        summary["mean_accepted_draft_length"] = round(statistics.mean(accepted), 3)
        summary["mean_draft_length"] = round(statistics.mean(drafted), 3)
        summary["acceptance_rate"] = round(sum(accepted) / sum(drafted), 3)
    if squad:
        summary["squad_exact_match"] = round(statistics.mean(row["squad"][0] for row, _ in squad), 3)
        summary["squad_f1"] = round(statistics.mean(row["squad"][1] for row, _ in squad), 3)
    summary["num_layers"] = num_layers
    return summary


def hf_lookup_row(model: EarlyExitModel, item: dict, max_new_tokens: int, lookup: int, dense: dict,
                  dense_decode: float) -> dict:
    """HF prompt-lookup decoding on `item`, as a method row compared with plain HF greedy `dense`."""
    result = hf_greedy(model, item["prompt"], max_new_tokens, prompt_lookup=lookup)
    row = {**result, "exit_layers": [], "lens_rows": 0, "layers_per_token": None,
           "tokens_per_second": len(result["token_ids"]) / result["seconds"]}
    return compared_with_hf(row, item, dense, dense_decode)


def compared_with_hf(row: dict, item: dict, dense: dict, dense_decode: float) -> dict:
    """`row` (a method's text, tokens and times on `item`) with its ratios to HF greedy `dense` and its SQuAD scores."""
    row["speed_ratio"] = row["tokens_per_second"] / dense["tokens_per_second"]
    row["decode_ratio"] = decode_rate(len(row["token_ids"]), row["seconds"], row["first_token_seconds"]) / dense_decode
    if item["golds"]:
        row["squad"] = squad_scores(row["text"], item["golds"])
    return row


MARKDOWN_COLUMNS = (
    ("identical to HF", "identical_to_hf"), ("tokens/s ratio", "median_tokens_per_second_ratio"),
    ("decode ratio", "median_decode_tokens_per_second_ratio"), ("honest FLOPs ratio", "honest_flops_ratio"),
    ("layers / token", "mean_layers_per_token"), ("accepted / drafted", "acceptance_rate"),
    ("tokens before first difference", "mean_tokens_before_first_difference"),
    ("SQuAD EM", "squad_exact_match"), ("SQuAD F1", "squad_f1"),
)


def markdown(report: dict) -> str:
    """The summary table: one row per method, medians of per-prompt ratios to plain HF greedy `generate`."""
    dense = report["hf_generate"]
    lines = [f"Command: `{report['command']}`", "",
             f"Model {report['model']} ({report['num_layers']} layers), {report['threads']} torch thread(s), "
             f"{sum(report['prompts'].values())} prompts ({', '.join(f'{n} {k}' for k, n in report['prompts'].items())}; "
             f"mean {report['mean_prompt_tokens']} prompt tokens), {report['max_new_tokens']} new tokens, greedy. "
             f"HF `generate`: median {dense['median_tokens_per_second']} tokens/s, SQuAD EM {dense['squad_exact_match']}, "
             f"F1 {dense['squad_f1']}. Ratios are medians over prompts of each method's tokens/s over HF's on the same "
             f"prompt, run just before it; the decode ratio leaves out the time to the first token. The honest FLOPs "
             f"ratio counts every pass after the first token (rejected drafts, lens reads, fills) against dense "
             f"decoding of the same tokens; HF's prompt lookup has none (–). Run took {report['seconds']} s.", "",
             "| method | " + " | ".join(title for title, _ in MARKDOWN_COLUMNS) + " |",
             "|---|" + "---|" * len(MARKDOWN_COLUMNS)]
    for name, summary in report["methods"].items():
        cells = [summary.get(key) for _, key in MARKDOWN_COLUMNS]
        lines.append(f"| {name} | " + " | ".join("–" if cell is None or cell != cell else str(cell)
                                                    for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m", help="embedded model name, local directory or .gguf")
    parser.add_argument("--prompts", type=int, default=50, help="number of prompts (>= 3)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--draft-layer", default=None, help="lossless draft layer(s), comma-separated (default: L)")
    parser.add_argument("--draft-weights", default="model",
                        help="lossless draft weights, comma-separated: model (its own layers), int8 (int8 copies); "
                             "WEIGHTS+lookup also copies drafts from the text (--prompt-lookup tokens)")
    parser.add_argument("--prompt-lookup", type=int, default=10, help="drafts copied per round by WEIGHTS+lookup")
    parser.add_argument("--draft-vocab", type=int, default=32768, help="draft head rows: ids 0..N-1 (0 = full head)")
    parser.add_argument("--fast-exit-layer", default="15,17", help="fast-mode fixed exit layer(s), comma-separated, or ''")
    parser.add_argument("--policy", default=None, help="stop-policy directory for a fast-mode run")
    parser.add_argument("--first-check", type=int, default=12, help="first layer at which the policy is asked")
    parser.add_argument("--hf-prompt-lookup", type=int, default=0,
                        help="also time HF generate with prompt_lookup_num_tokens=N (0: not run)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="prompt sample seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="path prefix of the .json and .md (default: benchmarks/results/generation-MODEL)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.prompts < 3:
        parser.error("--prompts must be >= 3")

    model = EarlyExitModel.from_pretrained(args.model)
    num_layers = model.num_layers
    layers = lambda text: [int(item) for item in text.split(",") if item.strip()]  # noqa: E731
    draft_layers = layers(args.draft_layer) if args.draft_layer else [num_layers]
    methods = {}
    for variant in args.draft_weights.split(","):
        weights, _, lookup = variant.partition("+")
        if lookup not in ("", "lookup"):
            parser.error(f"--draft-weights: {variant!r} is not WEIGHTS or WEIGHTS+lookup")
        lookup_size = args.prompt_lookup if lookup else 0
        for layer in draft_layers:
            name = (f"lossless draft_layer={layer}" + ("" if weights == "model" else f" draft_weights={weights}")
                    + (f" prompt_lookup={lookup_size}" if lookup_size else ""))
            methods[name] = dict(mode="lossless", draft_layer=layer, draft_vocab=args.draft_vocab or None,
                                 draft_weights=weights, prompt_lookup=lookup_size)
    methods.update({f"fast exit_layer={layer}": dict(mode="fast", draft_layer=layer)
                    for layer in layers(args.fast_exit_layer)})
    if args.policy:
        policy = load_policy(args.policy, expected_identity=model.identity())
        methods[f"fast policy={args.policy} first_check={args.first_check}"] = dict(
            mode="fast", policy=policy, first_check=args.first_check)
    lookup_name = f"hf generate prompt_lookup_num_tokens={args.hf_prompt_lookup}"
    prompts = build_prompts(args.prompts, args.seed)

    for options in methods.values():  # first calls allocate, pick kernels and build int8 copies
        if options["mode"] == "lossless":
            generate(model, "Warm-up.", 4, **options)
    hf_greedy(model, "Warm-up.", 4)
    records = []
    started = time.perf_counter()
    for number, item in enumerate(prompts, start=1):
        dense = hf_greedy(model, item["prompt"], args.max_new_tokens)
        dense["tokens_per_second"] = len(dense["token_ids"]) / dense["seconds"]
        dense_decode = decode_rate(len(dense["token_ids"]), dense["seconds"], dense["first_token_seconds"])
        if item["golds"]:
            dense["squad"] = squad_scores(dense["text"], item["golds"])
        record = {"kind": item["kind"], "prompt_tokens": model.encode(item["prompt"]).shape[1], "hf": dense,
                  "methods": {}}
        if args.hf_prompt_lookup:
            record["methods"][lookup_name] = hf_lookup_row(model, item, args.max_new_tokens, args.hf_prompt_lookup,
                                                           dense, dense_decode)
        for name, options in methods.items():
            result = generate(model, item["prompt"], args.max_new_tokens, **options)
            row = {key: getattr(result, key) for key in (
                "text", "token_ids", "exit_layers", "lens_rows", "draft_head_rows", "layer_passes",
                "attention_only_passes", "seconds", "first_token_seconds", "tokens_per_second", "layers_per_token",
                "flops_units", "dense_flops_units", "honest_flops_ratio")}
            if options["mode"] == "lossless":
                row["draft_lengths"], row["accepted_lengths"] = result.draft_lengths, result.accepted_lengths
            record["methods"][name] = compared_with_hf(row, item, dense, dense_decode)
        records.append(record)
        speeds = ", ".join(f"{name}: {row['speed_ratio']:.2f}x" for name, row in record["methods"].items())
        print(f"[{number}/{len(prompts)}] {time.perf_counter() - started:.0f}s {speeds}", file=sys.stderr, flush=True)

    squad_dense = [record["hf"]["squad"] for record in records if record["kind"] == "squad"]
    report = {
        "benchmark": "generation",
        "command": "python " + " ".join(shlex.quote(part) for part in sys.argv),
        "model": args.model,
        "num_layers": num_layers,
        "threads": args.threads,
        "max_new_tokens": args.max_new_tokens,
        "draft_vocab": args.draft_vocab or "full",
        "prompts": dict(collections.Counter(record["kind"] for record in records)),
        "mean_prompt_tokens": round(statistics.mean(record["prompt_tokens"] for record in records), 1),
        "hf_generate": {
            "median_tokens_per_second": round(statistics.median(r["hf"]["tokens_per_second"] for r in records), 2),
            "squad_exact_match": round(statistics.mean(score[0] for score in squad_dense), 3) if squad_dense else None,
            "squad_f1": round(statistics.mean(score[1] for score in squad_dense), 3) if squad_dense else None,
        },
        "methods": {name: summarise(records, name, num_layers)
                    for name in ([lookup_name] if args.hf_prompt_lookup else []) + list(methods)},
        "seconds": round(time.perf_counter() - started, 1),
        "per_prompt": records,
    }
    out = args.out or Path("benchmarks/results") / f"generation-{Path(args.model).name.removesuffix('.gguf')}"
    write_report(out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
