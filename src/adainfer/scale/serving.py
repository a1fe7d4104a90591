"""Replicated serving on Ray Serve: the `adainfer serve` app, once per replica, behind Ray's proxy.

One replica of `adainfer serve` answers with one batching worker over one copy of the model;
more requests than it can answer need more copies. We do not balance load ourselves: Ray Serve
runs `replicas` copies of a deployment, each a Ray actor that loads the model once and builds
the very app `create_app` builds for `adainfer serve` (its own dynamic batcher, metrics, limits
and error handling), and its HTTP proxy spreads requests over them. The HTTP API is therefore
unchanged; only the process that answers a request differs.

What runs where: the driver (the `adainfer serve --ray` process) starts or joins the cluster,
deploys, and waits for a signal; each replica runs on a Ray worker with `threads` torch threads
and reserves that many CPUs (and one GPU where the cluster has any, the model moving onto it).
Ray's proxy, on every node by default, listens on `host:port`.

Metrics: each replica keeps its own Prometheus registry, so `GET /metrics` answers for the one
replica the request reached (`/healthz` names it by process id with `--health-pid`); scrape
replicas through Ray's own metrics export for the whole deployment's figures.

Limits: API keys, the body's size and read time, strict schemas and input checks are the app's,
so every replica enforces them as `adainfer serve` does. Connections end at Ray's proxy, not at
our uvicorn: its idle keep-alive is set from `keep_alive_s`; the header deadline, header size and
connection cap of `ConnectionLimits` are the proxy's own (Ray Serve's uvicorn with its defaults).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import serve

from adainfer.engine.model import EarlyExitModel
from adainfer.engine.parameters import ParameterError
from adainfer.fit.classifier import load_classifier
from adainfer.serve.app import ServeOptions, create_app
from adainfer.serve.connections import ConnectionLimits

APP_NAME = "adainfer"


@dataclass(frozen=True)
class ReplicaSpec:
    """What each replica loads and how it serves: the model (`source`, as
    `EarlyExitModel.from_pretrained` takes it, the same files on every node), the classifier
    directory `policy_dir` (absolute, readable on every node), the id clients name the model by,
    the batching options, and the torch threads of its worker."""

    source: str | None
    cache_dir: str | None
    policy_dir: str
    model_id: str
    options: ServeOptions
    threads: int = 1


@serve.ingress()
class ClassifierReplica:
    """One replica: loads the model and classifier once, then serves `create_app`'s app.

    Ray Serve calls `__serve_build_asgi_app__` after the constructor, inside the replica, so the
    app (which holds the model and a worker thread) is built where it runs, never pickled; Ray
    also runs the app's lifespan, which starts the batcher and, at shutdown, drains it.
    """

    def __init__(self, spec: ReplicaSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.model = EarlyExitModel.from_pretrained(spec.source, spec.cache_dir)
        if torch.cuda.is_available():
            self.model.model.to("cuda")
        self.policy, self.card = load_classifier(Path(spec.policy_dir), self.model)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.model, self.policy, self.card, self.spec.model_id, self.spec.options)


def replica_resources(spec: ReplicaSpec, cluster: dict[str, float]) -> dict[str, float]:
    """What one replica reserves (`ray_actor_options`): a CPU per torch thread, and one GPU when
    the cluster (`ray.cluster_resources()`) has any, so replicas spread one per GPU."""
    resources: dict[str, float] = {"num_cpus": spec.threads}
    if cluster.get("GPU", 0) >= 1:
        resources["num_gpus"] = 1
    return resources


def deploy(spec: ReplicaSpec, replicas: int, host: str, port: int,
           limits: ConnectionLimits = ConnectionLimits()) -> None:
    """Start Ray Serve's proxy on `host:port` and run `replicas` replicas of the classifier app
    at route "/", returning once every replica is up (Ray raises when one fails to start). On a
    cluster whose Serve already runs, its proxy keeps the address it has (Ray's rule).

    A replica accepts as many requests at once as its batcher's queue holds rows (each request
    carries at least one), so that requests wait in the batcher, where they join batches, rather
    than in Ray's router; past that Ray queues them in front of the replicas.
    """
    if replicas < 1:
        raise ParameterError(f"must be at least 1, got {replicas}", "replicas")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the CLI says what started, and where
    serve.start(http_options={"host": host, "port": port, "keep_alive_timeout_s": limits.keep_alive_s})
    deployment = serve.deployment(ClassifierReplica, name="classifier", num_replicas=replicas,
                                  max_ongoing_requests=spec.options.max_queue,
                                  ray_actor_options=replica_resources(spec, ray.cluster_resources()))
    serve.run(deployment.bind(spec), name=APP_NAME, route_prefix="/")


def undeploy(stop_serve: bool) -> None:
    """Stop the replicas, each draining its batcher first; with `stop_serve` (a cluster started for
    this server), Ray Serve's proxy and controller too, on a shared cluster only this app."""
    serve.delete(APP_NAME)
    if stop_serve:
        serve.shutdown()

