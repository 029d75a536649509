"""Fakes derived from jaxtyping annotations (filled in by the planning work)."""

from __future__ import annotations

from typing import Any


def derive_fake(op: Any, fn: Any) -> Any:
    """A fake derived from ``fn``'s jaxtyping shape annotations, or None if it has none."""
    return None


def shape_checker(op: Any, fn: Any) -> Any:
    """A ``check(values)`` raising TypeError on inconsistent jaxtyping shapes, or None."""
    return None
