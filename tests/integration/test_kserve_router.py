"""KServeRouter through the official client, over HTTP, against the API stand-in holding KServe's
own InferenceService CRD (tests/data/kserve/): every write is validated against its v1beta1 schema.

The stand-in plays KServe's part only as far as the router reads it: the test writes the
InferenceService status (previous / latest revisions) as KServe's controller would.
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest

from mesh_canary.core.model import Destination, Policy, RouteRef, VersionSpec
from mesh_canary.core.policy import load_policy_text
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.routing import RouterTarget, router_for_route
from mesh_canary.routing.base import RollbackRecord, RouteConflict, RouteNotFound, RouteOwned, WeightsMoved
from mesh_canary.routing.kserve import (
    GROUP,
    PLURAL,
    VERSION,
    InferenceServicePatchError,
    KServeConflict,
    KServeRouter,
    KServeRouterError,
)
from mesh_canary.routing.kube_route import ANNOTATION_OWNER, ANNOTATION_ROLLBACK
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner
from tests.crd_schema import REPO, load_yaml, validator_for
from tests.kube_standin import KubeStandIn
from tests.test_engine import ScriptedJudge, make_policy
from tests.test_runner import FakeMetrics, Journal, JournalNotifier

pytestmark = pytest.mark.integration

KSERVE_CRD = REPO / "tests" / "data" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
NS = "models"
RES = f"{GROUP}/{VERSION}/{PLURAL}"
OLD, NEW = "fraud-scorer-predictor-00001", "fraud-scorer-predictor-00002"


@pytest.fixture
def kube(tmp_path: pathlib.Path) -> Iterator[KubeStandIn]:
    with KubeStandIn([load_yaml(KSERVE_CRD)], workdir=tmp_path) as api:
        yield api


def policy(stable: str = OLD, candidate: str = NEW) -> Policy:
    return load_policy_text(f"""
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {{name: fraud-scorer, namespace: {NS}}}
spec:
  route: {{kind: InferenceService, name: fraud-scorer}}
  stable: {{destination: {{host: {stable}}}}}
  candidate: {{destination: {{host: {candidate}}}}}
  metrics: {{profile: kserve}}
""")


def isvc(percent: int | None = 0) -> dict[str, Any]:
    """What a person applies to start a KServe canary: a new storageUri, canaryTrafficPercent set."""
    predictor: dict[str, Any] = {
        "minReplicas": 1,
        "model": {
            "modelFormat": {"name": "sklearn"},
            "storageUri": "gs://models/fraud-scorer/v2",
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        },
    }
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": "fraud-scorer",
            "namespace": NS,
            "labels": {"team": "fraud"},
            "annotations": {"serving.kserve.io/deploymentMode": "Serverless"},
        },
        "spec": {"predictor": predictor},
    }


def status(stable: str = OLD, latest: str = NEW, percent: int = 0) -> dict[str, Any]:
    """The status KServe's controller writes while a canary runs (its own field names)."""
    return {
        "url": f"http://fraud-scorer.{NS}.example.com",
        "conditions": [{"type": "Ready", "status": "True"}],
        "components": {
            "predictor": {
                "latestCreatedRevision": latest,
                "latestReadyRevision": latest,
                "previousRolledoutRevision": stable,
                "latestRolledoutRevision": stable,
                "traffic": [
                    {"revisionName": latest, "percent": percent, "latestRevision": True, "tag": "latest"},
                    {
                        "revisionName": stable,
                        "percent": 100 - percent,
                        "latestRevision": False,
                        "tag": "prev",
                    },
                ],
            }
        },
    }


def api(kube: KubeStandIn) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube.api_client())


def create(kube: KubeStandIn, obj: dict[str, Any] | None = None, with_status: bool = True) -> None:
    api(kube).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj or isvc())
    if with_status:
        kube.write(RES, NS, "fraud-scorer", lambda o: o.update(status=status()))


