"""`EarlyExitModel`: a loaded model, its tokenizer and its layer executor behind one object."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adainfer.engine.cost import CostModel
from adainfer.engine.executor import LayerExecutor
from adainfer.engine.features import FeatureReader, as_numpy
from adainfer.engine.loading import LoadedModel, load_model
from adainfer.engine.prefix import PrefixCache


class PromptError(ValueError):
    """A prompt the model cannot take: empty, not valid Unicode, or longer than its context."""


# C0 controls and DEL, except tab, newline, form feed and carriage return, which real text holds.
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")


def check_text(text: object, what: str = "prompt", controls: bool = True) -> str:
    """Refuse, with one line naming `what`, a text no tokenizer should be handed: not a string,
    a lone surrogate escape (JSON's "\\ud800" decodes to one; the tokenizer raises a TypeError on
    it), or (with `controls`) a control character such as NUL or ESC. Returns `text`.

    One check for every way in: the CLI's input files, the server's requests, `encode` itself."""
    if not isinstance(text, str):
        raise PromptError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise PromptError(f"{what} holds a lone surrogate escape at character {error.start} "
                          f"(not valid Unicode)") from None
    found = _CONTROL.search(text) if controls else None
    if found:
        raise PromptError(f"{what} holds a control character ({found.group()!r}) at character {found.start()}")
    return text


@dataclass
class LayerTrace:
    """Full-depth lens readings of one prompt: features (layers, n_features), top-1 ids (layers,)."""

    features: np.ndarray
    top1: np.ndarray
    feature_names: tuple[str, ...]
    seq_len: int
    cand_top1: np.ndarray | None = None  # (layers,) best candidate per layer, when candidates were given
    cached_tokens: int = 0  # leading positions read from the cached prefix instead of computed


class EarlyExitModel:
    """A frozen causal LM read layer by layer. Build it with `from_pretrained`."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.executor = LayerExecutor(loaded.model)
        config = loaded.model.config
        self.cost_model = CostModel(
            num_layers=self.executor.num_layers,
            hidden_size=config.hidden_size,
            vocab_size=self.executor.head.weight.shape[0],
        )
        self.max_context: int = getattr(config, "max_position_embeddings", None) or 2048
        self._token_bytes: int | None = None
        self.prefix: PrefixCache | None = None

    @classmethod
    def from_pretrained(cls, source: str | None = None, cache_dir: str | Path | None = None) -> "EarlyExitModel":
        """Load an embedded model name, a local HF directory or a .gguf file (see `load_model`)."""
        return cls(load_model(source, cache_dir))

    @property
    def num_layers(self) -> int:
        return self.executor.num_layers

    def identity(self) -> dict[str, object]:
        """What a classifier must match: architecture, sizes, and a hash of a sample of the LM head."""
        weight = self.executor.head.weight.detach().float().flatten()
        sample = weight[:: max(1, weight.numel() // 100_000)].contiguous().numpy()
        return {
            "architecture": type(self.model).__name__,
            "num_layers": self.num_layers,
            "hidden_size": self.cost_model.hidden_size,
            "vocab_size": self.cost_model.vocab_size,
            "head_sha256": hashlib.sha256(sample.tobytes()).hexdigest()[:16],
        }

    def encode(self, prompt: str) -> torch.Tensor:
        """Token ids (1, seq) with the tokenizer's special tokens; rejects empty and over-long prompts."""
        self.check_prompt(prompt)
        input_ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        if input_ids.shape[1] > self.max_context:
            raise PromptError(
                f"prompt has {input_ids.shape[1]} tokens, more than the model's context of {self.max_context}"
            )
        return input_ids

    def check_prompt(self, prompt: str) -> None:
        """What `encode` checks without tokenizing (cheap enough for a server's event loop): not
        empty, valid Unicode, and not more bytes than the context could hold."""
        check_text(prompt, controls=False)
        if not prompt or not prompt.strip():
            raise PromptError("empty prompt")
        # Checked on bytes first: tokenizing a 50 MB prompt to count its tokens took a minute and 4 GB.
        size = len(prompt.encode("utf-8", errors="replace"))
        if size > self.max_context * self._longest_token_bytes():
            raise PromptError(f"prompt has {size} bytes, more than the model's context of {self.max_context} tokens "
                              f"can hold")

    def use_prefix(self, text: str | None) -> PrefixCache | None:
        """Compute `text`'s keys and values once; later prompts starting with it run only their own tokens.

        Prediction, traces and the cached dense baseline read `self.prefix` (`engine.row_groups`);
        the same text again reuses it, another replaces it, None drops it. A prefix the context
        cannot hold with at least one more token raises `PromptError`.
        """
        if text is None:
            self.prefix = None
        elif self.prefix is None or self.prefix.text != text:
            ids = self.encode(text)
            if ids.shape[1] >= self.max_context:
                raise PromptError(f"prefix has {ids.shape[1]} tokens, leaving no room in the model's context of "
                                  f"{self.max_context}")
            self.prefix = PrefixCache.build(self.executor, text, ids.to(self.executor.head.weight.device))
        return self.prefix

    def _longest_token_bytes(self) -> int:
        """The most UTF-8 bytes of text one token can stand for (an upper bound, from the vocabulary)."""
        if self._token_bytes is None:
            longest = max((len(token.encode("utf-8", errors="replace")) for token in self.tokenizer.get_vocab()),
                          default=1)
            self._token_bytes = max(longest, 4)  # a byte-fallback token is one byte but may be written <0xAB>
        return self._token_bytes

    def answer_token(self, prompt: str, answer: str) -> int:
        """The first token the model must emit after `prompt` to start `answer` (a space is put between)."""
        if not answer or not answer.strip():
            raise PromptError("empty answer")
        prompt_ids = self.tokenizer(prompt).input_ids
        joined_ids = self.tokenizer(prompt + " " + answer.strip()).input_ids
        if joined_ids[: len(prompt_ids)] == prompt_ids and len(joined_ids) > len(prompt_ids):
            return joined_ids[len(prompt_ids)]
        # The tokenizer merged across the boundary: fall back to the answer tokenised alone.
        return self.tokenizer(" " + answer.strip(), add_special_tokens=False).input_ids[0]

    def candidate_tokens(self, answers: Sequence[str]) -> list[int]:
        """First token of each answer as it follows `A:` (with its leading space), duplicates kept once."""
        return list(dict.fromkeys(self.answer_token("A:", answer) for answer in answers))

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    @torch.no_grad()
    def trace(self, prompt: str, feature_names: Sequence[str],
              candidate_ids: Sequence[int] | None = None) -> LayerTrace:
        """Run every layer on `prompt` and read the named features after each; for collection and oracles.

        The full-vocabulary lens always runs, so `top1` is the model's own top-1 at every layer. No
        row ever leaves, so the layers run in one `run_layers` call (no walk), and the lens reads
        every layer's last-token state in one product (`FeatureReader.read_all`): the head's V*h
        weights are read once per prompt instead of once per layer. With a prefix in use
        (`use_prefix`) that the prompt extends, only the prompt's own tokens run.
        """
        device = self.executor.head.weight.device
        input_ids = self.encode(prompt)
        prefix = self.prefix if self.prefix is not None and self.prefix.applies_to(prompt) else None
        query = prefix.query_ids(input_ids[0]) if prefix is not None else None
        if query is None:
            cached, inputs = 0, self.executor.prepare(input_ids.to(device))
        else:  # only the prompt's own tokens run, over the prefix's cached keys and values
            batch = prefix.query_batch([query])
            cached, inputs = len(prefix), self.executor.prepare(
                batch.input_ids.to(device), batch.attention_mask.to(device), prefix.batch_cache(1),
                batch.position_ids.to(device))
        lasts: list[torch.Tensor] = []  # each layer's output at the last position, (1, hidden)
        with FeatureReader(self.executor, feature_names, candidate_ids, full_vocab=True) as reader:
            reader.reset(inputs.embeddings)
            self.executor.run_layers(inputs.embeddings, inputs, 0, self.num_layers,
                                     on_layer=lambda _, hidden: lasts.append(hidden[:, -1]))
            readouts = reader.read_all(torch.stack(lasts))
        features, top1 = as_numpy(readouts)
        cand_top1 = (np.array([int(readout.cand_top1[0]) for readout in readouts])
                     if candidate_ids else None)
        return LayerTrace(features=features[0], top1=top1[0], feature_names=reader.feature_names,
                          seq_len=input_ids.shape[1], cand_top1=cand_top1, cached_tokens=cached)


def model_slug(model: EarlyExitModel) -> str:
    """The folder name of `model`'s caches: its architecture and a hash of its LM head."""
    identity = model.identity()
    return f"{identity['architecture']}-{identity['head_sha256']}"
