"""RFC 7386 JSON merge patches: the patch that turns one object into another. Pure; the
status writer and the routers that patch a single field (KServe) share it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["merge_patch_diff"]


def merge_patch_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (empty when equal)."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch_diff(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or value != before:
            patch[key] = copy.deepcopy(value)
    return patch
