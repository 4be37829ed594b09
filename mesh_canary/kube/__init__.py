"""Kubernetes: our resource's names (:mod:`.names`, written once), the ModelRollout client the
`rollout` verbs use (:mod:`.rollouts`), the status subresource (:mod:`.status`), Events
(:mod:`.events`) and the CRD generator (:mod:`.crd`). Other projects' resources (Istio's
VirtualService) belong to the router that writes them, in ``mesh_canary.routing``."""
