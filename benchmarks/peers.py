"""llama.cpp, the engine a CPU user would pick, beside our passes on the same GGUF file and prompts, in one run.

llama.cpp (the `llama-cpp-python` package: `pip install -e .[peers]`, built from source in
about ten minutes, so CI does not install it) loads the very GGUF file the embedded model is
converted from, and answers each prompt at batch 1 three ways:

- `llama_cpp_full`: the whole prompt from an empty context;
- `llama_cpp_state`: the demonstrations evaluated once, their state saved (`Llama.save_state`)
  and restored (`load_state`) before each prompt's own tokens (the wrapper's `load_state` also
  rewrites its n_ctx x vocabulary score array, 512 MB here, so this pass measures the Python
  wrapper as much as llama.cpp);
- `llama_cpp_rewind`: the demonstrations evaluated once and kept in the context; each prompt
  rewinds to the end of the demonstrations (`n_tokens = p`, the positions after it dropped from
  the KV cache by `eval`) and evaluates its own tokens: the cheapest reuse llama.cpp offers.

They are timed in the same rotation as our four passes (`adainfer.fit.timing.measure_speedup`:
(a) full-prompt forward, (b) forward over the prefilled prefix, (c) our walk at full depth over
the cached prefix, (d) early exit over it), prompt by prompt, with the same thread count for
both engines. The answer of each llama.cpp pass is the best of the classifier's answer tokens
(the same ids: transformers' tokenizer is read from this GGUF file), compared with (a)'s.

Usage: python benchmarks/peers.py --classifier runs/fit/gemma3-270m-sst2 [--prompts 64] [--threads 1,2]
       [--out benchmarks/results/peers]   (writes peers.json and peers.md)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_files import write_report  # noqa: E402

from prefix_cache import test_prompts  # noqa: E402

from adainfer.engine.loading import EMBEDDED_MODELS, cache_root  # noqa: E402
from adainfer.engine.model import EarlyExitModel  # noqa: E402
from adainfer.fit.cached_prefix import use_demonstrations  # noqa: E402
from adainfer.fit.classifier import load_classifier  # noqa: E402
from adainfer.fit.timing import measure_speedup  # noqa: E402
from adainfer.inference.dense import dense_answers  # noqa: E402


def _llama(gguf: Path, threads: int):
    """A llama.cpp context on `gguf` without its AMX weight repacking (`use_extra_bufts=False`).

    On this machine's CPU (AMX_INT8) llama.cpp 0.3.36 repacks some weights into AMX buffers and
    then segfaults in its first decode (ggml-org/llama.cpp#11115 reports the same class of crash);
    its plain CPU kernels (AVX-512, VNNI) run. `Llama` has no argument for it, so the model
    parameters it starts from are patched while it is built.
    """
    import llama_cpp
    from llama_cpp import llama as llama_module

    defaults = llama_module.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_batch=512, n_threads=threads,
                               n_threads_batch=threads, verbose=False)
    finally:
        llama_module.llama_cpp.llama_model_default_params = defaults


class LlamaPasses:
    """The three llama.cpp passes, each on its own context (so one never clobbers another's KV
    cache between turns of the rotation); each records its answers."""

    NAMES = ("llama_cpp_full", "llama_cpp_state", "llama_cpp_rewind")

    def __init__(self, gguf: Path, threads: int, prefix_text: str, candidates: Sequence[int]) -> None:
        self.contexts = {name: _llama(gguf, threads) for name in self.NAMES}
        self.candidates = list(candidates)
        self.prefix = self._tokens("llama_cpp_full", prefix_text)
        for name in ("llama_cpp_state", "llama_cpp_rewind"):
            self.contexts[name].eval(self.prefix)
        self.state = self.contexts["llama_cpp_state"].save_state()
        self.answers: dict[str, list[int]] = {name: [] for name in self.NAMES}
        self.fallbacks = 0

    def _tokens(self, name: str, text: str) -> list[int]:
        return self.contexts[name].tokenize(text.encode(), add_bos=True, special=True)

    def _answer(self, name: str, context_name: str | None = None) -> None:
        llm = self.contexts[context_name or name]
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
        self.answers[name].append(self.candidates[int(np.argmax(logits[self.candidates]))])

    def _full(self, prompt: str, name: str) -> None:
        """The whole prompt on the full pass's context (also the fallback of the cached passes)."""
        llm = self.contexts["llama_cpp_full"]
        llm.reset()
        llm.eval(self._tokens("llama_cpp_full", prompt))
        self._answer(name, "llama_cpp_full")

    def _cached(self, prompt: str, name: str) -> None:
        tokens = self._tokens(name, prompt)
        if tokens[: len(self.prefix)] != self.prefix or len(tokens) == len(self.prefix):
            self.fallbacks += 1
            self._full(prompt, name)
            return
        llm = self.contexts[name]
        if name == "llama_cpp_state":
            llm.load_state(self.state)
        else:
            llm.n_tokens = len(self.prefix)  # eval drops the positions after it from the KV cache
        llm.eval(tokens[len(self.prefix):])
        self._answer(name)

    def state_bytes(self) -> int:
        return int(self.state.llama_state_size)

    def passes(self) -> dict[str, Callable[[list[str]], object]]:
        def run(name: str) -> Callable[[list[str]], None]:
            answer = self._full if name == "llama_cpp_full" else self._cached
            return lambda batch: [answer(prompt, name) for prompt in batch]

        return {name: run(name) for name in self.NAMES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/peers"))
    args = parser.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise SystemExit("error: llama.cpp is not installed: pip install -e .[peers] (builds from source)") from None
    model = EarlyExitModel.from_pretrained("gemma3-270m")
    gguf = EMBEDDED_MODELS["gemma3-270m"](cache_root())
    policy, card = load_classifier(args.classifier, model)
    prompts = test_prompts(model, card, args.task, args.prompts)
    prefix = use_demonstrations(model, card.demonstrations)
    reference = dense_answers(model, prompts, card.answer_token_ids)
    rows = []
    for threads in [int(value) for value in args.threads.split(",")]:
        torch.set_num_threads(threads)
        llama = LlamaPasses(gguf, threads, prefix.text, card.answer_token_ids)
        load_before = os.getloadavg()[0]
        figure, results = measure_speedup(model, prompts, policy, card.answer_token_ids, 1, peers=llama.passes())
        ours = figure.to_dict()
        seconds = {"a_full_forward": ours["dense_seconds"], "b_cached_forward": ours["cached_dense_seconds"],
                   "c_cached_full_depth": ours["full_depth_seconds"], "d_cached_early_exit": ours["early_exit_seconds"],
                   **ours["peer_seconds"]}
        # The warm-up batch answered once more: the timed answers are the last len(prompts) of each pass.
        agree = {name: sum(a == r for a, r in zip(answers[-len(prompts):], reference))
                 for name, answers in llama.answers.items()}
        rows.append({"threads": threads, "batch_size": 1, "prompts": len(prompts),
                     "seconds_per_prompt": {name: round(value / len(prompts), 4) for name, value in seconds.items()},
                     "d_over_llama_cpp_state": round(seconds["llama_cpp_state"] / seconds["d_cached_early_exit"], 3),
                     "d_over_llama_cpp_rewind": round(seconds["llama_cpp_rewind"] / seconds["d_cached_early_exit"], 3),
                     "d_over_llama_cpp_full": round(seconds["llama_cpp_full"] / seconds["d_cached_early_exit"], 3),
                     "llama_cpp_answers_equal_a": agree,
                     "d_answers_equal_a": sum(r.answer_token_id == a for r, a in zip(results, reference)),
                     "llama_cpp_state_bytes": llama.state_bytes(), "llama_cpp_fallbacks": llama.fallbacks,
                     "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)})
    report = {"command": shlex.join(["python", "benchmarks/peers.py", *sys.argv[1:]]), "gguf": gguf.name,
              "model": card.model, "task": card.task, "prompts": len(prompts), "prefix_tokens": len(prefix),
              "our_cache_bytes": prefix.nbytes, "cpu_count": os.cpu_count(), "rows": rows}
    write_report(args.out, report, markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    names = ("a_full_forward", "b_cached_forward", "c_cached_full_depth", "d_cached_early_exit", "llama_cpp_full",
             "llama_cpp_state", "llama_cpp_rewind")
    lines = [f"Command: `{report['command']}`", "",
             f"{report['model']} ({report['gguf']}, the same file for both engines) on {report['task']}: "
             f"{report['prompts']} test prompts at batch 1, {report['prefix_tokens']} demonstration tokens cached. "
             "Seconds per prompt, all seven passes timed in one rotation, prompt by prompt; (a)-(d) are ours "
             "(transformers forward on the full prompt, forward over the prefilled prefix, our walk at full depth and "
             "early exit over the cached prefix), then llama.cpp on the full prompt, with the demonstrations' state "
             "restored (save_state/load_state), and rewound to the end of the demonstrations.", "",
             "| threads | " + " | ".join(names) + " | d vs llama.cpp state | d vs llama.cpp rewind | "
             "llama.cpp answers = a (full/state/rewind) | d answers = a | load before/after |",
             "|" + "---|" * (len(names) + 6)]
    for row in report["rows"]:
        per, agree = row["seconds_per_prompt"], row["llama_cpp_answers_equal_a"]
        lines.append(f"| {row['threads']} | " + " | ".join(f"{per[name]:.4f}" for name in names)
                     + f" | {row['d_over_llama_cpp_state']:.2f}x | {row['d_over_llama_cpp_rewind']:.2f}x | "
                     f"{agree['llama_cpp_full']}/{agree['llama_cpp_state']}/{agree['llama_cpp_rewind']} of "
                     f"{row['prompts']} | {row['d_answers_equal_a']}/{row['prompts']} | "
                     f"{row['load_average_before']}/{row['load_average_after']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
