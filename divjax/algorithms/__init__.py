"""The algorithm registry. Each algorithm is one module exporting ``ALGORITHM``."""

from __future__ import annotations

from divjax.algorithms import adpsgd, divshare, dpsgd, swift
from divjax.algorithms.base import Algorithm

REGISTRY: dict[str, Algorithm] = {module.ALGORITHM.name: module.ALGORITHM
                                  for module in (divshare, swift, adpsgd, dpsgd)}


def get(name: str) -> Algorithm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; expected one of {', '.join(REGISTRY)}") from None


__all__ = ["Algorithm", "REGISTRY", "get"]
