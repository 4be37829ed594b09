"""What the runner needs from a router beyond "write these weights": one bounded attempt per
call with typed failures, compare-and-swap on forward writes, ownership of the route, and a
rollback that carries its own durable record.

Routers that only implement the small `TrafficRouter` protocol (the simulator's, test fakes)
are wrapped by `guarded`, which does the compare-and-swap with a read before the write and
has no ownership or record.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from mesh_canary.core.weights import Weights
from mesh_canary.errors import CouldNotWork
from mesh_canary.protocols import TrafficRouter

K = TypeVar("K", bound=Hashable)


def percentages(raw: Sequence[tuple[K, int]]) -> dict[K, int]:
    """Relative weights (Istio's, the Gateway API's) as percentages adding up to exactly 100;
    {} when they add up to nothing."""
    total = sum(w for _, w in raw)
    if total <= 0:
        return {}
    shares = [(key, 100 * w / total) for key, w in raw]
    floors = {key: int(share) for key, share in shares}
    left = 100 - sum(floors.values())
    for key, _share in sorted(shares, key=lambda ks: ks[1] - int(ks[1]), reverse=True)[:left]:
        floors[key] += 1
    return floors


class RouterError(CouldNotWork, RuntimeError):
    """One attempt to read or write the route failed; the runner may try again."""


class RouteConflict(RouterError):
    """The route changed between our read and our write (HTTP 409): read again and retry."""


class RouteNotFound(RouterError):
    """The route (the VirtualService) does not exist: a configuration error, not retried."""


class WeightsMoved(RouterError):
    """Compare-and-swap failed: the live weights are not the ones mesh-canary last wrote."""

    def __init__(self, live: Weights, expected: Weights, where: str) -> None:
        super().__init__(
            f"{where} holds {live.stable}/{live.candidate}, not the "
            f"{expected.stable}/{expected.candidate} mesh-canary wrote; nothing written"
        )
        self.live = live
        self.expected = expected
        self.where = where


class RouteOwned(RouterError):
    """Another rollout owns the route: a second owner is refused, nothing is written."""


@dataclass(frozen=True)
class RollbackRecord:
    """Written with the rollback's weights, in the same call: the rollback's durable intent."""

    run_id: str
    reason: str
    failed_checks: tuple[str, ...] = ()
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "runId": self.run_id,
                "reason": self.reason,
                "failedChecks": list(self.failed_checks),
                "at": self.at,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> RollbackRecord | None:
        try:
            d: Any = json.loads(text)
            return cls(
                str(d["runId"]),
                str(d["reason"]),
                tuple(str(c) for c in d.get("failedChecks", ())),
                float(d.get("at", 0.0)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@runtime_checkable
class GuardedRouter(Protocol):
    """A router that guards its writes itself (IstioRouter, LocalRouter)."""

    @property
    def ref(self) -> str:
        """The route, for people: "VirtualService models/fraud-scorer"."""
        ...

    def get_weights(self) -> Weights: ...

    def write(
        self,
        weights: Weights,
        *,
        owner: str = "",
        expected: Weights | None = None,
        rollback: RollbackRecord | None = None,
    ) -> None:
        """One bounded attempt. A forward write (``rollback`` None) first checks that ``owner``
        still owns the route and that the live weights are ``expected`` (or already
        ``weights``), else raises `RouteOwned` / `WeightsMoved`. A rollback checks nothing and
        carries ``rollback`` with it, atomically."""
        ...

    def claim(self, owner: str, rollout: str, previous: str = "") -> None:
        """Take the route for run ``owner`` (``previous``: an earlier run of the same state
        that may be taken over); `RouteOwned` when another run holds it."""
        ...

    def release(self, owner: str) -> None:
        """Give the route up (only if ``owner`` holds it)."""
        ...

    def recorded_rollback(self) -> RollbackRecord | None:
        """The rollback record on the route, if any."""
        ...


class PlainGuard:
    """`GuardedRouter` over a plain `TrafficRouter`: compare-and-swap as read-then-write."""

    def __init__(self, router: TrafficRouter) -> None:
        self.router = router

    @property
    def ref(self) -> str:
        return "the route"

    def get_weights(self) -> Weights:
        return self.router.get_weights()

    def write(
        self,
        weights: Weights,
        *,
        owner: str = "",
        expected: Weights | None = None,
        rollback: RollbackRecord | None = None,
    ) -> None:
        if rollback is None and expected is not None:
            live = self.router.get_weights()
            if live not in (expected, weights):
                raise WeightsMoved(live, expected, self.ref)
        self.router.set_weights(weights)

    def claim(self, owner: str, rollout: str, previous: str = "") -> None:
        return None

    def release(self, owner: str) -> None:
        return None

    def recorded_rollback(self) -> RollbackRecord | None:
        return None


def guarded(router: TrafficRouter) -> GuardedRouter:
    if isinstance(router, GuardedRouter):
        return router
    return PlainGuard(router)
