"""Per-layer statistics of a collection: how often each layer is right, and how confident it is.

Usage: python benchmarks/layer_stats.py ROWS.jsonl  (prints JSON, one entry per layer)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adainfer.eval.traces import load_collection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rows", type=Path)
    collection = load_collection(parser.parse_args().rows)
    final = collection.top1[:, -1:]
    layers = []
    for layer in range(collection.features.shape[1]):
        entry = {"layer": layer + 1, "top1_is_gold": float(collection.labels[:, layer].mean()),
                 "top1_is_final": float((collection.top1[:, layer] == final[:, 0]).mean())}
        for name in ("top_prob", "gap"):
            if name in collection.feature_names:
                entry[f"mean_{name}"] = float(collection.select([name])[:, layer, 0].mean())
        layers.append({key: round(value, 3) if isinstance(value, float) else value for key, value in entry.items()})
    print(json.dumps({"prompts": int(collection.features.shape[0]), "layers": layers}, indent=1))


if __name__ == "__main__":
    main()
