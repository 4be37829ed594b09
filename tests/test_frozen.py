"""core/frozen.replace: the same copies as dataclasses.replace, by a cheaper path."""

from __future__ import annotations

import dataclasses

import pytest

from mesh_canary.core.frozen import replace
from mesh_canary.core.verdicts import Tally
from mesh_canary.core.weights import Weights


@dataclasses.dataclass(frozen=True)
class _Checked:
    x: float

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("negative")


def test_equal_to_dataclasses_replace_and_still_frozen() -> None:
    t = Tally("errorRate", 1, last=(1.0, 2.0, 3.0, 4.0), x2_split=2.5, bursting=True)
    got = replace(t, step=2, bursting=False)
    assert got == dataclasses.replace(t, step=2, bursting=False)
    assert got is not t and t.step == 1 and t.bursting  # the original is untouched
    assert list(vars(got)) == [f.name for f in dataclasses.fields(Tally)]
    assert hash(got) == hash(dataclasses.replace(t, step=2, bursting=False))
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.step = 3  # type: ignore[misc]


def test_unknown_field_refused_as_dataclasses_does() -> None:
    with pytest.raises(TypeError):
        replace(Tally("a", 0), nonsense=1)


def test_post_init_still_runs() -> None:
    with pytest.raises(ValueError):
        replace(_Checked(1.0), x=-1.0)
    w = Weights(95, 5)
    assert replace(w, stable=90, candidate=10) == dataclasses.replace(w, stable=90, candidate=10)
