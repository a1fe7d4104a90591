"""Training data for stop policies (paper App. C): one row per (prompt, layer), written as JSONL.

The first line is a header with the model identity, the number of layers and the feature names;
every later line is one row `{"prompt_index", "layer", <features>, "top1", "gold", "label",
"seq_len"}`
with `layer` 1-based and `label` 1 when that layer's top-1 token is the gold answer's first
token, and `prompt_sha256`, the hash of the prompt and answer the row came from. The rows of a
prompt are appended in one call and flushed, so an interrupted run keeps every finished prompt
and a rerun with the same arguments resumes after it: the file is first rewritten without a torn
prompt (a temporary file, then `os.replace`), and every kept prompt's hash must equal the hash of
the prompt at its index, so a changed prompts file is refused instead of mixed in. One run at a
time writes a file: `collect` holds a lock (``.<name>.lock`` beside it) while it writes.

Who computes the rows is a parameter (`RowSource`): by default this process, with the model it
was given; `adainfer.scale.collect` hands them to Ray workers. Either way every prompt's rows come
from `prompt_rows` and are written here, in prompt order, so the file does not depend on who
computed it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adainfer.data.tasks import LabelledPrompt, read_prompts_jsonl, write_prompts_jsonl
from filelock import FileLock, Timeout

from adainfer.engine.files import lock_path, write_bytes_atomic
from adainfer.engine.model import EarlyExitModel


class CollectionFileError(ValueError):
    """A collection file that cannot be read or does not match the requested run."""


# Computes the rows of some prompts: given (index, prompt) pairs, the feature names, the
# deduplicated candidate ids and the text of the model's cached prefix (`EarlyExitModel.use_prefix`:
# a model elsewhere caches the same one, so its traces are the ones this model gives), yields
# (index, that prompt's `prompt_rows` text) for each pair once, in any order (a pool of workers
# finishes prompts out of order; `collect` puts them back in order).
RowSource = Callable[[Sequence[tuple[int, LabelledPrompt]], tuple[str, ...], list[int] | None, str | None],
                     Iterable[tuple[int, str]]]


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


def _header(model: EarlyExitModel, feature_names: tuple[str, ...],
            candidate_ids: Sequence[int] | None) -> dict[str, object]:
    header = {
        "adainfer_collection": 1,
        "model_identity": model.identity(),
        "num_layers": model.num_layers,
        "feature_names": list(feature_names),
    }
    if candidate_ids:
        header["candidate_ids"] = list(candidate_ids)
    return header


def _read_lines(path: Path) -> Iterator[tuple[int, dict]]:
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


def prompt_sha256(item: LabelledPrompt) -> str:
    """The hash a row records of the prompt and answer it came from."""
    return hashlib.sha256(json.dumps([item.prompt, item.answer]).encode("utf-8")).hexdigest()


def _kept_rows(path: Path, header: dict[str, object], prompts: Sequence[LabelledPrompt]) -> tuple[set[int], list[str]]:
    """Indices of prompts with all their rows in `path`, and those rows' lines, checking the header and
    that each kept prompt is the one at its index in `prompts` (by `prompt_sha256`)."""
    lines = list(_read_lines(path))
    if not lines or lines[0][1] != header:
        raise CollectionFileError(
            f"{path} was collected with another model or other features; use a new output file"
        )
    rows_per_prompt: dict[int, list[dict]] = {}
    for number, row in lines[1:]:
        index = row.get("prompt_index")
        if isinstance(index, bool) or not isinstance(index, int):
            raise CollectionFileError(f"{path} line {number}: row lacks an integer 'prompt_index'")
        rows_per_prompt.setdefault(index, []).append(row)
    layers = header["num_layers"]
    complete = {index for index, rows in rows_per_prompt.items()
                if sorted(row.get("layer") for row in rows) == list(range(1, layers + 1))}
    beyond = sorted(index for index in complete if not 0 <= index < len(prompts))
    if beyond:
        raise CollectionFileError(f"{path} holds prompts {_few(beyond)} but the prompts file has {len(prompts)}: "
                                  f"it was collected from another prompts file; use a new output file")
    if complete and not any("prompt_sha256" in row for rows in rows_per_prompt.values() for row in rows):
        raise CollectionFileError(f"{path} was written before rows recorded prompt_sha256, so a resume cannot check "
                                  f"that its rows belong to these prompts; collect into a new file")
    changed = sorted(index for index in complete
                     if any(row.get("prompt_sha256") != prompt_sha256(prompts[index]) for row in rows_per_prompt[index]))
    if changed:
        raise CollectionFileError(f"{path}: prompts {_few(changed)} differ from the prompts that were collected at "
                                  f"those indices (prompt_sha256); use a new output file for a changed prompts file")
    kept = [json.dumps(row) for index in sorted(complete)
            for row in sorted(rows_per_prompt[index], key=lambda row: row["layer"])]
    return complete, kept


def _few(indices: Sequence[int], shown: int = 10) -> str:
    text = ", ".join(str(index) for index in indices[:shown])
    return text + (f" and {len(indices) - shown} more" if len(indices) > shown else "")


def collect(
    model: EarlyExitModel,
    prompts: Sequence[LabelledPrompt],
    output: Path,
    feature_names: Sequence[str],
    on_prompt: Callable[[int], None] | None = None,
    candidate_ids: Sequence[int] | None = None,
    collect_first: int | None = None,
    row_source: RowSource | None = None,
) -> int:
    """Append the rows of every prompt not yet in `output`; returns how many prompts were added.

    `on_prompt(index)` is called after each prompt is written, for progress bars. With
    `candidate_ids` (a closed answer set's first tokens) each row also holds `cand_top1`, the best
    candidate. With `collect_first`, only the first that many prompts are collected; rows already
    in `output` are checked against all of `prompts`. `row_source` computes the rows (default: this
    process, with `model`); `model` still gives the header's identity. Raises CollectionFileError
    while another run writes `output`.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock_path(output), timeout=0):
            return _collect_locked(model, prompts, output, tuple(feature_names), on_prompt, candidate_ids,
                                   len(prompts) if collect_first is None else collect_first,
                                   row_source or _local_rows(model))
    except Timeout:
        raise CollectionFileError(f"another adainfer run is writing {output}; wait for it or choose another "
                                  f"output file") from None


