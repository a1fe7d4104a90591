"""`adainfer serve`'s refusals before it listens: one `error:` line and exit code 2 (serving itself: tests/serve)."""

import pytest

from cli_runner import assert_clean_error, invoke


@pytest.mark.parametrize("option, value", [("--max-batch-size", 0), ("--max-queue", 0), ("--max-wait-ms", -1),
                                           ("--threads", 0), ("--port", 70000)])
def test_bad_options_are_refused_before_the_model_loads(tmp_path, option, value):
    result = invoke("serve", "-p", tmp_path, option, value, "--model", tmp_path / "never-loaded")
    assert_clean_error(result, option)


def test_a_policy_directory_that_is_not_a_fitted_classifier_is_refused(tmp_path, tiny_spaced_dir):
    result = invoke("serve", "-p", tmp_path / "missing", "--model", tiny_spaced_dir, "--cache-dir", tmp_path / "cache")
    assert_clean_error(result, "missing")
