"""The in-cluster controller: `mesh-canary controller`.

It watches ModelRollout resources (one namespace or all) and runs each one's rollout at
its own ``analysis.interval``, many at once:

- an informer thread lists the resources, then watches from the list's
  resourceVersion (re-listing on 410 Gone, reconnecting with backoff on errors) and keeps
  one `RolloutHandler` per resource;
- a scheduler thread keeps a heap of next-due times and hands due rollouts to
  ``workers`` worker threads, never two ticks of one rollout at once; a reconcile that has
  run ``slow_after_s`` stops holding its worker (up to ``max_workers`` threads), so slow
  rollouts cannot starve the others, and one running ``stuck_after_s`` fails ``/livez``;
- each handler drives a `RolloutRunner` (the same driver as `mesh-canary run`) with the
  Istio router, the Prometheus metrics source, the status store and a notifier fanning
  out to Kubernetes Events, the log and the policy's webhooks; the state is saved in the
  resource's status after every tick, so a restarted controller resumes exactly, without
  re-writing any weight;
- with ``--leader-elect`` only the replica holding the ``coordination.k8s.io`` Lease
  reconciles (the official client's `kubernetes.leaderelection` decides who holds it; this
  module adds a loop that can stop and releases the Lease on shutdown); with ``--shards K``
  there is one Lease per shard (a hash of namespace/name) and each process reconciles the
  rollouts of the shards it holds (`leader.ShardElector`);
- ``/livez``, ``/readyz`` and ``/metrics`` on ``--metrics-addr``.

People's orders arrive as annotations on the resource (see `mesh_canary.kube.status.COMMAND_ANNOTATIONS`).
A changed spec restarts the rollout (traffic goes back to stable first); a deleted
ModelRollout leaves its traffic on stable (a finalizer holds the deletion until it does);
an invalid spec touches nothing and says why in the ``PolicyValid`` condition. So does a
spec naming a VirtualService in another namespace or a Prometheus the controller was not
configured with (`admission`): a spec never chooses where the controller writes or connects.

The parts, one module each (the `Controller` only wires them):

- `settings`: `ControllerSettings`, the one frozen object built from the CLI's flags;
- `informer`: list/watch of the resources, one thread per watched namespace;
- `workqueue`: due-time scheduling, the worker threads, slow/stuck accounting;
- `reconcile`: one rollout's turn (`Reconciler`); `admission`: what a spec may not ask;
- `finalizer`: the finalizer, and traffic back on stable for a deleted or superseded rollout;
- `handler`: what is kept per rollout; `leader`: the Lease; `health`: the probe server;
  `metrics`: the controller's Prometheus collectors; `controller`: the `Controller`.
"""

from __future__ import annotations

from mesh_canary.controller.controller import Controller, ControllerError, running
from mesh_canary.controller.handler import RolloutHandler
from mesh_canary.controller.leader import LeaderElector, ShardElector
from mesh_canary.controller.metrics import ControllerMetrics
from mesh_canary.controller.reconcile import BackendFactory
from mesh_canary.controller.settings import (
    ControllerSettings,
    MetricsAddress,
    address_key,
    parse_addr,
    shard_of,
)
from mesh_canary.kube.errors import KubeError

__all__ = [
    "BackendFactory",
    "Controller",
    "ControllerError",
    "ControllerMetrics",
    "ControllerSettings",
    "KubeError",
    "LeaderElector",
    "MetricsAddress",
    "RolloutHandler",
    "ShardElector",
    "address_key",
    "parse_addr",
    "running",
    "shard_of",
]
