"""`adainfer serve`: the HTTP API (classification with early exit, lossless completions) under uvicorn."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Annotated

import torch
import typer
import uvicorn

from adainfer.cli.common import CacheOption, ModelOption, clean_errors, err, open_model
from adainfer.cli.scaling import AddressOption, RayOption, absolute, check_ray_options, ray_connection, ray_module, worker_source
from adainfer.engine.loading import DEFAULT_MODEL
from adainfer.fit.classifier import load_classifier
from adainfer.inference.generate import DRAFT_WEIGHTS
from adainfer.serve.app import ServeOptions, create_app
from adainfer.serve.auth import KEY_ENVIRONMENT, api_keys, is_loopback
from adainfer.serve.connections import ConnectionLimits, server_config
from adainfer.serve.limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:  # Ray is an optional extra: the module itself is imported only when --ray asks
    from adainfer.scale.serving import ReplicaSpec

LIMITS = ConnectionLimits()


@clean_errors
def serve(
    policy_dir: Annotated[Path, typer.Option("--policy", "-p", help="Classifier directory written by `adainfer fit`.")],
    model: ModelOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(help="Most classification inputs answered by one batched pass.")] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more inputs after its oldest one arrived.")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="Most inputs waiting; beyond it requests get 503 with Retry-After.")] = 256,
    dense: Annotated[bool, typer.Option("--dense", help="Answer /v1/classify with the dense model (no early exit): the baseline.")] = False,
    dense_cached: Annotated[bool, typer.Option("--dense-cached", help="Answer /v1/classify with the dense model over the card's demonstrations computed once: the strongest dense baseline.")] = False,
    threads: Annotated[int | None, typer.Option(help="torch threads of the model worker. Default: torch's.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level (critical, error, warning, info, debug).")] = "info",
    cache_dir: CacheOption = None,
    ray: RayOption = False,
    address: AddressOption = None,
    replicas: Annotated[int | None, typer.Option(help="With --ray: copies of the model, each serving this API with its own batcher, behind Ray Serve's proxy (each reserves --threads CPUs, or a GPU). Default: 1.")] = None,
    api_key: Annotated[list[str] | None, typer.Option("--api-key", help=f"A key clients must send as `Authorization: Bearer <key>` (repeatable; also ${KEY_ENVIRONMENT}, comma-separated). Every route but /healthz needs one.")] = None,
    allow_no_key: Annotated[bool, typer.Option("--allow-no-key", help="Listen on a non-loopback --host without an API key (refused otherwise).")] = False,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body; larger gets 413.")] = DEFAULT_MAX_BODY_BYTES,
    body_timeout: Annotated[float, typer.Option(help="Seconds a request body may take to arrive; slower gets 408.")] = DEFAULT_BODY_TIMEOUT_S,
    header_timeout: Annotated[float, typer.Option(help="Seconds a request's headers may take to arrive; slower connections are closed.")] = LIMITS.header_timeout_s,
    max_header_bytes: Annotated[int, typer.Option(help="Largest request line + headers; larger gets 400.")] = LIMITS.max_header_bytes,
    max_connections: Annotated[int, typer.Option(help="Most connections and requests at once; beyond it requests get 503.")] = LIMITS.max_connections,
    keep_alive: Annotated[int, typer.Option(help="Seconds an idle keep-alive connection stays open.")] = LIMITS.keep_alive_s,
    shutdown_timeout: Annotated[float, typer.Option(help="Seconds SIGTERM waits for requests in flight and the worker before it exits anyway.")] = LIMITS.shutdown_timeout_s,
    health_pid: Annotated[bool, typer.Option("--health-pid", help="/healthz names the answering process (tells replicas apart).")] = False,
    docs: Annotated[bool, typer.Option("--docs", help="Serve /docs and /redoc (their pages load scripts from a public CDN).")] = False,
    draft_weights: Annotated[str, typer.Option(help=f"How /v1/completions drafts: {' or '.join(DRAFT_WEIGHTS)} (int8 copies of the layers: faster on a CPU, a quarter more memory; the text is the same).")] = "model",
    prompt_lookup: Annotated[int, typer.Option(help="/v1/completions also drafts up to this many tokens copied from the prompt or output (0: never; the text is the same).")] = 0,
) -> None:
    """Serve /v1/classify (early exit, dynamic batching), /v1/completions (lossless, OpenAI schema), /metrics, /healthz."""
    if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or (threads is not None and threads < 1):
        raise ValueError("--max-batch-size, --max-queue and --threads must be >= 1 and --max-wait-ms >= 0")
    if draft_weights not in DRAFT_WEIGHTS or prompt_lookup < 0:
        raise ValueError(f"--draft-weights must be one of {', '.join(DRAFT_WEIGHTS)} and --prompt-lookup >= 0")
    if max_body_bytes < 1 or body_timeout <= 0:
        raise ValueError("--max-body-bytes must be >= 1 and --body-timeout > 0")
    limits = ConnectionLimits(header_timeout_s=header_timeout, max_header_bytes=max_header_bytes,
                              max_connections=max_connections, keep_alive_s=keep_alive,
                              shutdown_timeout_s=shutdown_timeout)
    keys = api_keys(api_key or [])
    if not keys and not is_loopback(host) and not allow_no_key:
        raise ValueError(f"--host {host} is reachable from other machines and no API key is set: give --api-key "
                         f"(or ${KEY_ENVIRONMENT}), or --allow-no-key to serve anyone who reaches the port")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    check_ray_options(ray, address, replicas, "--replicas")
    if dense and dense_cached:
        raise ValueError("--dense and --dense-cached are two baselines: choose one")
    if ray and port == 0:
        raise ValueError("--ray needs a fixed --port: Ray Serve's proxy cannot pick one")
    serving = ray_module("serving") if ray else None  # a missing extra fails before the model loads
    if ray and address is None:
        _check_local_room(host, port, (replicas or 1) * (threads or 1))
    exit_model = open_model(model, cache_dir)
    policy, card = load_classifier(policy_dir, exit_model)  # a wrong classifier fails here, in one line
    model_id = model or DEFAULT_MODEL
    options = ServeOptions(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue, dense=dense,
                           cached_dense=dense_cached,
                           max_body_bytes=max_body_bytes, body_timeout_s=body_timeout, api_keys=keys,
                           show_pid=health_pid, docs=docs, shutdown_timeout_s=shutdown_timeout,
                           draft_weights=draft_weights, prompt_lookup=prompt_lookup)
    mode = "dense over the cached demonstrations" if dense_cached else "dense" if dense else "early exit"
    described = (f"{model_id} ({mode}, {card.task}: "
                 f"{', '.join(card.answer_set or ['open vocabulary'])}) on http://{host}:{port} "
                 f"({f'{len(keys)} API key(s)' if keys else 'no API key'}; schema: /openapi.json)")
    if serving is not None:
        del exit_model, policy  # the replicas load their own copies
        spec = serving.ReplicaSpec(worker_source(model), absolute(cache_dir), absolute(policy_dir), model_id, options,
                                   threads or 1)
        _serve_on_ray(serving, spec, replicas or 1, host, port, address, described, limits)
        return
    if threads is not None:
        torch.set_num_threads(threads)
    app = create_app(exit_model, policy, card, model_id, options)
    err.print(f"serving {described}", highlight=False, soft_wrap=True)
    server = uvicorn.Server(server_config(app, host, port, limits=limits, log_level=log_level))
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()


def _serve_on_ray(serving: ModuleType, spec: ReplicaSpec, replicas: int, host: str, port: int, address: str | None,
                  described: str, limits: ConnectionLimits) -> None:
    """Deploy `replicas` replicas of `spec` on Ray Serve (`serving`: `adainfer.scale.serving`, loaded by --ray),
    then wait for SIGINT or SIGTERM and take them down (each drains its batcher first) before
    exiting with success."""
    stop = threading.Event()
    plural = "s" if replicas > 1 else ""
    with contextlib.ExitStack() as stack:
        ray_connection(stack, address, None)
        for signal_number in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
            signal.signal(signal_number, lambda *_: stop.set())
        with err.status(f"starting {replicas} replica{plural} on Ray Serve"):
            serving.deploy(spec, replicas, host, port, limits)
        err.print(f"serving {described} with {replicas} replica{plural} on Ray; Ctrl-C or SIGTERM stops",
                  highlight=False, soft_wrap=True)
        while not stop.wait(0.5):
            pass
        with err.status("stopping: replicas finish what they hold"):
            serving.undeploy(stop_serve=address is None)


def _check_local_room(host: str, port: int, cpus: int) -> None:
    """Refuse, in one line, what a local cluster cannot start: replicas needing more CPUs than this
    machine has (Ray would wait for them without end), or a port that cannot be bound here (Ray
    Serve's proxy would fail and be retried, without end, in the background)."""
    if cpus > (os.cpu_count() or 1):
        raise ValueError(f"--replicas x --threads needs {cpus} CPUs; this machine has {os.cpu_count()} "
                         f"(use fewer, or --address to run on a cluster)")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _exit_cleanly(_signal: int, _frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handler: before it starts, or when it re-raises the signal it
    drained on (uvicorn restores the previous handler, then raises the signal again). Either way
    there is nothing left to finish, so exit with success."""
    raise SystemExit(0)
