"""Tree labels as class ids for a loss: label maps, and the id of "no label".

A tree's labels can be SST's sentiment classes (ints, used as they are), Penn Treebank
categories (``"NP"``: strings, numbered by a :class:`LabelMap`) or absent (``None``: a dependency
tree from ``Tree.from_parents``, a PTB wrapper, a node that ``binarize`` added). A node without a
label gets :data:`IGNORE_INDEX`, which ``torch.nn.functional.cross_entropy`` skips by default,
so a loss over every node trains on the labelled ones only. No torch here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any

from .formats.binarize import Factored
from .tree import Tree

__all__ = ["IGNORE_INDEX", "LabelMap", "is_unlabelled"]

#: The class id of a node without a label: PyTorch's default ``ignore_index`` (cross_entropy,
#: nll_loss), so that those nodes add nothing to the loss or its gradient.
IGNORE_INDEX = -100


def is_unlabelled(label: Any) -> bool:
    """True for None and for the ``Factored`` mark of a node that ``binarize`` added."""
    return label is None or isinstance(label, Factored)


class LabelMap:
    """Labels -> class ids ``0..K-1``, and back.

    ``LabelMap(["NP", "VP", "S"])`` numbers the labels in the order given;
    ``LabelMap.fit(trees)`` collects every label of ``trees`` (sorted). ``label_map[label]`` is
    the label's id, and :data:`IGNORE_INDEX` for an unlabelled node (None, or a node that
    ``binarize`` added). A label the map does not hold raises ``KeyError`` naming it, unless
    ``unknown`` gives the id to use instead (e.g. ``IGNORE_INDEX`` to skip such nodes, or the
    id of a catch-all class). Pass it to ``build_schedule(trees, vocab, labels=label_map)``.
    Picklable (DataLoader workers).
    """

    def __init__(self, labels: Iterable[Hashable], *, unknown: int | None = None) -> None:
        self.labels: tuple = tuple(labels)  # id -> label
        self.index: dict[Any, int] = {}  # label -> id
        for i, label in enumerate(self.labels):
            if is_unlabelled(label):
                raise ValueError(
                    f"LabelMap: {label!r} is 'no label' (always IGNORE_INDEX), not a class"
                )
            if label in self.index:
                raise ValueError(f"LabelMap: label {label!r} is listed twice")
            self.index[label] = i
        if unknown is not None and (
            type(unknown) is not int or (unknown < 0 and unknown != IGNORE_INDEX)
        ):
            raise ValueError(f"LabelMap: unknown must be an int id or None, not {unknown!r}")
        self.unknown = unknown

    @classmethod
    def fit(cls, trees: Iterable[Tree], *, unknown: int | None = None) -> LabelMap:
        """Every label of every node of ``trees`` (unlabelled nodes aside), sorted: by type
        name, then value (ints, strings) or text (other labels, e.g. ``Collapsed`` marks)."""
        seen: dict[Any, None] = {}
        for t in trees:
            if not isinstance(t, Tree):
                raise TypeError(f"LabelMap.fit expects Trees, got a {type(t).__name__}")
            for label in t.flat().labels:
                if not is_unlabelled(label):
                    seen.setdefault(label)
        return cls(sorted(seen, key=_order_key), unknown=unknown)

    def __getitem__(self, label: Any) -> int:
        i = self.index.get(label)
        if i is not None:
            return i
        if is_unlabelled(label):
            return IGNORE_INDEX
        if self.unknown is not None:
            return self.unknown
        raise KeyError(
            f"label {label!r} is not in the label map ({len(self)} labels: "
            f"{_shown(self.labels)}); add it, or pass LabelMap(..., unknown=IGNORE_INDEX) "
            "to skip such nodes (or unknown=<id> for a catch-all class)"
        )

    def decode(self, ids: Iterable[int]) -> list[Any]:
        """Class ids (e.g. a prediction's argmax) -> labels; IGNORE_INDEX -> None."""
        return [None if i == IGNORE_INDEX else self.labels[i] for i in map(int, ids)]

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator:
        return iter(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self.index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelMap):
            return NotImplemented
        return self.labels == other.labels and self.unknown == other.unknown

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        extra = "" if self.unknown is None else f", unknown={self.unknown}"
        return f"LabelMap({list(self.labels)!r}{extra})"


def _order_key(label: Any) -> tuple:
    return (type(label).__name__, label if isinstance(label, int | str) else str(label))


def _shown(labels: tuple, limit: int = 8) -> str:
    head = ", ".join(map(repr, labels[:limit]))
    return head + (", ..." if len(labels) > limit else "")