def collect_cached(model: EarlyExitModel, prompts: Sequence[LabelledPrompt], folder: Path, name: str,
                   feature_names: Sequence[str], on_prompt: Callable[[int], None] | None = None,
                   candidate_ids: Sequence[int] | None = None, row_source: RowSource | None = None) -> Collection:
    """The traces of `prompts`, cached in `folder` as `<name>.jsonl` beside `<name>.prompts.jsonl`.

    What is missing is collected (`collect`, resumed after an interrupt). A cache that another run
    extended, with more prompts of which these are the first, is reused as it is: its rows are
    checked against all of its prompts and only the first `len(prompts)` are returned, so a run
    with fewer prompts than the last one neither recollects nor fails. Prompts that are neither a
    prefix nor an extension of the cached ones raise CollectionFileError.
    """
    prompt_file = Path(folder) / f"{name}.prompts.jsonl"
    cached = _cached_prompts(prompt_file, prompts)
    if len(cached) < len(prompts):
        write_prompts_jsonl(prompts, prompt_file)
    rows = Path(folder) / f"{name}.jsonl"
    known = cached if len(cached) > len(prompts) else prompts
    collect(model, known, rows, feature_names, on_prompt=on_prompt, candidate_ids=candidate_ids,
            collect_first=len(prompts), row_source=row_source)
    return load_collection(rows).subset(slice(0, len(prompts)))


def _cached_prompts(path: Path, prompts: Sequence[LabelledPrompt]) -> list[LabelledPrompt]:
    """The prompts `path` caches; they must be a prefix of, or extend, the ones asked for now."""
    if not path.exists():
        return []
    try:
        cached = read_prompts_jsonl(path)
    except ValueError:
        return []  # torn by an older version's interrupted write: rewritten; the rows' hashes still check
    shared = min(len(cached), len(prompts))
    if cached[:shared] != list(prompts[:shared]):
        raise CollectionFileError(f"{path} holds other prompts than this run builds now (data, code or options "
                                  f"changed); move it away to recollect")
    return cached


