"""Shared fixtures: tiny model directories with a character-level tokenizer, built offline."""

from __future__ import annotations


import string
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from adainfer.testing.tiny_models import VOCAB, tiny_model

# Tiny models run ops of microseconds; with two threads on a loaded 2-core machine, thread
# hand-offs cost milliseconds each.
torch.set_num_threads(1)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable character and newline, plus <unk>: exactly the tiny models' 97 ids."""
    symbols = ["<unk>", *string.printable[:95], "\n"]
    assert len(symbols) == VOCAB
    core = Tokenizer(models.WordLevel({symbol: i for i, symbol in enumerate(symbols)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


def save_tiny_model(family: str, directory: Path, seed: int = 0) -> Path:
    tiny_model(family, seed).save_pretrained(directory)
    char_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    return save_tiny_model("qwen2", tmp_path_factory.mktemp("tiny-qwen2"))
