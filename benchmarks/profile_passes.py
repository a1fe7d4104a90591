"""Where the time of each of the four passes goes (`torch.profiler`, CPU), at one thread count and batch size.

The passes are those of `benchmarks/prefix_cache.py` / the fit card: (a) the model's forward on the
full prompt, (b) its forward over the cached demonstrations, (c) our walk at full depth over them,
(d) early exit over them. Each is warmed up once, then profiled over the same batches; the table
lists the operators with the most self CPU time, and the wall seconds of each pass.

Usage: python benchmarks/profile_passes.py --classifier runs/fit/gemma3-270m-sst2 [--threads 2] [--batch-size 16]
       [--prompts 32] [--out benchmarks/results/profile_passes_2threads_batch16.md]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prefix_cache import test_prompts  # noqa: E402

from adainfer.engine.files import write_text_atomic  # noqa: E402
from adainfer.engine.model import EarlyExitModel  # noqa: E402
from adainfer.fit.cached_prefix import use_demonstrations  # noqa: E402
from adainfer.fit.classifier import load_classifier  # noqa: E402
from adainfer.inference.dense import dense_logits  # noqa: E402
from adainfer.inference.predict import predict_batch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--rows", type=int, default=12, help="operators listed per pass")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = EarlyExitModel.from_pretrained(None)
    policy, card = load_classifier(args.classifier, model)
    prompts = test_prompts(model, card, args.task, args.prompts)
    use_demonstrations(model, card.demonstrations)
    never = model.num_layers + 1
    passes = {
        "a full-prompt forward": lambda batch: dense_logits(model, batch),
        "b forward over the cached prefix": lambda batch: dense_logits(model, batch, use_prefix=True),
        "c our walk at full depth, cached": lambda batch: predict_batch(model, batch, policy, card.answer_token_ids,
                                                                        first_check=never),
        "d early exit, cached": lambda batch: predict_batch(model, batch, policy, card.answer_token_ids),
    }
    batches = [prompts[start:start + args.batch_size] for start in range(0, len(prompts), args.batch_size)]
    command = shlex.join(["python", "benchmarks/profile_passes.py", *sys.argv[1:]])
    lines = [f"Command: `{command}`", "", f"{len(prompts)} prompts, batch {args.batch_size}, {args.threads} torch "
             f"threads, load average {os.getloadavg()[0]:.2f} at the start.", ""]
    for name, run in passes.items():
        run(batches[0])
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            started = time.perf_counter()
            for batch in batches:
                run(batch)
            wall = time.perf_counter() - started
        lines += [f"## {name}: {wall:.3f} s wall", "", "```",
                  profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                max_name_column_width=36), "```", ""]
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
