"""Outputs are regular files: an `-o` that exists and is a device, a FIFO or a folder (or, for a policy,
a file) is refused before anything is written, by every verb that writes, and no lock file appears.

Devices are reached through a link in the test's folder (`-o /dev/full` itself once replaced the
device with a regular file; a test must not risk that on the machine), which `os.stat` follows as
the check does, while `os.replace` would replace the link: the test sees the check, not the damage.
"""

import os
import stat
from pathlib import Path

import pytest
from cli_runner import assert_clean_error, invoke
from fault_data import write_rows

from adainfer.engine.files import OutputError, check_output_directory, check_output_file, write_bytes_atomic
from adainfer.eval.collect import collect

KINDS = ["device", "fifo", "directory"]


def destination(tmp_path: Path, kind: str) -> Path:
    """An existing path of `kind` that an output file must not replace."""
    path = tmp_path / f"out-{kind}"
    if kind == "device":
        path.symlink_to("/dev/null")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
        (path / "kept.txt").write_text("mine")
    return path


def unchanged(path: Path, kind: str) -> bool:
    mode = os.stat(path).st_mode
    kept = {"device": stat.S_ISCHR, "fifo": stat.S_ISFIFO, "directory": stat.S_ISDIR}[kind](mode)
    siblings = {entry.name for entry in path.parent.iterdir()}
    no_litter = not any(name.endswith((".lock", ".tmp")) for name in siblings)
    return kept and no_litter and (kind != "directory" or (path / "kept.txt").read_text() == "mine")


def file_verbs(tmp_path: Path, out: Path) -> dict[str, list]:
    never = tmp_path / "never-loaded"
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"prompt": "Q: a\\nA:", "answer": "b"}\n')
    return {"predict": ["predict", inputs, "-p", never, "-o", out, "--model", never],
            "collect": ["collect", inputs, "-o", out, "--model", never],
            "prompts": ["prompts", inputs, "-o", out],
            "profile": ["profile", "-o", out, "--model", never]}


def dir_verbs(tmp_path: Path, out: Path) -> dict[str, list]:
    rows = write_rows(tmp_path / "rows.jsonl", n_prompts=6)
    return {"train": ["train", rows, "-o", out, "--policy", "gap"],
            "calibrate": ["calibrate", rows, rows, "-o", out, "--features", "gap,top_prob"],
            "fit": ["fit", "parity.jsonl", "-o", out, "--model", tmp_path / "never-loaded"]}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("verb", ["predict", "collect", "prompts", "profile"])
def test_a_file_output_that_is_not_a_regular_file_is_refused_before_anything_is_written(tmp_path, verb, kind):
    out = destination(tmp_path, kind)
    result = invoke(*file_verbs(tmp_path, out)[verb])
    assert_clean_error(result, "not a regular file" if kind != "directory" else "directory")
    assert unchanged(out, kind)


@pytest.mark.parametrize("kind", ["device", "fifo", "file"])
@pytest.mark.parametrize("verb", ["train", "calibrate", "fit"])
def test_a_policy_output_that_is_not_a_directory_is_refused(tmp_path, verb, kind):
    out = tmp_path / "out-file"
    if kind == "file":
        out.write_text("mine")
    else:
        out = destination(tmp_path, kind)
    assert_clean_error(invoke(*dir_verbs(tmp_path, out)[verb]), "not a directory")
    assert kind != "file" or out.read_text() == "mine"
    assert not any(entry.name.endswith((".lock", ".tmp")) for entry in tmp_path.iterdir())


@pytest.mark.parametrize("kind", KINDS)
def test_the_atomic_writer_refuses_to_replace_what_is_not_a_regular_file(tmp_path, kind):
    out = destination(tmp_path, kind)
    with pytest.raises(OutputError):
        write_bytes_atomic(out, b"data")
    assert unchanged(out, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_collect_takes_no_lock_beside_what_it_refuses(tmp_path, kind):
    out = destination(tmp_path, kind)
    with pytest.raises(OutputError):
        collect(None, [], out, ["gap"])
    assert unchanged(out, kind)


def test_a_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="(?i)not a directory"):
        check_output_file(tmp_path / "file" / "out.jsonl")


def test_regular_files_links_to_them_and_new_paths_pass(tmp_path):
    (tmp_path / "old.jsonl").write_text("x")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "old.jsonl")
    for path in ("old.jsonl", "link.jsonl", "new.jsonl", "new/deeper.jsonl"):
        assert check_output_file(tmp_path / path) == tmp_path / path
    assert check_output_directory(tmp_path / "new-dir") == tmp_path / "new-dir"
