"""Shared fixtures: tiny model directories with a character-level tokenizer, built offline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.pipeline import FitOptions, examples_source, fit_classifier
from adainfer.fit.splits import SplitSizes
from adainfer.testing.tiny_models import save_tiny_model, save_tiny_spaced_model

# The labelled toy tasks live beside the fit tests; the classifier served by tests/serve and
# tests/scale is fitted on one.
sys.path.insert(0, str(Path(__file__).parent / "fit"))
from fit_data import parity_examples  # noqa: E402

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


@pytest.fixture(scope="session")
def classifier_dir(tiny_spaced_dir, tmp_path_factory) -> Path:
    """A classifier fitted by `fit_classifier` on the tiny spaced Llama (parity: even/odd), saved."""
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    options = FitOptions(shots=2, sizes=SplitSizes(40, 80, 40), timing_prompts=0, resplits=0)
    fitted = fit_classifier(model, examples_source("parity", parity_examples()), options,
                            cache_dir=tmp_path_factory.mktemp("serve-fit-cache"))
    return fitted.save(tmp_path_factory.mktemp("serve-classifier") / "parity")
