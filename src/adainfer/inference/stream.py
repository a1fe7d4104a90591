"""The tokens a generation emits: streamed as soon as they are final, and where generation stops."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adainfer.engine.model import EarlyExitModel


@dataclass
class GeneratedToken:
    """One emitted token, as the streaming callback sees it: `text` is what it adds to the output."""

    token_id: int
    text: str
    exit_layer: int  # depth whose lens chose it; num_layers for tokens the full model chose


class TokenStream:
    """Collects emitted tokens, streams them, and decides when to stop (length, end of sequence, stop string)."""

    def __init__(self, model: EarlyExitModel, max_new_tokens: int, stop: Sequence[str],
                 on_token: Callable[[GeneratedToken], None] | None) -> None:
        self.tokenizer = model.tokenizer
        self.max_new_tokens = max_new_tokens
        self.stop = [text for text in stop if text]
        self.on_token = on_token
        self.eos_ids = eos_token_ids(model)
        self.token_ids: list[int] = []
        self.exit_layers: list[int] = []
        self.text = ""
        self.streamed = ""  # the part of `text` already passed to `on_token`
        self.finish_reason: str | None = None
        self.started = time.perf_counter()
        self.first_token_seconds = 0.0

    def emit(self, token_id: int, exit_layer: int) -> bool:
        """Record one token and stream it; True when generation must stop after it."""
        if not self.token_ids:
            self.first_token_seconds = time.perf_counter() - self.started
        self.token_ids.append(token_id)
        self.exit_layers.append(exit_layer)
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        found = [self.text.find(stop) for stop in self.stop if stop in self.text]
        if token_id in self.eos_ids:
            self.finish_reason = "eos"
        elif found:
            self.finish_reason = "stop"
        elif len(self.token_ids) >= self.max_new_tokens:
            self.finish_reason = "length"
        added = ""
        # A character split over several byte tokens decodes as U+FFFD until its last byte arrives.
        if self.text.startswith(self.streamed) and (self.finish_reason or not self.text.endswith("\ufffd")):
            added, self.streamed = self.text[len(self.streamed):], self.text
        if self.on_token is not None:
            self.on_token(GeneratedToken(token_id=token_id, text=added, exit_layer=exit_layer))
        if found:
            self.text = self.text[: min(found)]
        return self.finish_reason is not None

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.token_ids)


def eos_token_ids(model: EarlyExitModel) -> set[int]:
    """The ids that end generation, as `model.generate` reads them (generation config, then config)."""
    eos = getattr(getattr(model.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = model.model.config.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(token) for token in eos}
