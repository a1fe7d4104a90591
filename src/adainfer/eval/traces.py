"""Collected traces as arrays: the `Collection` a rows file or a compact `.npz` reads into.

`adainfer.eval.collect` writes rows files; everything downstream (replay, fit, the tables, the
exported traces under results/traces) reads them here. Nothing is unpickled: a rows file is JSON
lines, checked row by row, and an `.npz` is read with `allow_pickle=False`, every array's shape
and dtype checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adainfer.engine.files import write_bytes_atomic


class CollectionFileError(ValueError):
    """A collection file that cannot be read or does not match the requested run."""


@dataclass
class Collection:
    """Collected rows as arrays: features (prompts, layers, n_features); labels, top-1 ids (prompts, layers);
    gold ids and prompt lengths (prompts,)."""

    features: np.ndarray
    labels: np.ndarray
    top1: np.ndarray
    gold: np.ndarray
    seq_len: np.ndarray
    feature_names: tuple[str, ...]
    model_identity: dict[str, object]
    candidate_ids: tuple[int, ...] = ()
    cand_top1: np.ndarray | None = None  # (prompts, layers) best candidate, when candidates were given

    def __len__(self) -> int:
        return len(self.gold)

    def subset(self, index: np.ndarray) -> "Collection":
        """The prompts at `index` (an integer or boolean array), for calibration/test splits."""
        return Collection(
            features=self.features[index], labels=self.labels[index], top1=self.top1[index],
            gold=self.gold[index], seq_len=self.seq_len[index], feature_names=self.feature_names,
            model_identity=self.model_identity, candidate_ids=self.candidate_ids,
            cand_top1=None if self.cand_top1 is None else self.cand_top1[index],
        )

    def content_sha256(self) -> str:
        """A hash of every array a table reads, in a fixed order and dtype: two collections with the
        same hash give the same tables, whichever file format they were read from."""
        digest = hashlib.sha256(json.dumps([list(self.feature_names), list(self.candidate_ids)]).encode())
        arrays = (self.features.astype(np.float32), self.labels, self.top1, self.gold, self.seq_len,
                  self.cand_top1 if self.cand_top1 is not None else np.zeros(0))
        for array in arrays:
            digest.update(np.ascontiguousarray(array, dtype=np.float32 if array is arrays[0] else np.int64).tobytes())
        return digest.hexdigest()

    def select(self, names: Sequence[str]) -> np.ndarray:
        """The feature columns `names`, in that order; a clear error for a name not collected."""
        missing = [name for name in names if name not in self.feature_names]
        if missing:
            raise CollectionFileError(
                f"features {missing} were not collected (collected: {', '.join(self.feature_names)})"
            )
        return self.features[:, :, [self.feature_names.index(name) for name in names]]


def read_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Numbered JSON objects of `path`; a last line cut short by an interrupted write is skipped."""
    lines = path.read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise CollectionFileError(f"{path} line {number}: not UTF-8 ({error.reason} at byte {error.start})") from None
        except json.JSONDecodeError as error:
            if number == len(lines):
                return
            raise CollectionFileError(f"{path} line {number}: not valid JSON ({error.msg})") from None
        except RecursionError:
            raise CollectionFileError(f"{path} line {number}: JSON nested too deeply") from None
        if not isinstance(record, dict):
            raise CollectionFileError(f"{path} line {number}: expected a JSON object")
        yield number, record


def few(indices: Sequence[int], shown: int = 10) -> str:
    text = ", ".join(str(index) for index in indices[:shown])
    return text + (f" and {len(indices) - shown} more" if len(indices) > shown else "")