def prompt_rows(model: EarlyExitModel, index: int, item: LabelledPrompt, feature_names: tuple[str, ...],
                candidate_ids: Sequence[int] | None) -> str:
    """The JSONL lines of prompt `index`, one per layer, newline-terminated: what `collect` appends.

    The one place a row is built, whichever process runs it, so a run spread over workers writes
    the same bytes as one run here.
    """
    trace = model.trace(item.prompt, feature_names, candidate_ids)
    gold = model.answer_token(item.prompt, item.answer)
    digest = prompt_sha256(item)
    rows = []
    for layer, (values, top1) in enumerate(zip(trace.features, trace.top1), start=1):
        row = {"prompt_index": index, "layer": layer}
        row.update({name: round(float(value), 6) for name, value in zip(feature_names, values)})
        row.update({"top1": int(top1), "gold": gold, "label": int(top1 == gold), "seq_len": trace.seq_len})
        if trace.cand_top1 is not None:
            row["cand_top1"] = int(trace.cand_top1[layer - 1])
        row["prompt_sha256"] = digest
        rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


def _local_rows(model: EarlyExitModel) -> RowSource:
    """The default `RowSource`: this process computes each prompt's rows, in order, as it is asked."""

    def rows(pending: Sequence[tuple[int, LabelledPrompt]], feature_names: tuple[str, ...],
             candidate_ids: list[int] | None, prefix_text: str | None) -> Iterator[tuple[int, str]]:
        for index, item in pending:  # `model` already holds the prefix named by `prefix_text`
            yield index, prompt_rows(model, index, item, feature_names, candidate_ids)

    return rows


def _collect_locked(model: EarlyExitModel, prompts: Sequence[LabelledPrompt], output: Path,
                    feature_names: tuple[str, ...], on_prompt: Callable[[int], None] | None,
                    candidate_ids: Sequence[int] | None, collect_first: int, row_source: RowSource) -> int:
    candidate_ids = list(dict.fromkeys(candidate_ids)) if candidate_ids else None
    header = _header(model, feature_names, candidate_ids)
    done: set[int] = set()
    kept: list[str] = []
    if output.exists() and output.stat().st_size > 0:
        done, kept = _kept_rows(output, header, prompts)
    # Rewrite without a half-written prompt from an interrupted run, atomically: a second
    # interrupt leaves the old file, never an empty one.
    write_bytes_atomic(output, ("\n".join([json.dumps(header), *kept]) + "\n").encode("utf-8"))
    pending = [(index, item) for index, item in enumerate(prompts[:collect_first]) if index not in done]
    order = [index for index, _ in pending]
    awaited = set(order)
    arrived: dict[int, str] = {}  # finished ahead of an earlier prompt: held until that one is written
    written = 0
    with output.open("a", encoding="utf-8") as handle:
        prefix_text = model.prefix.text if model.prefix is not None else None
        for index, rows in row_source(pending, feature_names, candidate_ids, prefix_text):
            if index not in awaited:
                raise CollectionFileError(f"{output}: the rows of prompt {index} came back twice or were "
                                          f"not asked for")
            awaited.discard(index)
            arrived[index] = rows
            # Append each prompt once every pending prompt before it is written: the file grows in
            # prompt order whoever finishes first, so it is the same bytes as a run here.
            while written < len(order) and order[written] in arrived:
                handle.write(arrived.pop(order[written]))
                handle.flush()
                written += 1
                if on_prompt is not None:
                    on_prompt(order[written - 1])
    if written < len(order):
        raise CollectionFileError(f"{output}: no rows came back for prompts {_few(order[written:])}")
    return written


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
    lines = _read_lines(path)
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
        raise CollectionFileError(f"{path}: prompts {_few(incomplete)} do not have exactly one row for each of the "
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
