"""The HTTP API's bodies as pydantic models: what a client may send, and what it gets back.

Requests are strict: a field takes its own JSON type only (`"stream": "yes"` and `"max_tokens": "5"`
are errors, not true and 5), every text is checked as the CLI checks its input files (no lone
surrogate escapes, no control characters), and requests forbid unknown fields (a misspelt `max_token` is an error, not a silently ignored
option), and refuse what this server cannot honour instead of ignoring it: sampling (it answers
greedily, so that a completion always equals the model's greedy output), `echo`, and `n` > 1.
The completion bodies are the subset of OpenAI's legacy completions API that fits, so the
official `openai` client parses them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adainfer.engine.model import check_text

REQUEST_CONFIG = ConfigDict(extra="forbid", strict=True)


def _check_not_blank(texts: list[str], what: str) -> list[str]:
    """Refuse blank strings (a blank raw input would still be answered, the card's demonstrations
    making its prompt non-empty, and the answer would mean nothing) and texts no tokenizer should
    be handed (`check_text`: a lone surrogate made the tokenizer raise inside the model worker)."""
    for index, text in enumerate(texts):
        check_text(text, f"{what} {index}")
        if not text.strip():
            raise ValueError(f"{what} {index} is empty or blank")
    return texts


class ClassifyRequest(BaseModel):
    """One raw input (`input`) or several (`inputs`); the classifier's card builds each prompt."""

    model_config = REQUEST_CONFIG

    input: str | None = Field(default=None, description="One raw input, e.g. a sentence to label.")
    inputs: list[str] | None = Field(default=None, min_length=1, description="Several raw inputs.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ClassifyRequest:
        if (self.input is None) == (self.inputs is None):
            raise ValueError("give exactly one of `input` (a string) or `inputs` (a list of strings)")
        _check_not_blank(self.texts, "input")
        return self

    @property
    def texts(self) -> list[str]:
        return [self.input] if self.input is not None else list(self.inputs or [])


class ClassifyAnswer(BaseModel):
    """One input's answer and what it cost."""

    label: str = Field(description="The answer: a label of the card's answer set (else the answer token's text).")
    exit_layer: int = Field(description="Decoder layers computed, 1..num_layers.")
    num_layers: int
    layers_saved: float = Field(description="1 - exit_layer / num_layers.")
    accepted: bool = Field(description="True: the stop policy accepted at exit_layer; false: the last layer answered.")
    honest_flops_ratio: float = Field(description="FLOPs spent relative to the dense forward, lens checks included.")


class ClassifyResponse(BaseModel):
    model: str
    mode: Literal["early_exit", "dense", "dense_cached"]
    answers: list[ClassifyAnswer] = Field(description="One per input, in the order given.")


class CompletionRequest(BaseModel):
    """The part of OpenAI's completions request that a greedy, lossless server can honour."""

    model_config = REQUEST_CONFIG

    model: str | None = Field(default=None, description="The served model's id (GET /v1/models); optional.")
    prompt: str | list[str] = Field(description="A prompt, or several (one choice each).")
    max_tokens: int = Field(default=16, ge=1, description="Most tokens to generate per prompt (OpenAI's default: 16).")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 strings; the text ends before the first.")
    stream: bool = Field(default=False, description="Send the text as server-sent events as it is generated.")
    temperature: float | None = Field(default=None, description="Only 0 (or omitted): decoding is greedy.")
    echo: bool = Field(default=False, description="Only false.")
    n: int = Field(default=1, description="Only 1: greedy decoding gives one completion.")

    @field_validator("prompt")
    @classmethod
    def _prompts_not_blank(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("give a string or a non-empty list of strings")
        _check_not_blank([prompt] if isinstance(prompt, str) else prompt, "prompt")
        return prompt

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(stop)}")
        for index, text in enumerate([stop] if isinstance(stop, str) else stop or []):
            check_text(text, f"stop {index}")
        return stop

    @field_validator("temperature")
    @classmethod
    def _greedy_only(cls, temperature: float | None) -> float | None:
        if temperature not in (None, 0):
            raise ValueError(f"only 0 is supported: this server decodes greedily (lossless early exit), got "
                             f"{temperature}")
        return temperature

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("not supported: the response holds the generated text only")
        return echo

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only 1 is supported: greedy decoding gives one completion per prompt, got {n}")
        return n

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = Field(
        description="stop: end of sequence or a stop string; length: max_tokens; null in a stream until the last "
                    "chunk of the choice.")
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """A completion, or one chunk of a streamed one (the same shape, as in OpenAI's API)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "adainfer"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str = Field(description="One line saying what was wrong.")
    type: str = Field(description="The kind of error, as counted in /metrics.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
