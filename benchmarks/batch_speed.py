"""Wall-clock time of early exit run per prompt and in batches, against the dense model, on SST-2.

Four ways to answer the same N five-shot SST-2 dev prompts, all timed in one run: the dense Hugging
Face forward per prompt, `predict` per prompt, the dense forward on left-padded batches, and
`predict_batch` on the same batches. The stop policy exits every prompt at `--exit-layer`: the
time of a layer does not depend on why a prompt stops there, so a fixed layer isolates the cost
of the machinery (per-layer lens, Python loop, padding) from the quality of a policy.
`ideal_ratio` = exit_layer / L is what skipping layers alone would save.

Usage: python benchmarks/batch_speed.py [--model gemma3-270m] [--limit 64] [--batch-size 16]
       [--exit-layer 14] [--repeats 3] [--threads 1]   (prints JSON; times are seconds for all N)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from adainfer.batch import encode_batch
from adainfer.model import EarlyExitModel
from adainfer.predict import predict, predict_batch
from adainfer.tasks import build_prompts, load_examples


class ExitAtLayer:
    """Stop policy that exits every prompt after `exit_layer` layers."""

    features = ("depth", "gap")  # gap is not used to decide; it shows batching's float error

    def __init__(self, exit_layer: int) -> None:
        self.exit_layer = exit_layer

    def should_exit(self, trace: np.ndarray) -> bool:
        return len(trace) >= self.exit_layer


def timed(run: Callable[[], list], repeats: int) -> tuple[float, list]:
    """Median wall-clock seconds of `run()` over `repeats` calls, and what the last call returned."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m", help="embedded model name or local directory")
    parser.add_argument("--limit", type=int, default=64, help="number of SST-2 dev prompts (N)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--exit-layer", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = EarlyExitModel.from_pretrained(args.model)
    if not 1 <= args.exit_layer <= model.num_layers:
        parser.error(f"--exit-layer must be in 1..{model.num_layers}")
    prompts = [item.prompt for item in build_prompts(load_examples("sst2", "eval"), load_examples("sst2", "train"),
                                                    shots=5, limit=args.limit, seed=1)]
    chunks = [prompts[i: i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    batches = [encode_batch(model, chunk) for chunk in chunks]
    policy = ExitAtLayer(args.exit_layer)

    @torch.no_grad()
    def dense_per_prompt() -> list:
        return [model.model(model.encode(prompt), logits_to_keep=1).logits for prompt in prompts]

    @torch.no_grad()
    def dense_batched() -> list:
        return [model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids, logits_to_keep=1).logits for batch in batches]

    dense_per_prompt()  # warm-up: first calls allocate and pick kernels
    times = {}
    times["dense_per_prompt"], _ = timed(dense_per_prompt, args.repeats)
    times["early_exit_per_prompt"], alone = timed(lambda: [predict(model, p, policy) for p in prompts], args.repeats)
    times["dense_batched"], _ = timed(dense_batched, args.repeats)
    times["early_exit_batched"], together = timed(
        lambda: [result for chunk in chunks for result in predict_batch(model, chunk, policy)], args.repeats)
    real_tokens = sum(sum(batch.lengths) for batch in batches)
    padded_tokens = sum(batch.input_ids.numel() for batch in batches)
    print(json.dumps({
        "benchmark": "batch_speed",
        "model": args.model,
        "num_layers": model.num_layers,
        "exit_layer": args.exit_layer,
        "prompts": len(prompts),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": args.threads,
        "real_tokens": real_tokens,
        "padded_tokens": padded_tokens,
        "seconds": {name: round(value, 3) for name, value in times.items()},
        "ratios": {
            "ideal": round(args.exit_layer / model.num_layers, 3),
            "early_exit_vs_dense_per_prompt": round(times["early_exit_per_prompt"] / times["dense_per_prompt"], 3),
            "early_exit_batched_vs_dense_batched": round(times["early_exit_batched"] / times["dense_batched"], 3),
            "dense_batched_vs_dense_per_prompt": round(times["dense_batched"] / times["dense_per_prompt"], 3),
            "early_exit_batched_vs_early_exit_per_prompt": round(
                times["early_exit_batched"] / times["early_exit_per_prompt"], 3),
        },
        "batched_answers_equal_per_prompt": sum(a.answer_token_id == b.answer_token_id for a, b in zip(alone, together)),
        "max_abs_trace_difference": max(float(np.abs(np.subtract(a.trace, b.trace)).max())
                                        for a, b in zip(alone, together)),
    }, indent=2))


if __name__ == "__main__":
    main()