def load_collection(path: Path) -> Collection:
    """Read a collection file written by `collect` into arrays.

    Every prompt must have exactly one row per layer: a prompt with missing or repeated rows (an
    interrupted or doubled run) is an error naming it, never silently left out.
    """
    path = Path(path)
    if not path.exists():
        raise CollectionFileError(f"{path}: no such collection file")
    if path.is_dir():
        raise CollectionFileError(f"{path} is a folder, not a collection file")
    lines = read_json_lines(path)
    first = next(lines, None)
    if first is None or "adainfer_collection" not in first[1]:
        raise CollectionFileError(f"{path}: not a collection file (no adainfer header on line 1)")
    header = first[1]
    names, layers = header.get("feature_names"), header.get("num_layers")
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names) or isinstance(layers, bool) or not isinstance(layers, int)
            or layers < 1 or not isinstance(header.get("model_identity"), dict)
            or not isinstance(header.get("candidate_ids", []), list)):
        raise CollectionFileError(f"{path} line 1: the header needs unique feature_names, num_layers >= 1 and "
                                  f"a model_identity object")
    sizes = {key: header["model_identity"].get(key) for key in ("num_layers", "hidden_size", "vocab_size")}
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes.values()) or sizes["num_layers"] != layers:
        raise CollectionFileError(f"{path} line 1: model_identity needs positive integer num_layers (= the header's "
                                  f"{layers}), hidden_size and vocab_size; got {sizes}")
    names = tuple(names)
    grouped: dict[int, list[dict]] = {}
    for number, row in lines:
        for key in (*names, "prompt_index", "layer", "top1", "gold", "label", "seq_len"):
            value = row.get(key)
            if key not in row:
                raise CollectionFileError(f"{path} line {number}: row lacks {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    key not in names and not isinstance(value, int)):
                raise CollectionFileError(f"{path} line {number}: {key!r} must be a finite "
                                          f"{'number' if key in names else 'integer'}, got {value!r}")
        grouped.setdefault(int(row["prompt_index"]), []).append(row)
    wanted = list(range(1, layers + 1))
    incomplete = sorted(index for index, rows in grouped.items() if sorted(row["layer"] for row in rows) != wanted)
    if incomplete:
        raise CollectionFileError(f"{path}: prompts {few(incomplete)} do not have exactly one row for each of the "
                                  f"{layers} layers (an interrupted collect: rerun it to finish; or two runs wrote "
                                  f"this file)")
    if not grouped:
        raise CollectionFileError(f"{path}: no complete prompt collected")
    complete = [sorted(rows, key=lambda row: row["layer"]) for _, rows in sorted(grouped.items())]

    def column(*keys: str, dtype: type) -> np.ndarray:
        return np.array([[[row[key] for key in keys] for row in rows] for rows in complete], dtype=dtype)

    candidate_ids = tuple(header.get("candidate_ids", ()))
    if candidate_ids and any(not isinstance(row.get("cand_top1"), int) for rows in complete for row in rows):
        raise CollectionFileError(f"{path}: header names candidates but a row lacks 'cand_top1'")
    return Collection(
        candidate_ids=candidate_ids,
        cand_top1=column("cand_top1", dtype=np.int64)[..., 0] if candidate_ids else None,
        features=column(*names, dtype=np.float32),
        labels=column("label", dtype=np.int64)[..., 0],
        top1=column("top1", dtype=np.int64)[..., 0],
        gold=column("gold", dtype=np.int64)[:, 0, 0],
        seq_len=column("seq_len", dtype=np.int64)[:, 0, 0],
        feature_names=names,
        model_identity=header["model_identity"],
    )


# The compact form committed under results/traces: arrays only, read back with allow_pickle=False.
_NPZ_INT_ARRAYS: tuple[str, ...] = ("labels", "top1", "gold", "seq_len")


def save_collection_npz(collection: Collection, path: Path) -> Path:
    """Write `collection` as a compressed `.npz` of float32 features and int32 ids, atomically."""
    arrays = {
        "features": collection.features.astype(np.float32),
        **{name: getattr(collection, name).astype(np.int32) for name in _NPZ_INT_ARRAYS},
        "candidate_ids": np.array(collection.candidate_ids, dtype=np.int32),
        "feature_names": np.array(collection.feature_names, dtype=str),
        "model_identity": np.array(json.dumps(collection.model_identity, sort_keys=True)),
    }
    if collection.cand_top1 is not None:
        arrays["cand_top1"] = collection.cand_top1.astype(np.int32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes_atomic(Path(path), buffer.getvalue())


def load_collection_npz(path: Path) -> Collection:
    """Read a `.npz` written by `save_collection_npz`, checking every array's shape and dtype."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CollectionFileError(f"{path}: not a readable traces file ({error})") from None
    required = ("features", *_NPZ_INT_ARRAYS, "candidate_ids", "feature_names", "model_identity")
    missing = [name for name in required if name not in arrays]
    features = arrays.get("features")
    if missing or features is None or features.ndim != 3 or features.dtype != np.float32:
        raise CollectionFileError(f"{path}: not a traces file (missing {missing} or bad features array)")
    prompts, layers, columns = features.shape
    expected = {"labels": (prompts, layers), "top1": (prompts, layers), "gold": (prompts,), "seq_len": (prompts,),
                "cand_top1": (prompts, layers), "feature_names": (columns,)}
    wrong = [name for name, shape in expected.items() if name in arrays and arrays[name].shape != shape]
    if wrong or any(arrays[name].dtype.kind != "i" for name in _NPZ_INT_ARRAYS):
        raise CollectionFileError(f"{path}: arrays {wrong or list(_NPZ_INT_ARRAYS)} have the wrong shape or type")
    try:
        identity = json.loads(str(arrays["model_identity"]))
    except json.JSONDecodeError as error:
        raise CollectionFileError(f"{path}: model_identity is not JSON ({error.msg})") from None
    candidate_ids = tuple(int(i) for i in arrays["candidate_ids"])
    if bool(candidate_ids) != ("cand_top1" in arrays):
        raise CollectionFileError(f"{path}: candidate_ids and cand_top1 must come together")
    return Collection(
        features=features, labels=arrays["labels"].astype(np.int64), top1=arrays["top1"].astype(np.int64),
        gold=arrays["gold"].astype(np.int64), seq_len=arrays["seq_len"].astype(np.int64),
        feature_names=tuple(str(name) for name in arrays["feature_names"]), model_identity=identity,
        candidate_ids=candidate_ids,
        cand_top1=arrays["cand_top1"].astype(np.int64) if candidate_ids else None,
    )
