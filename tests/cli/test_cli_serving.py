"""`adainfer serve`'s refusals before it listens: one `error:` line and exit code 2 (serving itself: tests/serve)."""

import os
import socket
import sys

import pytest

from cli_runner import assert_clean_error, invoke


@pytest.mark.parametrize("option, value", [("--max-batch-size", 0), ("--max-queue", 0), ("--max-wait-ms", -1),
                                           ("--threads", 0), ("--port", 70000), ("--draft-weights", "int4"),
                                           ("--prompt-lookup", -1)])
def test_bad_options_are_refused_before_the_model_loads(tmp_path, option, value):
    result = invoke("serve", "-p", tmp_path, option, value, "--model", tmp_path / "never-loaded")
    assert_clean_error(result, option)


def test_a_policy_directory_that_is_not_a_fitted_classifier_is_refused(tmp_path, tiny_spaced_dir):
    result = invoke("serve", "-p", tmp_path / "missing", "--model", tiny_spaced_dir, "--cache-dir", tmp_path / "cache")
    assert_clean_error(result, "missing")


@pytest.mark.parametrize("args, keywords", [
    (("--replicas", 2), ("--address and --replicas", "add --ray")),
    (("--address", "auto"), ("add --ray",)),
    (("--ray", "--replicas", 0), ("--replicas must be at least 1",)),
    (("--ray", "--port", 0), ("--ray needs a fixed --port",)),
])
def test_ray_options_that_cannot_run_are_refused_before_the_model_loads(tmp_path, args, keywords):
    assert_clean_error(invoke("serve", "-p", tmp_path, *args, "--model", tmp_path / "never-loaded"), *keywords)


def test_more_replicas_than_this_machine_has_cpus_is_refused_before_ray_starts(tmp_path):
    pytest.importorskip("ray")
    replicas = (os.cpu_count() or 1) + 1
    result = invoke("serve", "-p", tmp_path, "--ray", "--replicas", replicas, "--model", tmp_path / "never-loaded")
    assert_clean_error(result, f"needs {replicas} CPUs", f"this machine has {os.cpu_count()}")


def test_a_port_already_taken_is_refused_before_ray_starts(tmp_path):
    pytest.importorskip("ray")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = invoke("serve", "-p", tmp_path, "--ray", "--port", port, "--model", tmp_path / "never-loaded")
    assert_clean_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_serve_with_ray_but_without_ray_installed_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "adainfer.scale.serving", raising=False)
    result = invoke("serve", "-p", tmp_path, "--ray", "--model", tmp_path / "never-loaded")
    assert_clean_error(result, "--ray needs Ray", 'pip install -e ".[ray]"')
