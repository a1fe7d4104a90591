"""Offline loading: a local model directory, clear errors for sources that are not models, the cache root."""

import os
from pathlib import Path

import pytest

from adainfer.engine.loading import CACHE_ENV, ModelLoadError, cache_root, load_model


def test_a_local_directory_loads_frozen_in_eval_mode_without_touching_the_environment(tiny_llama_dir, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    loaded = load_model(str(tiny_llama_dir))
    assert "HF_HUB_OFFLINE" not in os.environ  # offline by argument, not by a process-wide variable
    assert loaded.name == tiny_llama_dir.name and loaded.source == str(tiny_llama_dir)
    assert loaded.cache_path is None and not loaded.converted_now and loaded.load_seconds > 0
    assert not loaded.model.training
    assert not any(parameter.requires_grad for parameter in loaded.model.parameters())
    assert loaded.tokenizer("ab").input_ids == [11, 12]  # the char tokenizer: <unk>, "0".."9", then "a"


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "missing", "neither a local path nor an embedded model"),
    (lambda root: (root / "weights.bin").write_bytes(b"x") and root / "weights.bin", "not a .gguf checkpoint"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "no config.json"),
])
def test_a_source_that_is_not_a_model_fails_clearly(tmp_path, make, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(make(tmp_path)), tmp_path / "cache")


def test_the_cache_root_is_the_argument_then_the_environment_then_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "from-env"))
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    assert cache_root() == tmp_path / "from-env"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "adainfer"
