"""The one exception tree of mesh-canary, and the exit codes of docs/cli.md.

Every error a user can cause or meet is a `MeshCanaryError`, and each kind carries its
exit code, so the CLI maps them in one place (``friendly_errors``) instead of naming
classes one by one::

    MeshCanaryError              exit 1  (any error of ours)
    ├── BadInput                 exit 2  invalid policy, scenario, arguments or state file:
    │                                    nothing was changed
    └── CouldNotWork             exit 1  the work could not be done
        └── Unreachable          exit 1  a cluster, Prometheus or file did not answer

Modules keep their own classes (``PolicyError``, ``KubeError``, ``RouterError``, ...)
so callers can catch precisely; those subclass the kind above that says what the user
should do. A leaf module: it imports nothing of ours, so every layer (the pure core too)
may use it.
"""

from __future__ import annotations

from typing import ClassVar

# Exit codes (docs/cli.md): the same for `run`, `rollout start --wait` and `simulate`.
EXIT_OK = 0  # promoted; the asked-for operation done; the policy is valid
EXIT_FAILURE = 1  # could not do the work: something unreachable, an unexpected error
EXIT_BAD_INPUT = 2  # invalid policy, scenario or arguments (nothing was changed)
EXIT_ROLLED_BACK = 3  # the rollout ended rolled back: traffic is 100% on stable
EXIT_UNFINISHED = 4  # the rollout did not finish: timed out, or waiting for a person


class MeshCanaryError(Exception):
    """Any error of mesh-canary; ``exit_code`` says how the CLI exits on it."""

    exit_code: ClassVar[int] = EXIT_FAILURE

    @property
    def code(self) -> int:
        """The exit code for this error (an instance may refine its class's, e.g. a
        Kubernetes error that is the user's input)."""
        return self.exit_code

    def lines(self) -> list[str]:
        """What the CLI prints on stderr: one sentence, or one line per problem (an invalid
        policy or scenario names each with its path)."""
        return [f"error: {self}"]


class BadInput(MeshCanaryError):
    """Invalid policy, scenario, arguments or state file: exit 2, nothing was changed."""

    exit_code: ClassVar[int] = EXIT_BAD_INPUT


class CouldNotWork(MeshCanaryError):
    """The work could not be done (an API refused, a write failed): exit 1."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class Unreachable(CouldNotWork):
    """A cluster, Prometheus or file did not answer: exit 1."""


__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_ROLLED_BACK",
    "EXIT_UNFINISHED",
    "BadInput",
    "CouldNotWork",
    "MeshCanaryError",
    "Unreachable",
]