def live(kube: KubeStandIn) -> dict[str, Any]:
    return dict(api(kube).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "fraud-scorer"))


def writes(kube: KubeStandIn) -> list[tuple[str, Any]]:
    """(method, JSON body) of every write to an InferenceService, in order."""
    return kube.call(
        lambda h: [
            (r.method.value, json.loads(r.body or b"null"))
            for r in h._requests
            if r.method.value in ("PUT", "PATCH") and r.resource is not None and r.resource.plural == PLURAL
        ]
    )


def without(obj: dict[str, Any], *paths: tuple[str, ...]) -> dict[str, Any]:
    clone = copy.deepcopy(obj)
    for key in ("resourceVersion", "generation", "uid", "creationTimestamp"):
        clone["metadata"].pop(key, None)
    for path in paths:
        node = clone
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1], None)
    return clone


def router(kube: KubeStandIn, pol: Policy | None = None) -> KServeRouter:
    built = router_for_route(pol or policy(), RouterTarget(api_client=kube.api_client()))
    assert isinstance(built, KServeRouter)
    return built


def canary_field(obj: dict[str, Any]) -> int | None:
    value = obj["spec"]["predictor"].get("canaryTrafficPercent")
    return None if value is None else int(value)


def test_only_the_canary_field_changes_promotion_removes_it_and_every_version_is_valid(
    kube: KubeStandIn,
) -> None:
    create(kube)
    before = live(kube)
    r = router(kube)
    assert r.ref == "InferenceService models/fraud-scorer" and r.get_weights() == ALL_STABLE
    seen = []
    for w in (Weights(95, 5), Weights(75, 25), Weights(50, 50), Weights(0, 100)):
        r.set_weights(w)
        assert r.get_weights() == w
        seen.append(canary_field(live(kube)))
    assert seen == [5, 25, 50, None], "promotion removes the field, as KServe documents"
    after = live(kube)
    assert without(after, ("spec", "predictor", "canaryTrafficPercent")) == without(
        before, ("spec", "predictor", "canaryTrafficPercent")
    )
    # Each write is a merge patch of that field alone, carrying the resourceVersion it read.
    bodies = writes(kube)
    assert [m for m, _ in bodies] == ["PATCH"] * 4
    for (_, body), value in zip(bodies, [5, 25, 50, None], strict=True):
        assert body == {
            "spec": {"predictor": {"canaryTrafficPercent": value}},
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
        }
    validator = validator_for(KSERVE_CRD)
    for version in kube.stored(RES, NS, "fraud-scorer"):
        assert validator.errors(version) == []
    r.set_weights(Weights(0, 100))  # no change: no write
    assert r.writes == 4


def test_the_stand_in_refuses_what_kserves_crd_refuses(kube: KubeStandIn) -> None:
    bad = isvc()
    bad["spec"]["predictor"]["canaryTrafficPercent"] = "10"  # a string where KServe has an int64
    bad["spec"]["predictor"]["canaryWeight"] = 10  # no such field
    with pytest.raises(kubernetes.client.exceptions.ApiException) as caught:
        api(kube).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, bad)
    assert caught.value.status == 422
    fields = sorted(c["field"] for c in json.loads(caught.value.body)["details"]["causes"])
    assert fields == ["spec.predictor", "spec.predictor.canaryTrafficPercent"]


def test_a_conflict_is_one_typed_error_and_the_next_attempt_reads_afresh(kube: KubeStandIn) -> None:
    create(kube)

    def concurrent_writer(handler: Any) -> None:
        async def relabel(request: Any) -> None:
            await handler.write(RES, NS, "fraud-scorer", lambda o: o["metadata"]["labels"].update(owner="ml"))

        handler["patch", handler.resource(RES)][:1] >> relabel

    kube.call(concurrent_writer)
    r = router(kube)
    with pytest.raises(KServeConflict, match="HTTP 409") as caught:
        r.set_weights(Weights(90, 10))
    assert isinstance(caught.value, RouteConflict) and r.conflicts == 1
    r.set_weights(Weights(90, 10))
    after = live(kube)
    assert canary_field(after) == 10
    assert after["metadata"]["labels"] == {"team": "fraud", "owner": "ml"}, "the other write was kept"


