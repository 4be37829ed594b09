"""Our Kubernetes names, written once: the ModelRollout resource's group, version, kind, plural.

Every module that addresses the resource (status, events, the CRD generator, the controller,
the CLI, the report) imports them from here. Other projects' names (Istio's VirtualService)
stay with the router that speaks to them.
"""

from __future__ import annotations

GROUP = "mesh-canary.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelRollout"
LIST_KIND = f"{KIND}List"
PLURAL = "modelrollouts"
SINGULAR = KIND.lower()
CRD_NAME = f"{PLURAL}.{GROUP}"
