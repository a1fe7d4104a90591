"""First load (GGUF dequantised and converted into an empty cache) vs second load (the cached fp32 copy).

Usage: python benchmarks/load_time.py [--model gemma3-270m]  (prints JSON; uses a temporary cache)
"""

from __future__ import annotations

import argparse
import json
import tempfile

from adainfer.engine.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gemma3-270m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        first = load_model(args.model, cache_dir)
        del first.model
        second = load_model(args.model, cache_dir)
    print(json.dumps({
        "benchmark": "load_time",
        "model": args.model,
        "first_load_seconds": round(first.load_seconds, 1),
        "first_load_converted": first.converted_now,
        "second_load_seconds": round(second.load_seconds, 1),
        "second_load_converted": second.converted_now,
        "speedup": round(first.load_seconds / second.load_seconds, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