def test_a_forward_write_is_a_compare_and_swap_and_a_persons_move_is_not_overwritten(
    kube: KubeStandIn,
) -> None:
    create(kube)
    r = router(kube)
    r.write(Weights(50, 50), expected=ALL_STABLE)
    kube.write(RES, NS, "fraud-scorer", lambda o: o["spec"]["predictor"].update(canaryTrafficPercent=0))
    count = len(writes(kube))
    with pytest.raises(WeightsMoved) as moved:
        r.write(Weights(25, 75), expected=Weights(50, 50))
    assert moved.value.live == ALL_STABLE
    assert "InferenceService models/fraud-scorer holds 100/0" in str(moved.value)
    assert len(writes(kube)) == count and canary_field(live(kube)) == 0, "nothing written over the person"


def test_ownership_the_rollback_record_and_release(kube: KubeStandIn) -> None:
    create(kube)
    first, second = router(kube), router(kube)
    first.claim("run-a", "models/fraud-scorer")
    with pytest.raises(
        RouteOwned, match=r"remove the annotation mesh-canary\.io/owner from the InferenceService"
    ):
        second.claim("run-b", "models/fraud-scorer")
    with pytest.raises(RouteOwned):
        second.write(Weights(90, 10), owner="run-b", expected=ALL_STABLE)
    first.write(Weights(50, 50), owner="run-a", expected=ALL_STABLE)
    record = RollbackRecord("run-a", "errorRate failed", ("errorRate",), 12.5)
    before = len(writes(kube))
    first.write(ALL_STABLE, owner="run-a", rollback=record)  # checks nothing, one patch
    bodies = writes(kube)[before:]
    assert len(bodies) == 1
    assert bodies[0][1]["spec"] == {"predictor": {"canaryTrafficPercent": 0}}, "rollback writes 0"
    stored = live(kube)
    assert canary_field(stored) == 0
    assert json.loads(stored["metadata"]["annotations"][ANNOTATION_ROLLBACK])["runId"] == "run-a"
    assert first.recorded_rollback() == record
    first.release("run-a")
    assert ANNOTATION_OWNER not in live(kube)["metadata"]["annotations"]
    assert live(kube)["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    second.claim("run-b", "models/fraud-scorer")  # a new run drops the old run's record
    assert ANNOTATION_ROLLBACK not in live(kube)["metadata"]["annotations"]
    for version in kube.stored(RES, NS, "fraud-scorer"):
        assert validator_for(KSERVE_CRD).errors(version) == []


def test_the_revisions_come_from_the_status_and_must_be_the_policys(kube: KubeStandIn) -> None:
    create(kube, with_status=False)
    with pytest.raises(InferenceServicePatchError, match="reports no previousRolledoutRevision"):
        router(kube).claim("run-a", "models/fraud-scorer")
    kube.write(RES, NS, "fraud-scorer", lambda o: o.update(status=status()))
    with pytest.raises(
        InferenceServicePatchError, match=f"not the policy's stable {OLD} and candidate x-00009"
    ):
        router(kube, policy(candidate="x-00009")).claim("run-a", "models/fraud-scorer")
    starting = status()
    starting["components"]["predictor"]["latestCreatedRevision"] = "fraud-scorer-predictor-00003"
    kube.write(RES, NS, "fraud-scorer", lambda o: o.update(status=starting))
    with pytest.raises(
        InferenceServicePatchError, match="still starting revision fraud-scorer-predictor-00003"
    ):
        router(kube).claim("run-a", "models/fraud-scorer")
    assert writes(kube) == [], "a refused claim writes nothing"
    kube.write(RES, NS, "fraud-scorer", lambda o: o.update(status=status()))
    r = router(kube)
    r.claim("run-a", "models/fraud-scorer")
    r.set_weights(Weights(75, 25))
    assert r.check_drift() is None
    # Someone edits the predictor: KServe starts a third revision, which now gets the canary share.
    kube.write(RES, NS, "fraud-scorer", lambda o: o.update(status=starting))
    message = r.check_drift()
    assert message is not None and "new predictor revision (fraud-scorer-predictor-00003)" in message
    kube.write(RES, NS, "fraud-scorer", lambda o: o["spec"]["predictor"].update(canaryTrafficPercent=0))
    message = r.check_drift()
    assert message is not None and "sends 0% to the candidate revision, not the 25%" in message


def test_configuration_errors_are_typed_and_nothing_is_written(kube: KubeStandIn) -> None:
    r = router(kube)
    with pytest.raises(RouteNotFound, match=r"InferenceService models/fraud-scorer does not exist\."):
        r.get_weights()
    create(kube)
    with pytest.raises(InferenceServicePatchError, match="no fallback"):
        r.set_weights(Weights(50, 0, fallback=50))
    with pytest.raises(InferenceServicePatchError, match="cannot mirror"):
        r.set_weights(Weights(100, 0, mirror_percent=100))
    kube.call(lambda h: h["patch", h.resource(RES)][:1] << 503)
    with pytest.raises(KServeRouterError, match="HTTP 503"):
        r.set_weights(Weights(90, 10))
    assert canary_field(live(kube)) == 0 and len(writes(kube)) == 1  # the refused one


# --------------------------------------------------------------------------- the real runner


def runner_policy() -> Policy:
    return make_policy(
        route=RouteRef("fraud-scorer", NS, kind="InferenceService"),
        stable=VersionSpec(Destination(OLD), OLD, OLD),
        candidate=VersionSpec(Destination(NEW), NEW, NEW),
    )


def run(kube: KubeStandIn, errors_at: float | None = None, person_at_step: int | None = None) -> Any:
    pol = runner_policy()
    r = KServeRouter(pol, kube.api_client())
    runner = RolloutRunner(
        pol,
        r,
        FakeMetrics(errors_at=errors_at),
        None,
        JournalNotifier(Journal()),
        VirtualClock(),
        judge=ScriptedJudge(),
    )
    if person_at_step is None:
        return runner.run()
    state = runner.start_or_resume()
    while state.step_index < person_at_step:
        runner.clock.sleep(30)
        state = runner.tick_once()
    kube.write(RES, NS, "fraud-scorer", lambda o: o["spec"]["predictor"].update(canaryTrafficPercent=0))
    return runner.run()


def test_a_healthy_rollout_through_the_runner_ends_with_the_field_removed(kube: KubeStandIn) -> None:
    create(kube)
    result = run(kube)
    assert result.outcome == "promoted"
    after = live(kube)
    assert canary_field(after) is None and ANNOTATION_OWNER not in after["metadata"].get("annotations", {})
    assert [canary_field(v) for v in kube.stored(RES, NS, "fraud-scorer")][-1] is None


def test_a_failing_candidate_through_the_runner_is_rolled_back_to_zero(kube: KubeStandIn) -> None:
    create(kube)
    result = run(kube, errors_at=90.0)
    assert result.outcome == "rolled_back"
    after = live(kube)
    assert canary_field(after) == 0
    assert json.loads(after["metadata"]["annotations"][ANNOTATION_ROLLBACK])["reason"]


def test_a_persons_move_to_stable_stops_the_runner_and_is_kept(kube: KubeStandIn) -> None:
    create(kube)
    result = run(kube, person_at_step=1)
    assert result.outcome == "aborted" and "outside mesh-canary" in result.state.reason
    assert canary_field(live(kube)) == 0
    assert [canary_field(v) for v in kube.stored(RES, NS, "fraud-scorer")][-2:] == [0, 0]
