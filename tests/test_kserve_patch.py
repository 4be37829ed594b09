"""The KServe router's pure half: weights from the canary field, the field from weights, and
the merge patch that carries only what changed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_canary.core.merge_patch import merge_patch_diff
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.routing.kserve import (
    InferenceServicePatchError,
    apply_weights,
    read_weights,
    revision_problem,
)
from tests.kube_standin import merge_patch


def isvc(**predictor: Any) -> dict[str, Any]:
    return {"metadata": {"name": "s", "namespace": "m"}, "spec": {"predictor": {"model": {}, **predictor}}}


def test_the_field_is_the_candidates_share_and_its_absence_is_all_of_it() -> None:
    assert read_weights(isvc(canaryTrafficPercent=0)) == ALL_STABLE
    assert read_weights(isvc(canaryTrafficPercent=25)) == Weights(75, 25)
    assert read_weights(isvc()) == Weights(0, 100)
    assert apply_weights(isvc(canaryTrafficPercent=25), Weights(0, 100))["spec"]["predictor"] == {"model": {}}
    assert apply_weights(isvc(), ALL_STABLE)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    for bad in (101, -1, "10", True):
        with pytest.raises(InferenceServicePatchError, match="not a percentage"):
            read_weights(isvc(canaryTrafficPercent=bad))
    with pytest.raises(InferenceServicePatchError, match=r"has no spec\.predictor"):
        read_weights({"metadata": {}, "spec": {}})


def test_the_status_must_show_the_policys_two_revisions() -> None:
    obj = isvc()
    assert "reports no previousRolledoutRevision" in str(revision_problem(obj, "a", "b"))
    obj["status"] = {
        "components": {"predictor": {"previousRolledoutRevision": "a", "latestReadyRevision": "b"}}
    }
    assert revision_problem(obj, "a", "b") is None
    assert "not the policy's stable b and candidate a" in str(revision_problem(obj, "b", "a"))


json_values = st.recursive(
    st.integers() | st.text(max_size=3) | st.booleans(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)
objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


@given(objects, objects)
def test_the_merge_patch_turns_the_old_object_into_the_new_one(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    assert merge_patch(old, merge_patch_diff(old, new)) == new


def test_an_unchanged_field_is_not_in_the_patch() -> None:
    old = isvc(canaryTrafficPercent=10)
    new = apply_weights(old, Weights(50, 50))
    assert merge_patch_diff(old, new) == {"spec": {"predictor": {"canaryTrafficPercent": 50}}}
    assert merge_patch_diff(new, apply_weights(new, Weights(0, 100))) == {
        "spec": {"predictor": {"canaryTrafficPercent": None}}
    }
