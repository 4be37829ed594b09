"""Model registries: one module per registry, one line per registry in ``REGISTRIES``.

A registry implements :class:`mesh_canary.protocols.ModelRegistry` (resolve a
``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI, move an alias, tag a version). The
policy's ``spec.registry.provider`` picks one; what is done with it after a promotion or a
rollback, in the background, is :mod:`.announce`.

- ``mlflow``: the MLflow model registry's REST API (:mod:`.mlflow`), without the mlflow package.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from mesh_canary.core.model import RegistrySpec
from mesh_canary.errors import BadInput
from mesh_canary.protocols import ModelRegistry
from mesh_canary.redact import register_secret

__all__ = ["REGISTRIES", "ModelUri", "RegistryInputError", "parse_model_uri", "registry_for"]

_URI = re.compile(
    r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[1-9][0-9]*))$"
)


class RegistryInputError(BadInput, ValueError):
    """A model URI or registry setting that cannot be used (one sentence says which)."""


@dataclass(frozen=True)
class ModelUri:
    name: str
    alias: str | None = None
    version: str | None = None  # exactly one of alias and version is set


def parse_model_uri(uri: str) -> ModelUri:
    m = _URI.match(uri)
    if m is None:
        raise RegistryInputError(
            f"{uri!r} is not a model URI such as models:/fraud-scorer@champion or models:/fraud-scorer/3"
        )
    return ModelUri(m["name"], m["alias"], m["version"])


def _mlflow(spec: RegistrySpec, token: str | None) -> ModelRegistry:
    from mesh_canary.registry.mlflow import MlflowRegistry

    return MlflowRegistry(spec.tracking_uri, timeout_s=spec.timeout_s, token=token)


REGISTRIES: dict[str, Callable[[RegistrySpec, str | None], ModelRegistry]] = {
    "mlflow": _mlflow,
}


def registry_builder(provider: str) -> Callable[[RegistrySpec, str | None], ModelRegistry]:
    """What builds the registry ``provider`` names (RegistryInputError for an unknown one)."""
    build = REGISTRIES.get(provider)
    if build is None:
        raise RegistryInputError(
            f"no model registry {provider!r}; known registries: {', '.join(sorted(REGISTRIES))}"
        )
    return build


def registry_for(spec: RegistrySpec) -> ModelRegistry:
    """The registry the policy names, with its token (never logged) from the environment."""
    build = registry_builder(spec.provider)
    token = None
    if spec.token_from_env:
        token = os.environ.get(spec.token_from_env)
        if not token:
            raise RegistryInputError(
                f"spec.registry.tokenFromEnv names {spec.token_from_env}, which is not set in the environment"
            )
        register_secret(token)
    return build(spec, token)
