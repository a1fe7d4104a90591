"""What one batch of /v1/classify runs: the fitted classifier with early exit, or the dense model.

All answer raw inputs through the classifier's card (its prompt format, fixed demonstrations and
answer set), so `--dense` changes only how deep the model runs: the baseline a load test
compares early exit with, through the same queue and batcher. `--dense-cached` is the stronger
baseline: the dense forward over the demonstrations' keys and values computed once, as early
exit runs over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.cached_prefix import use_demonstrations
from adainfer.fit.card import ClassifierCard
from adainfer.fit.classifier import Classification, classify
from adainfer.inference.dense import dense_answers
from adainfer.policies.base import StopPolicy


@dataclass
class BatchClassifier:
    """The classifier a server answers with; `policy` None means the dense model (no early exit),
    on full prompts or, with `cached_dense`, over the cached demonstrations."""

    model: EarlyExitModel
    card: ClassifierCard
    policy: StopPolicy | None
    cached_dense: bool = False

    @property
    def mode(self) -> str:
        if self.policy is not None:
            return "early_exit"
        return "dense_cached" if self.cached_dense else "dense"

    def check(self, text: str) -> None:
        """Raise `PromptError` (a ValueError) for an input whose prompt the model cannot take."""
        self.model.encode(self.card.prompt(text))

    def answer(self, texts: Sequence[str]) -> list[Classification]:
        """One batched pass over `texts`: early exit (rows leave at their own exit layer) or dense."""
        if self.policy is not None:
            return classify(self.model, self.policy, self.card, list(texts), batch_size=max(len(texts), 1))
        return self._dense(texts)

    def _dense(self, texts: Sequence[str]) -> list[Classification]:
        """The model's own forward (`dense_answers`), reported in the shape of an early-exit answer that
        ran every layer: nothing saved, the dense FLOPs."""
        layers = self.model.num_layers
        if self.cached_dense:
            use_demonstrations(self.model, self.card.demonstrations)  # computed once per model
        token_ids = dense_answers(self.model, [self.card.prompt(text) for text in texts], self.card.answer_token_ids,
                                  use_prefix=self.cached_dense)
        return [Classification(input=text, label=self.card.answer_label(token_id, self.model.decode_token(token_id)),
                               answer_token_id=token_id, exit_layer=layers, num_layers=layers, accepted=False,
                               layers_saved=0.0, honest_flops_ratio=1.0)
                for text, token_id in zip(texts, token_ids)]
