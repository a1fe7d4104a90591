"""Shared fixtures: tiny model directories with a character-level tokenizer, built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adainfer.testing.tiny_models import save_tiny_model, save_tiny_spaced_model

# Tiny models run ops of microseconds; with two threads on a loaded 2-core machine, thread
# hand-offs cost milliseconds each.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    return save_tiny_model("qwen2", tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_spaced_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer gives answers after `A:` distinct first tokens (closed answer sets)."""
    return save_tiny_spaced_model("llama", tmp_path_factory.mktemp("tiny-spaced"))
