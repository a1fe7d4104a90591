"""Executor at full depth vs the model's own forward: max |logit difference| of the last token, per family.

Usage: python benchmarks/faithfulness.py [--real gemma3-270m smollm2-135m]  (prints JSON)
"""

from __future__ import annotations

import argparse
import json

import torch

from adainfer.engine.executor import LayerExecutor
from adainfer.engine.model import EarlyExitModel
from adainfer.testing.tiny_models import TINY_CONFIGS, VOCAB, tiny_model

PROMPT = "Q: a gorgeous, witty, seductive movie.\nA: positive\n\nQ: the plot is dull and lifeless.\nA:"


def max_logit_difference(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    executor = LayerExecutor(model)
    with torch.no_grad():
        expected = model(input_ids).logits[:, -1]
        inputs = executor.prepare(input_ids)
        hidden = executor.run_layers(inputs.embeddings, inputs, 0, executor.num_layers)
        return (executor.lens(hidden[:, -1]) - expected).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", nargs="*", default=["gemma3-270m"], help="embedded or local models to check too")
    args = parser.parse_args()
    rows = []
    input_ids = torch.randint(0, VOCAB, (2, 23), generator=torch.Generator().manual_seed(0))
    for family in sorted(TINY_CONFIGS):
        model = tiny_model(family)
        rows.append({"model": f"tiny-{family}", "class": type(model).__name__,
                     "max_abs_logit_diff": max_logit_difference(model, input_ids)})
    for source in args.real:
        loaded = EarlyExitModel.from_pretrained(source)
        rows.append({"model": source, "class": type(loaded.model).__name__,
                     "max_abs_logit_diff": max_logit_difference(loaded.model, loaded.encode(PROMPT))})
    print(json.dumps({"benchmark": "faithfulness", "dtype": "float32", "tolerance": 1e-4, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
