"""Python-side bookkeeping of `predict_batch` per (row, layer), apart from the layers and the lens.

On a tiny random model (hidden 32, 4 layers) a layer costs microseconds, so what remains is the
loop's own work: copying each row's features and top-1 out of the readout, asking the policy,
building results. `bare` runs exactly the same layers and lens reads through the library (`prepare`,
then one `run_layers` call whose `on_layer` is `FeatureReader.read`; no row ever leaves) without
any per-row step; the difference from `predict_batch`, divided by rows x layers, is the bookkeeping
cost of one (row, layer). Multiply it by batch x layers to compare with a real model's layer time (Gemma 3 270M, 1 CPU thread: ~25 ms
per layer for one 100-token prompt).

Usage: python benchmarks/loop_overhead.py [--batch-size 16] [--repeats 200]  (prints JSON)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from adainfer.engine.batch import encode_batch
from adainfer.engine.features import FeatureReader
from adainfer.engine.model import EarlyExitModel
from adainfer.inference.predict import predict_batch
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.svm import SVMPolicy
from adainfer.testing.tiny_models import tiny_exit_model

FEATURES = ("cand_gap", "cand_top_prob", "depth")


def never_exiting_svm() -> SVMPolicy:
    """An RBF SVM over FEATURES whose labels say "exit at depth 1.0": it is never asked there."""
    rng = np.random.default_rng(0)
    depth = np.tile([0.25, 0.5, 0.75, 1.0], (50, 1))
    X = np.stack([rng.uniform(0, 1, depth.shape), rng.uniform(0.5, 1, depth.shape), depth], axis=-1)
    return SVMPolicy(FEATURES).fit(X, (depth >= 1.0).astype(int))


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def paired_medians(first: Callable[[], object], second: Callable[[], object],
                   repeats: int) -> tuple[float, float, float]:
    """Medians of each run's seconds and of their paired difference, alternating the two calls."""
    first(), second()
    pairs = [(seconds(first), seconds(second)) for _ in range(repeats)]
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(b - a for a, b in pairs))


@torch.no_grad()
def bare(model: EarlyExitModel, prompts: list[str], features: tuple[str, ...], candidate_ids: list[int]) -> None:
    """The layers and lens reads of `predict_batch` when no row exits, without per-row steps."""
    batch = encode_batch(model, prompts)
    inputs = model.executor.prepare(batch.input_ids, batch.attention_mask, position_ids=batch.position_ids)
    with FeatureReader(model.executor, features, candidate_ids) as reader:
        reader.reset(inputs.embeddings)
        model.executor.run_layers(inputs.embeddings, inputs, 0, model.num_layers, on_layer=reader.read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = tiny_exit_model("gemma3")  # tiny random Gemma 3, one token per printable character
    prompts = [f"Q: prompt number {i} {'x' * (i % 5)}\nA:" for i in range(args.batch_size)]
    candidate_ids = model.candidate_tokens(("p", "n"))
    row_layers = args.batch_size * model.num_layers
    policies = {"svm_rbf": never_exiting_svm(), "cand_gap_threshold": GapThresholdPolicy(2.0, "cand_gap")}
    rows = {}
    for name, policy in policies.items():
        bare_seconds, batch_seconds, extra = paired_medians(
            lambda: bare(model, prompts, policy.features, candidate_ids),
            lambda: predict_batch(model, prompts, policy, candidate_ids), args.repeats)
        assert all(result.exit_layer == model.num_layers for result in predict_batch(model, prompts, policy,
                                                                                      candidate_ids))
        trace = np.zeros((2, len(policy.features)), dtype=np.float32)
        call = statistics.median(seconds(lambda: [policy.should_exit(trace) for _ in range(100)])
                                 for _ in range(args.repeats)) / 100
        rows[name] = {
            "bare_layers_and_lens_ms": round(bare_seconds * 1e3, 3),
            "predict_batch_ms": round(batch_seconds * 1e3, 3),
            "bookkeeping_us_per_row_layer": round(extra / row_layers * 1e6, 2),
            "should_exit_us_per_call": round(call * 1e6, 2),
        }
    print(json.dumps({
        "benchmark": "loop_overhead",
        "model": "tiny-gemma3 (hidden 32, 4 layers, char tokenizer)",
        "batch_size": args.batch_size,
        "layers": model.num_layers,
        "repeats": args.repeats,
        "policies": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
