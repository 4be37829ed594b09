"""Kubernetes: our resource's names (:mod:`.names`, written once), the ModelRollout client the
`rollout` verbs use (:mod:`.rollouts`), the status subresource (:mod:`.status`), Events
(:mod:`.events`), the CRD generator (:mod:`.crd`) and the one error type of API failures with
the one place that maps the client's errors to it (:mod:`.errors`). Other projects' resources (Istio's
VirtualService) belong to the router that writes them, in ``mesh_canary.routing``."""
