"""`adainfer generate`: multi-token generation with early exit, streamed to the terminal.

Registered on the main app by `adainfer.cli`, as `cli_eval` is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from adainfer.cli import CacheOption, ModelOption, _clean_errors, _load, app, err
from adainfer.inference.generate import MODES, GeneratedToken, generate
from adainfer.policies.io import load_policy


def _show(token: GeneratedToken) -> None:
    sys.stdout.write(token.text)
    sys.stdout.flush()


@app.command("generate")
@_clean_errors
def generate_command(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Most tokens to generate.")] = 32,
    mode: Annotated[str, typer.Option(help=f"{' or '.join(MODES)}: lossless is the dense model's greedy output, "
                                           "drafted early and verified; fast takes each token from its exit "
                                           "layer, unverified.")] = "lossless",
    policy_dir: Annotated[Path | None, typer.Option("--policy", "-p", help="Stop-policy directory choosing each token's exit layer.")] = None,
    draft_layer: Annotated[int | None, typer.Option(help="Fixed draft layer (lossless; default: the last) or exit layer (fast).")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop once the output contains this string (repeatable); streamed, then cut from the text.")] = None,
    first_check: Annotated[int | None, typer.Option(help="First layer at which the policy is asked (1-based); "
                                                    "default: the schedule the policy learned.")] = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Generate greedily with early exit: tokens stream to stdout, a JSON summary goes to stderr."""
    loaded = _load(model, cache_dir)
    policy = load_policy(policy_dir, expected_identity=loaded.identity()) if policy_dir else None
    result = generate(loaded, prompt, max_new_tokens, mode=mode, policy=policy, draft_layer=draft_layer,
                      stop=stop, first_check=first_check, on_token=_show)
    sys.stdout.write("\n")
    summary = {"mode": result.mode, "tokens": len(result.token_ids), "finish_reason": result.finish_reason,
               "tokens_per_second": round(result.tokens_per_second, 2), "seconds": round(result.seconds, 3),
               "mean_exit_layer": round(result.mean_exit_layer, 2), "num_layers": result.num_layers,
               "layers_per_token": round(result.layers_per_token, 2), "lens_rows": result.lens_rows}
    if result.mode == "lossless":
        summary["mean_accepted_length"] = round(result.mean_accepted_length, 2)
    err.print(json.dumps(summary), highlight=False, soft_wrap=True)
