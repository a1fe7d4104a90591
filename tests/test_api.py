"""The top-level names (`from adainfer import ...`) are the library's own objects, loaded on first use."""

import subprocess
import sys
from pathlib import Path

import pytest

import adainfer
from adainfer.engine.model import EarlyExitModel
from adainfer.fit.classifier import EarlyExitClassifier
from adainfer.inference.generate import generate
from adainfer.inference.predict import ExitResult, predict, predict_batch
from adainfer.policies.io import load_policy


def test_top_level_names_are_the_objects_their_modules_define():
    from adainfer import EarlyExitClassifier as top_classifier, EarlyExitModel as top_model, load_policy as top_load

    assert top_classifier is EarlyExitClassifier
    assert top_model is EarlyExitModel
    assert top_load is load_policy
    assert (adainfer.predict, adainfer.predict_batch, adainfer.generate, adainfer.ExitResult) == (
        predict, predict_batch, generate, ExitResult)
    assert set(adainfer.__all__) <= set(dir(adainfer))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'EarlyExitRegressor'"):
        adainfer.EarlyExitRegressor  # noqa: B018


def test_importing_the_package_loads_no_model_code():
    loaded = subprocess.run([sys.executable, "-c", "import adainfer, sys; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"


def test_the_package_declares_its_type_hints():
    assert (Path(adainfer.__file__).parent / "py.typed").is_file()
    assert adainfer.__version__ != "0+unknown"
