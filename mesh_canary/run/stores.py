"""StateStore in a JSON file, for a standalone `mesh-canary run`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mesh_canary.errors import BadInput

MAX_STATE_BYTES = 64 << 20  # a long rollout's state is a few hundred kB


class StateFileError(BadInput, ValueError):
    """A state file that exists but cannot be used: damaged, not JSON, not a state."""


class FileStateStore:
    """Saves atomically (write a temp file, then rename) so a crash never leaves half a state."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        """The saved state, None when there is none yet; StateFileError (a ValueError) with
        one sentence naming the file when it cannot be used."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateFileError(f"state file {self.path} cannot be read: {e.strerror or e}") from None
        if len(raw) > MAX_STATE_BYTES:
            raise StateFileError(
                f"state file {self.path} is larger than {MAX_STATE_BYTES >> 20} MiB; it is not a rollout's state"
            )
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise StateFileError(
                f"state file {self.path} is not UTF-8 text (a damaged or binary file)"
            ) from None
        except json.JSONDecodeError as e:
            raise StateFileError(f"state file {self.path} is not valid JSON: {e}") from None
        except RecursionError:
            raise StateFileError(
                f"state file {self.path} is nested too deeply to be a rollout's state"
            ) from None
        if not isinstance(data, dict):
            raise StateFileError(f"state file {self.path} does not hold a JSON object")
        return data

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class MemoryStateStore:
    """Keeps the state in memory (simulation, tests, throwaway runs)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any]) -> None:
        self.state = json.loads(json.dumps(state))
