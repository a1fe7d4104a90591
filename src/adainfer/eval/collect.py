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
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from adainfer.data.tasks import LabelledPrompt, read_prompts_jsonl, write_prompts_jsonl
from adainfer.engine.files import check_output_file, lock_path, write_bytes_atomic
from adainfer.engine.model import EarlyExitModel
from adainfer.eval.traces import Collection, CollectionFileError, few, load_collection, read_json_lines

# Computes the rows of some prompts: given (index, prompt) pairs, the feature names, the
# deduplicated candidate ids and the text of the model's cached prefix (`EarlyExitModel.use_prefix`:
# a model elsewhere caches the same one, so its traces are the ones this model gives), yields
# (index, that prompt's `prompt_rows` text) for each pair once, in any order (a pool of workers
# finishes prompts out of order; `collect` puts them back in order).
RowSource = Callable[[Sequence[tuple[int, LabelledPrompt]], tuple[str, ...], list[int] | None, str | None],
                     Iterable[tuple[int, str]]]


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


def prompt_sha256(item: LabelledPrompt) -> str:
    """The hash a row records of the prompt and answer it came from."""
    return hashlib.sha256(json.dumps([item.prompt, item.answer]).encode("utf-8")).hexdigest()


def _kept_rows(path: Path, header: dict[str, object], prompts: Sequence[LabelledPrompt]) -> tuple[set[int], list[str]]:
    """Indices of prompts with all their rows in `path`, and those rows' lines, checking the header and
    that each kept prompt is the one at its index in `prompts` (by `prompt_sha256`)."""
    lines = list(read_json_lines(path))
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
        raise CollectionFileError(f"{path} holds prompts {few(beyond)} but the prompts file has {len(prompts)}: "
                                  f"it was collected from another prompts file; use a new output file")
    if complete and not any("prompt_sha256" in row for rows in rows_per_prompt.values() for row in rows):
        raise CollectionFileError(f"{path} was written before rows recorded prompt_sha256, so a resume cannot check "
                                  f"that its rows belong to these prompts; collect into a new file")
    changed = sorted(index for index in complete
                     if any(row.get("prompt_sha256") != prompt_sha256(prompts[index]) for row in rows_per_prompt[index]))
    if changed:
        raise CollectionFileError(f"{path}: prompts {few(changed)} differ from the prompts that were collected at "
                                  f"those indices (prompt_sha256); use a new output file for a changed prompts file")
    kept = [json.dumps(row) for index in sorted(complete)
            for row in sorted(rows_per_prompt[index], key=lambda row: row["layer"])]
    return complete, kept


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
    output = check_output_file(Path(output))  # before its lock file: none beside a device
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
        raise CollectionFileError(f"{output}: no rows came back for prompts {few(order[written:])}")
    return written
