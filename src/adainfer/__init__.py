"""adainfer: instance-aware early exit for frozen decoder-only LLMs (AdaInfer, Fan et al., IJCAI 2025).

The names most users need, at the top, as scikit-learn and transformers put theirs::

    from adainfer import EarlyExitClassifier, EarlyExitModel, load_policy

They load on first use (PEP 562), so that `import adainfer.engine.files` or a Ray worker that
needs one module does not pay for torch, scikit-learn and the whole pipeline up front.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adainfer.engine.model import EarlyExitModel
    from adainfer.fit.classifier import EarlyExitClassifier
    from adainfer.inference.generate import generate
    from adainfer.inference.predict import ExitResult, predict, predict_batch
    from adainfer.policies.io import load_policy

# Each public name and the module that defines it.
_HOMES = {
    "EarlyExitClassifier": "adainfer.fit.classifier",
    "EarlyExitModel": "adainfer.engine.model",
    "ExitResult": "adainfer.inference.predict",
    "generate": "adainfer.inference.generate",
    "load_policy": "adainfer.policies.io",
    "predict": "adainfer.inference.predict",
    "predict_batch": "adainfer.inference.predict",
}

__all__ = sorted(_HOMES) + ["__version__"]

try:
    __version__ = version("adainfer")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'adainfer' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
