"""Fixtures of the serve suite: a tiny fitted classifier to serve."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.pipeline import FitOptions, examples_source, fit_classifier
from adainfer.fit.splits import SplitSizes

# The labelled toy tasks live beside the fit tests; the classifier served here is fitted on one.
sys.path.insert(0, str(Path(__file__).parent.parent / "fit"))
from fit_data import parity_examples  # noqa: E402


@pytest.fixture(scope="session")
def classifier_dir(tiny_spaced_dir, tmp_path_factory) -> Path:
    """A classifier fitted by `fit_classifier` on the tiny spaced Llama (parity: even/odd), saved."""
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    options = FitOptions(shots=2, sizes=SplitSizes(40, 80, 40), timing_prompts=0, resplits=0)
    fitted = fit_classifier(model, examples_source("parity", parity_examples()), options,
                            tmp_path_factory.mktemp("serve-fit-cache"))
    return fitted.save(tmp_path_factory.mktemp("serve-classifier") / "parity")
