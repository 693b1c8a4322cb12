"""The recorded graph's node types (in their own module: the engine and the fused dispatch
both make nodes)."""

from __future__ import annotations

__all__ = ["Node", "Site"]


class Site:
    """What every call with the same function, argument structure, per-example shapes and
    grad mode shares: its rule, layout, signature and output shapes."""

    __slots__ = (
        "fn",
        "rule",
        "spec",
        "metas",
        "mode",
        "rows",
        "sig",
        "ospec",
        "outs",
        "single",
        "fuse",
    )


class Node:
    """One recorded call of one example."""

    __slots__ = (
        "site",
        "leaves",
        "outs",
        "users",
        "waiting",
        "depth",
        "example",
        "count",
        "group",
        "fparent",
        "height",
        "slot",
    )
