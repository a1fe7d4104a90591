"""The calibration sample a classifier's certificate was computed on, stored beside it as plain arrays.

`calibration.npz` (read with `allow_pickle=False`) holds, for the n calibration prompts of L
layers and F features: `features` (n, L, F) float64, the scorer's input; `scores` (n, L) float64,
the scorer's margins as calibration ranked them (-inf before the first check, where it is never asked); `reference` (n, L) int64, the answer each
layer's lens gave (the last layer's is the full model's), so each threshold's changed answers
can be counted again; and `prompt_sha256`, the hash of the prompt format and demonstrations the
prompts were built with. `adainfer verify` recomputes the certificate from them
(`adainfer.fit.verify`); a load compares the hash with the card's (`card_checks`).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adainfer.fit.card import CardError
from adainfer.policies.base import check_archive_size

CALIBRATION_NPZ = "calibration.npz"


@dataclass(frozen=True)
class CalibrationArrays:
    features: np.ndarray  # (n, L, F) float64
    scores: np.ndarray  # (n, L) float64
    reference: np.ndarray  # (n, L) int64
    prompt_sha256: str

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, features=self.features.astype(np.float64), scores=self.scores.astype(np.float64),
                            reference=self.reference.astype(np.int64), prompt_sha256=np.array(self.prompt_sha256))
        return buffer.getvalue()


def read_calibration(directory: Path) -> CalibrationArrays | None:
    """The arrays of `directory`, checked for names, dtypes and shapes; None when it has none
    (a classifier fitted before they were stored). Raises CardError for a file that is not them."""
    path = Path(directory) / CALIBRATION_NPZ
    if not path.is_file():
        return None
    check_archive_size(path)
    try:
        with np.load(path, allow_pickle=False) as stored:
            if sorted(stored.files) != ["features", "prompt_sha256", "reference", "scores"]:
                raise CardError(f"{path} holds {sorted(stored.files)}, not a classifier's calibration arrays")
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, CardError):
            raise
        raise CardError(f"cannot read {path}: {error}") from None
    features, scores, reference, digest = (arrays[name] for name in ("features", "scores", "reference",
                                                                        "prompt_sha256"))
    if (features.dtype != np.float64 or scores.dtype != np.float64 or reference.dtype != np.int64
            or features.ndim != 3 or scores.shape != features.shape[:2] or reference.shape != scores.shape
            or len(scores) == 0 or not np.isfinite(features).all() or np.isnan(scores).any()
            or np.isposinf(scores).any()
            or digest.shape != () or digest.dtype.kind != "U"):
        raise CardError(f"{path}: arrays of the wrong type or shape (features {features.dtype} {features.shape}, "
                        f"scores {scores.dtype} {scores.shape}, reference {reference.dtype} {reference.shape})")
    return CalibrationArrays(features, scores, reference, str(digest))


def read_calibration_bytes(directory: Path) -> bytes | None:
    """The raw file, to be saved again unchanged by `EarlyExitClassifier.save` after a load."""
    path = Path(directory) / CALIBRATION_NPZ
    return path.read_bytes() if path.is_file() else None
