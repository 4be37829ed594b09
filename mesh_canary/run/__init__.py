"""Running a rollout: the runner (:mod:`.runner`, the one place that orders
write-then-save-then-notify), the wiring that picks a backend for a command (:mod:`.wiring`,
building routers and metrics through the registries of ``mesh_canary.routing`` and
``mesh_canary.metrics``), the demo (:mod:`.demo`), state stores (:mod:`.stores`), the clock
(:mod:`.clock`) and policy loading with the adapters' own checks (:mod:`.policy_loading`)."""
