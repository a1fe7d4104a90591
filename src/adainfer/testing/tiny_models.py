"""Tiny randomly initialised models of every supported family, built from configs (no download).

For tests and benchmarks: they check behaviour and speed shape, not answers. `char_tokenizer`
gives them a tokenizer of one token per printable character, exactly their 97 ids.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)
from transformers import AutoModelForCausalLM

from adainfer.engine.loading import LoadedModel
from adainfer.engine.model import EarlyExitModel

VOCAB = 97
SPACED_VOCAB = VOCAB + 94
SPACED_CONTEXT = 2048
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

TINY_CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=8),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=8),
    "gemma": lambda: GemmaConfig(**_COMMON, head_dim=8),
    "gemma2": lambda: Gemma2Config(**_COMMON, head_dim=8, sliding_window=8, final_logit_softcapping=3.0),
    "gemma3": lambda: Gemma3TextConfig(**_COMMON, head_dim=8, sliding_window=8, final_logit_softcapping=3.0),
    "opt": lambda: OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=4,
                             num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=16),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=128),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=128),
}


def tiny_model(family: str, seed: int = 0, vocab_size: int = VOCAB, context: int | None = None) -> PreTrainedModel:
    """A random fp32 model in eval mode; the scale of its weights is raised so logits are not flat.

    `context` raises the maximum positions (of the families that have the setting) above 128.
    """
    torch.manual_seed(seed)
    config = TINY_CONFIGS[family]()
    config.initializer_range = 0.2
    config.vocab_size = vocab_size
    if context is not None:
        config.max_position_embeddings = context
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable character and newline, plus <unk>: exactly the tiny models' 97 ids."""
    symbols = ["<unk>", *string.printable[:95], "\n"]
    assert len(symbols) == VOCAB
    core = Tokenizer(models.WordLevel({symbol: i for i, symbol in enumerate(symbols)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


def spaced_char_tokenizer() -> PreTrainedTokenizerFast:
    """`char_tokenizer` plus one token per space-then-character (" y", " n"): answers after ``A:``
    then start with distinct tokens, as real tokenizers' words do, so closed answer sets work."""
    symbols = ["<unk>", *string.printable[:95], "\n", *(" " + c for c in string.printable[:95] if c != " ")]
    assert len(symbols) == SPACED_VOCAB
    core = Tokenizer(models.WordLevel({symbol: i for i, symbol in enumerate(symbols)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r" [^\s]|[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


def tiny_spaced_exit_model(family: str, seed: int = 0) -> EarlyExitModel:
    """A tiny model with `spaced_char_tokenizer` and a context of `SPACED_CONTEXT` characters, for
    tasks with a closed answer set and few-shot prompts of real datasets."""
    loaded = LoadedModel(model=tiny_model(family, seed, SPACED_VOCAB, SPACED_CONTEXT), tokenizer=spaced_char_tokenizer(),
                         name=f"tiny-spaced-{family}", source="memory", cache_path=None, load_seconds=0.0,
                         converted_now=False)
    return EarlyExitModel(loaded)


def save_tiny_spaced_model(family: str, directory: Path, seed: int = 0) -> Path:
    """Write a tiny model with `spaced_char_tokenizer` as a Hugging Face model directory."""
    tiny_model(family, seed, SPACED_VOCAB, SPACED_CONTEXT).save_pretrained(directory)
    spaced_char_tokenizer().save_pretrained(directory)
    return directory


def tiny_exit_model(family: str, seed: int = 0) -> EarlyExitModel:
    """`tiny_model(family, seed)` with `char_tokenizer`, ready for early exit, built in memory."""
    loaded = LoadedModel(model=tiny_model(family, seed), tokenizer=char_tokenizer(), name=f"tiny-{family}",
                         source="memory", cache_path=None, load_seconds=0.0, converted_now=False)
    return EarlyExitModel(loaded)


def save_tiny_model(family: str, directory: Path, seed: int = 0) -> Path:
    """Write `tiny_model(family, seed)` and `char_tokenizer` as a Hugging Face model directory."""
    tiny_model(family, seed).save_pretrained(directory)
    char_tokenizer().save_pretrained(directory)
    return directory
