"""Many prompts answered in batches, the dense model beside when asked, and what the answers add up to.

`adainfer predict`, `EarlyExitClassifier` and the server all answer lists of prompts a batch at
a time; this is the one loop they share, so batching, the dense comparison and the summary are
the same whichever front end asked. Each batch is yielded as soon as it is answered, so a caller
can write or stream it before the next one runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from adainfer.engine.model import EarlyExitModel
from adainfer.engine.parameters import ParameterError
from adainfer.engine.stop_rule import StopRule
from adainfer.inference.dense import dense_answers
from adainfer.inference.predict import ExitResult, predict_batch


@dataclass(frozen=True)
class Answer:
    """One prompt's early-exit result and, when compared, the dense model's answer token."""

    result: ExitResult
    dense_token: int | None = None


def answer_batches(model: EarlyExitModel, prompts: Sequence[str], policy: StopRule,
                   candidate_ids: Sequence[int] | None = None, *, batch_size: int = 16,
                   compare_dense: bool = False) -> Iterator[list[Answer]]:
    """Early exit on `prompts`, `batch_size` at a time (`predict_batch`: rows leave at their own exit
    layer), yielding each batch's answers in order; with `compare_dense`, each also carries the
    dense model's answer on its full prompt (`dense_answers`), the reference a gold answer is
    scored against."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"must be at least 1, got {batch_size!r}", "batch_size")
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        results = predict_batch(model, batch, policy, candidate_ids)
        dense = dense_answers(model, batch, candidate_ids) if compare_dense else [None] * len(batch)
        yield [Answer(result, token) for result, token in zip(results, dense)]


def summarize(answers: Sequence[Answer], gold_tokens: Sequence[int | None]) -> dict[str, float | int]:
    """Means over `answers` (exit layer, layers saved, both FLOPs ratios); over those with a gold
    token, early-exit and dense accuracy and their agreement (needs `compare_dense` answers)."""
    def mean(values: Sequence[float]) -> float:
        return round(float(np.mean(values)), 4)

    results = [answer.result for answer in answers]
    summary: dict[str, float | int] = {
        "prompts": len(results), "mean_exit_layer": mean([r.exit_layer for r in results]),
        "layers_saved": mean([1 - r.exit_layer / r.num_layers for r in results]),
        "mean_paper_flops_ratio": mean([r.paper_flops_ratio for r in results]),
        "mean_honest_flops_ratio": mean([r.honest_flops_ratio for r in results])}
    scored = [(answer, gold) for answer, gold in zip(answers, gold_tokens) if gold is not None]
    if scored:
        summary.update({
            "scored": len(scored),
            "accuracy": mean([answer.result.answer_token_id == gold for answer, gold in scored]),
            "dense_accuracy": mean([answer.dense_token == gold for answer, gold in scored]),
            "agreement_with_dense": mean([answer.result.answer_token_id == answer.dense_token
                                          for answer, _ in scored])})
    return summary
