"""`adainfer generate` end to end on a tiny model: streamed text, summary line, clean errors."""

import json

from cli_runner import invoke, stderr

from adainfer.engine.model import EarlyExitModel
from adainfer.inference.generate import generate

PROMPT = "Q: the cat sat\nA:"


def test_generate_streams_the_lossless_text_then_a_summary(tiny_qwen2_dir):
    expected = generate(EarlyExitModel.from_pretrained(str(tiny_qwen2_dir)), PROMPT, 12, draft_layer=2)
    result = invoke("generate", PROMPT, "--max-new-tokens", 12, "--draft-layer", 2, "--model", tiny_qwen2_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected.text + "\n"
    summary = json.loads(stderr(result).strip().splitlines()[-1])
    assert summary["mode"] == "lossless" and summary["tokens"] == len(expected.token_ids)
    assert summary["finish_reason"] == expected.finish_reason


def test_generate_with_int8_drafts_and_copies_streams_the_same_text(tiny_qwen2_dir):
    expected = generate(EarlyExitModel.from_pretrained(str(tiny_qwen2_dir)), PROMPT, 12)
    result = invoke("generate", PROMPT, "-n", 12, "--draft-weights", "int8", "--prompt-lookup", 4,
                    "--model", tiny_qwen2_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected.text + "\n"


def test_generate_fast_mode_reports_exit_layers(tiny_qwen2_dir):
    result = invoke("generate", PROMPT, "-n", 5, "--mode", "fast", "--draft-layer", 1, "--model", tiny_qwen2_dir)
    assert result.exit_code == 0, result.output
    summary = json.loads(stderr(result).strip().splitlines()[-1])
    assert summary["mode"] == "fast" and summary["mean_exit_layer"] == (4 + 1 * 4) / 5


def test_generate_bad_input_is_one_clean_error(tiny_qwen2_dir):
    for args, keyword in [(("-n", 0), "max_new_tokens must be >= 1"),
                          (("-n", 4, "--mode", "fast"), "fast mode needs a policy"),
                          (("-n", 500), "use at most"),
                          (("-n", 4, "--draft-weights", "int4"), "draft_weights must be one of model, int8"),
                          (("-n", 4, "--prompt-lookup", -2), "prompt_lookup must be >= 0")]:
        result = invoke("generate", PROMPT, *args, "--model", tiny_qwen2_dir)
        assert result.exit_code == 2, result.output
        errors = [line for line in stderr(result).splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and keyword in errors[0], stderr(result)
