"""`adainfer profile` on a tiny model: the table, the JSON it writes, and clean errors."""

from pathlib import Path

from cli_runner import invoke, stderr

from adainfer.engine.cost_profile import CostProfile
from adainfer.engine.model import EarlyExitModel


def model_args(model_dir: Path, tmp_path: Path):
    return ("--model", model_dir, "--cache-dir", tmp_path / "cache")


def test_profile_prints_a_row_per_length_and_writes_the_json(tiny_llama_dir, tmp_path):
    out = tmp_path / "profile.json"
    result = invoke("profile", "--seq-lens", "8,4", "--repeats", "2", "-o", out, *model_args(tiny_llama_dir, tmp_path))
    assert result.exit_code == 0, f"{result.output}{result.exception!r}"
    rows = [line for line in result.stdout.splitlines() if line.strip("│ ").split(" ")[0] in ("4", "8")]
    assert len(rows) == 2 and rows[0].strip("│ ").startswith("4")  # sorted by length
    assert "check/layers" in result.stdout and "4 layers" in result.stdout
    profile = CostProfile.load(out)
    assert profile.seq_lens == (4, 8) and profile.repeats == 2
    assert profile.model_identity == EarlyExitModel.from_pretrained(str(tiny_llama_dir)).identity()
    assert all(seconds > 0 for seconds in profile.layer_seconds + profile.full_check_seconds)


def test_profile_without_out_writes_nothing(tiny_llama_dir, tmp_path):
    result = invoke("profile", "--seq-lens", "4", "--repeats", "1", *model_args(tiny_llama_dir, tmp_path))
    assert result.exit_code == 0, f"{result.output}{result.exception!r}"
    assert not list(tmp_path.glob("*.json"))


def _assert_clean_error(result, keyword):
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}{result.exception!r}"
    errors = [line for line in stderr(result).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and keyword in errors[0], stderr(result)
    assert "Traceback" not in stderr(result)


def test_bad_lengths_are_a_clean_error(tiny_llama_dir, tmp_path):
    _assert_clean_error(invoke("profile", "--seq-lens", "8,x", *model_args(tiny_llama_dir, tmp_path)), "--seq-lens")
    # The tiny models' context is 128 tokens.
    _assert_clean_error(invoke("profile", "--seq-lens", "8,500", *model_args(tiny_llama_dir, tmp_path)), "seq_lens")
