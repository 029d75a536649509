"""``jaxops.Tag``: labels an op carries (``custom_op(..., tags=...)``, ``define(..., tags=...)``).

They mirror the common members of ``torch.Tag``.  jaxops stores them on
``op.tags`` for tools and users to read; they do not change how an op runs.

>>> import jaxops
>>> jaxops.Tag.pointwise
<Tag.pointwise: 'pointwise'>
"""

from __future__ import annotations

import enum
from typing import Any


class Tag(enum.Enum):
    """An op tag (PyTorch's ``torch.Tag`` spelling)."""

    core = "core"
    data_dependent_output = "data_dependent_output"
    dynamic_output_shape = "dynamic_output_shape"
    flexible_layout = "flexible_layout"
    generated = "generated"
    inplace_view = "inplace_view"
    inplace = "inplace"
    maybe_aliasing_or_mutating = "maybe_aliasing_or_mutating"
    needs_fixed_stride_order = "needs_fixed_stride_order"
    needs_exact_strides = "needs_exact_strides"
    nondeterministic_bitwise = "nondeterministic_bitwise"
    nondeterministic_seeded = "nondeterministic_seeded"
    out = "out"
    pointwise = "pointwise"
    pt2_compliant_tag = "pt2_compliant_tag"
    view_copy = "view_copy"


def normalize_tags(op_name: str, tags: Any) -> tuple[Tag, ...]:
    """``tags`` as a tuple of :class:`Tag` members; ``ValueError`` naming the op otherwise.

    >>> normalize_tags("mylib::foo", Tag.core)
    (<Tag.core: 'core'>,)
    """
    if tags is None:
        return ()
    items = (tags,) if isinstance(tags, Tag) else tags
    try:
        items = tuple(items)
    except TypeError:
        raise ValueError(
            f"{op_name}: tags must be a jaxops.Tag or a sequence of them, got {type(tags).__name__}"
        ) from None
    for t in items:
        if not isinstance(t, Tag):
            raise ValueError(
                f"{op_name}: tags must be jaxops.Tag members (e.g. jaxops.Tag.pointwise), got {t!r}"
            )
    return tuple(dict.fromkeys(items))


__all__ = ["Tag", "normalize_tags"]
