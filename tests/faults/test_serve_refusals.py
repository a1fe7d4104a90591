"""`adainfer serve` refuses, before the model loads, what would expose or weaken it: a public
address without an API key, a key a header cannot carry, limits that make no sense."""

import pytest

from cli_runner import assert_clean_error, invoke


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.4", "10.0.0.1", "example.com"])
def test_a_public_host_without_a_key_is_refused(tmp_path, monkeypatch, host):
    monkeypatch.delenv("ADAINFER_API_KEY", raising=False)
    result = invoke("serve", "-p", tmp_path, "--host", host, "--model", tmp_path / "never-loaded")
    assert_clean_error(result, "--api-key", "--allow-no-key")


@pytest.mark.parametrize("args, env", [(["--api-key", "k"], None), (["--allow-no-key"], None), ([], "k1,k2")])
def test_a_public_host_with_a_key_or_the_explicit_flag_gets_past_the_check(tmp_path, monkeypatch, args, env):
    if env is None:
        monkeypatch.delenv("ADAINFER_API_KEY", raising=False)
    else:
        monkeypatch.setenv("ADAINFER_API_KEY", env)
    result = invoke("serve", "-p", tmp_path, "--host", "0.0.0.0", *args, "--model", tmp_path / "never-loaded")
    assert result.exit_code == 2 and "--allow-no-key" not in result.output  # it failed later: the model


@pytest.mark.parametrize("key", ["", "two words", "tab\tkey"])
def test_a_key_a_header_cannot_carry_is_refused(tmp_path, monkeypatch, key):
    monkeypatch.delenv("ADAINFER_API_KEY", raising=False)
    assert_clean_error(invoke("serve", "-p", tmp_path, "--api-key", key, "--model", tmp_path / "never-loaded"),
                       "API key")


@pytest.mark.parametrize("option, value", [("--max-body-bytes", 0), ("--body-timeout", 0), ("--header-timeout", 0),
                                           ("--header-timeout", -1), ("--max-header-bytes", 100),
                                           ("--max-connections", 0), ("--keep-alive", 0),
                                           ("--shutdown-timeout", 0)])
def test_limits_that_make_no_sense_are_refused(tmp_path, option, value):
    assert_clean_error(invoke("serve", "-p", tmp_path, option, value, "--model", tmp_path / "never-loaded"), option)
