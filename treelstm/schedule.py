"""The level schedule: a batch of trees as plain integer tensors, built before the step.

Level = height: leaves are level 0, a parent is one above its highest child. Nodes are numbered
level-major (all of level 0 first, then level 1, ...), so every level is a contiguous slice
``level_bounds[l]:level_bounds[l+1]``, every child has a smaller number than its parent, and a
batch costs ``max height + 1`` cell calls whatever its size (Tai et al. 2015 trees; the idea of
building the schedule as integer data before the step follows TensorFlow Fold's weaver).

A top-down pass (roots to leaves) goes by depth instead: the roots are depth 0, a child is one
below its parent. ``depth_order`` lists the rows depth-major and ``depth_bounds`` cuts it into
depths, so a batch costs ``max depth + 1`` steps that way (`down_layout` has the index vectors).

Building is pure CPU/numpy work on each tree's cached flat arrays, picklable, and fit for a
DataLoader ``collate_fn`` (see `collate`). Words become ids through a vocabulary, labels through
a label map (`treelstm.labels`); mistakes in either are reported with the word or label and the
tree it is in, before any tensor is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property, partial
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .formats.binarize import Factored
from .labels import IGNORE_INDEX, LabelMap
from .tree import Tree

__all__ = ["DownLayout", "Schedule", "build_schedule", "collate"]


class DownLayout(NamedTuple):
    """A schedule's nodes depth-major, for a top-down pass (`Schedule.down_layout`).

    order   [N] int64  row ids depth-major: position q holds row ``order[q]``
    pos     [N] int64  the inverse: row j sits at position ``pos[j]``
    parent  [N] int64  each position's parent as a position, N for roots (a dummy row)
    bounds  depth d is positions ``bounds[d]:bounds[d+1]`` (Python ints); depth 0 = the roots
    """

    order: Tensor
    pos: Tensor
    parent: Tensor
    bounds: tuple[int, ...]


@dataclass(frozen=True)
class Schedule:
    """A batch of B trees with N nodes in L levels, numbered level-major.

    tokens      [N] int64  vocabulary id of each node's word, -1 where the node has none
    labels      [N] int64  class id of each node, IGNORE_INDEX (-100, which cross_entropy skips)
                           where it has no label; None only when asked for (labels=None) or
                           when labels="auto" meets labels that are not integers (e.g. Penn
                           Treebank "NP": pass labels=LabelMap.fit(trees) for those)
    children    [N, K] int64  children in their original order, -1 = none (K = the batch's
                           largest fan-out, or N of an N-ary cell)
    parent      [N] int64  parent of each node, -1 for roots
    level_ptr   [L+1] int64  level l is nodes level_ptr[l]:level_ptr[l+1]
    roots       [B] int64  root node of each tree, in the order the trees were given
    node_tree   [N] int64  which tree each node belongs to
    post_index  [N] int64  the node's index in its tree's post-order (``tree.flat()``), so
                           row j is node ``post_index[j]`` of tree ``node_tree[j]``
    level_bounds   the same as level_ptr as Python ints (no device sync in the level loop)
    tree_sizes     node count of each tree
    max_token      the largest token id in the batch (-1 if none), a Python int, so that a
                   model can check it against its vocabulary size without reading the device
    depth_order [N] int64  the rows depth-major (the roots of every tree first, then their
                   children, ...), for top-down passes; None in a Schedule made by hand
                   (computed from ``parent`` on first use then)
    depth_bounds   depth d is ``depth_order[depth_bounds[d]:depth_bounds[d+1]]``, Python ints
                   (both derived from ``parent``: build_schedule fills them; a schedule whose
                   ``parent`` is changed with dataclasses.replace must drop them too)

    Rows are in schedule order; `split(x)` gives each tree's rows back in its own post-order.
    """

    tokens: Tensor
    labels: Tensor | None
    children: Tensor
    parent: Tensor
    level_ptr: Tensor
    roots: Tensor
    node_tree: Tensor
    post_index: Tensor
    level_bounds: tuple[int, ...]
    tree_sizes: tuple[int, ...]
    max_token: int = -1
    depth_order: Tensor | None = None
    depth_bounds: tuple[int, ...] = ()

    @property
    def num_nodes(self) -> int:
        return self.level_bounds[-1]

    @property
    def num_levels(self) -> int:
        return len(self.level_bounds) - 1

    @property
    def batch_size(self) -> int:
        return len(self.tree_sizes)

    @property
    def max_children(self) -> int:
        return self.children.shape[1]

    @property
    def num_leaves(self) -> int:
        return self.level_bounds[1]

    @property
    def num_depths(self) -> int:
        """Steps of a top-down pass: max depth + 1."""
        return len(self.down_layout.bounds) - 1

    @property
    def device(self) -> torch.device:
        return self.children.device

    @cached_property
    def down_layout(self) -> DownLayout:
        """The index vectors of a top-down pass (see `DownLayout`), built on the schedule's
        device from ``depth_order`` and ``parent`` with no read-back. Cached."""
        order, bounds = self.depth_order, self.depth_bounds
        if order is None:  # a Schedule made by hand: derive the depths on the CPU once
            depth_order, bounds = _depth_layout(self.parent.cpu().numpy(), self.level_bounds)
            order = torch.from_numpy(depth_order).to(self.device)
        N = self.num_nodes
        pos = torch.empty_like(order)
        pos[order] = torch.arange(N, device=order.device)
        p = self.parent.index_select(0, order)
        parent = torch.where(p >= 0, pos.index_select(0, p.clamp(min=0)), N)
        return DownLayout(order, pos, parent, bounds)

    def is_leaf(self) -> Tensor:
        """[N] bool: leaves are exactly level 0."""
        return torch.arange(self.num_nodes, device=self.device) < self.num_leaves

    @cached_property
    def per_tree(self) -> list[tuple[Tensor, Schedule]]:
        """Each tree alone: (its node ids in this schedule [n_b], its own Schedule). Cached."""
        node_tree = self.node_tree.cpu().numpy()
        ptr = self.level_ptr.cpu().numpy()
        level = np.searchsorted(ptr, np.arange(self.num_nodes), side="right") - 1
        children = self.children.cpu().numpy()
        parent = self.parent.cpu().numpy()
        local = np.empty(self.num_nodes, dtype=np.int64)
        order = np.argsort(node_tree, kind="stable")  # level-major within each tree
        out = []
        start = 0
        for n in self.tree_sizes:
            nodes = order[start : start + n]
            start += n
            local[nodes] = np.arange(n)
            ch = children[nodes]
            sub_ptr = np.zeros(int(level[nodes].max()) + 2, dtype=np.int64)
            np.cumsum(np.bincount(level[nodes]), out=sub_ptr[1:])
            p = parent[nodes]
            sub_parent = np.where(p >= 0, local[np.maximum(p, 0)], -1)
            sub_depth_order, sub_depth_bounds = _depth_layout(sub_parent, sub_ptr)
            sub = Schedule(
                tokens=self.tokens[torch.from_numpy(nodes)],
                labels=None if self.labels is None else self.labels[torch.from_numpy(nodes)],
                children=torch.from_numpy(np.where(ch >= 0, local[np.maximum(ch, 0)], -1)),
                parent=torch.from_numpy(sub_parent),
                level_ptr=torch.from_numpy(sub_ptr),
                roots=torch.tensor([n - 1]),
                node_tree=torch.zeros(n, dtype=torch.int64),
                post_index=self.post_index[torch.from_numpy(nodes)],
                level_bounds=tuple(int(v) for v in sub_ptr),
                tree_sizes=(n,),
                max_token=self.max_token,  # a bound for the tree's own tokens
                depth_order=torch.from_numpy(sub_depth_order),
                depth_bounds=sub_depth_bounds,
            ).to(self.device)
            out.append((torch.from_numpy(nodes).to(self.device), sub))
        return out

    @cached_property
    def _tree_order(self) -> Tensor:
        """[N] int64: row ids tree by tree, each tree's nodes in its post-order. Built on the
        schedule's device from post_index and node_tree, with no read-back (no sync)."""
        offsets = [0]
        for n in self.tree_sizes[:-1]:
            offsets.append(offsets[-1] + n)
        start = torch.tensor(offsets, dtype=torch.int64, device=self.device)
        where = start[self.node_tree] + self.post_index  # each row's place in tree order
        order = torch.empty_like(where)
        order[where] = torch.arange(self.num_nodes, device=self.device)
        return order

    def per_tree_rows(self) -> list[Tensor]:
        """For each tree b, the [n_b] row ids of its nodes in its own post-order
        (``trees[b].flat()`` / ``trees[b].postorder()`` order; the root, last, is
        ``roots[b]``). ``h[rows[b][i]]`` is node i of tree b."""
        return list(self._tree_order.split(self.tree_sizes))

    def split(self, x: Tensor) -> tuple[Tensor, ...]:
        """x [N, ...] in schedule order (e.g. ``encoder(schedule).h``, logits) -> one tensor
        [n_b, ...] per tree, its rows in the tree's post-order: ``split(h)[b][i]`` is node i of
        ``trees[b].postorder()``, and ``split(h)[b][-1]`` its root. One gather; differentiable."""
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] != self.num_nodes:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"Schedule.split: expected a tensor with one row per node [{self.num_nodes}, "
                f"...] in schedule order (e.g. out.h), got {got}"
            )
        return x.index_select(0, self._tree_order.to(x.device)).split(self.tree_sizes)

    def _map_tensors(self, fn: Callable[[Tensor], Tensor]) -> Schedule:
        changes = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                changes[f.name] = fn(v)
        return replace(self, **changes)

    def to(self, device, non_blocking: bool = False) -> Schedule:
        """The same schedule with every tensor on `device`."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Schedule:
        """Page-locked copies, so `.to(cuda, non_blocking=True)` overlaps (DataLoader calls it)."""
        return self._map_tensors(lambda t: t.pin_memory())


def build_schedule(
    trees: Sequence[Tree],
    vocab: Mapping[str, int] | Callable[[str], int] | None = None,
    *,
    n_ary: int | None = None,
    labels: LabelMap | Mapping | Callable | str | None = "auto",
    unk: int | None = None,
) -> Schedule:
    """Number the nodes of `trees` level-major and lay out their structure as tensors.

    vocab   maps a word to its id: a mapping ({"good": 0, ...}, `Vocab`) or a callable; nodes
            without a word get -1; with vocab=None every token is -1. Ids must be integers
            0..V-1 for a `TreeLSTM(V, ...)`. A word the vocab lacks raises ValueError naming it
            and its tree, unless `unk` is given: the id every unknown word then gets.
    n_ary   fixes K (the child slots of an N-ary cell); a node with more children than that
            raises ValueError (`treelstm.binarize` fixes such trees). Default: K = the batch's
            largest fan-out.
    labels  how labels become `Schedule.labels` (a node without a label, or one that
            `binarize` added, always gets IGNORE_INDEX):
            "auto"   integer labels (SST) as they are; labels = None if any label is not an
                     integer (e.g. "NP"), so pass a label map for those;
            a `LabelMap`, mapping or callable: every label through it; a label it lacks
                     raises ValueError naming the label and its tree;
            None     no labels (Schedule.labels is None).
    """
    trees = _tree_list(trees)
    flats = [t.flat() for t in trees]
    sizes = np.array([len(f.parent) for f in flats], dtype=np.int64)
    offsets = np.zeros(len(flats), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    tokens = _token_ids(flats, vocab, unk)  # before any layout work: vocab errors come first
    label_ids = _label_ids(flats, labels)
    N = int(sizes.sum())
    height = np.concatenate([f.height for f in flats])
    node_offset = np.repeat(offsets, sizes)  # one array op instead of one per tree
    local_parent = np.concatenate([f.parent for f in flats])
    parent_old = np.where(local_parent >= 0, local_parent + node_offset, -1)
    node_tree_old = np.repeat(np.arange(len(flats), dtype=np.int64), sizes)
    post_old = np.arange(N, dtype=np.int64) - node_offset

    # Level-major numbering; stable, so within a level nodes keep tree then post-order order.
    perm = np.argsort(height, kind="stable")
    new_of_old = np.empty(N, dtype=np.int64)
    new_of_old[perm] = np.arange(N, dtype=np.int64)
    p = parent_old[perm]
    parent = np.where(p >= 0, new_of_old[np.maximum(p, 0)], -1)
    counts = np.bincount(height, minlength=int(height.max()) + 1)
    level_ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=level_ptr[1:])
    rank = np.concatenate([f.child_rank for f in flats])[perm]
    children = _child_table(parent, rank, n_ary, node_tree_old[perm], len(flats))
    depth_order, depth_bounds = _depth_layout(parent, level_ptr)

    return Schedule(
        tokens=torch.from_numpy(tokens[perm]),
        labels=None if label_ids is None else torch.from_numpy(label_ids[perm]),
        children=torch.from_numpy(children),
        parent=torch.from_numpy(parent),
        level_ptr=torch.from_numpy(level_ptr),
        roots=torch.from_numpy(new_of_old[offsets + sizes - 1]),
        node_tree=torch.from_numpy(node_tree_old[perm]),
        post_index=torch.from_numpy(post_old[perm]),
        level_bounds=tuple(int(v) for v in level_ptr),
        tree_sizes=tuple(int(v) for v in sizes),
        max_token=int(tokens.max()),
        depth_order=torch.from_numpy(depth_order),
        depth_bounds=depth_bounds,
    )


def collate(
    vocab=None,
    *,
    n_ary: int | None = None,
    labels: LabelMap | Mapping | Callable | str | None = "auto",
    unk: int | None = None,
) -> Callable[[Sequence[Tree]], Schedule]:
    """A picklable DataLoader ``collate_fn`` that builds the batch's schedule in the worker."""
    return partial(build_schedule, vocab=vocab, n_ary=n_ary, labels=labels, unk=unk)


# ---------------------------------------------------------------------------------- structure


def _tree_list(trees) -> list[Tree]:
    if isinstance(trees, Tree):
        raise TypeError("build_schedule takes a sequence of trees; wrap a single tree in a list")
    if isinstance(trees, str):
        raise TypeError("build_schedule takes trees, not text: parse it with Tree.from_ptb")
    trees = list(trees)
    if not trees:
        raise ValueError("build_schedule: empty batch (no trees)")
    for b, t in enumerate(trees):
        if not isinstance(t, Tree):
            raise TypeError(f"build_schedule: item {b} is a {type(t).__name__}, not a Tree")
    return trees


def _depth_layout(parent: np.ndarray, level_bounds) -> tuple[np.ndarray, tuple[int, ...]]:
    """(rows depth-major [N], depth bounds) of a level-major forest (-1 = root)."""
    depth = _depths(parent, level_bounds)
    # Stable: within a depth, rows keep the level-major order. int16 keys sort by radix
    # (~4x faster than int64's merge sort on a batch of SST trees).
    key = depth.astype(np.int16) if depth.size and depth.max() < 2**15 else depth
    order = np.argsort(key, kind="stable")
    bounds = np.zeros(int(depth.max(initial=0)) + 2, dtype=np.int64)
    np.cumsum(np.bincount(depth, minlength=len(bounds) - 1), out=bounds[1:])
    return order, tuple(int(v) for v in bounds)


def _depths(parent: np.ndarray, level_bounds) -> np.ndarray:
    """[N] depth of every row of a level-major forest (roots 0).

    A parent is on a higher level, so on a higher row: one pass from the last row down gives
    every depth. Measured on SST trees, a Python loop over the rows (~50 ns a row) beats a
    numpy op per level (~3 us a level) up to about 64 rows a level, e.g. on one tree or a
    chain; above that, one whole-level numpy op per level from the top.
    """
    N, L = len(parent), len(level_bounds) - 1
    if N <= 64 * L:
        up = parent.tolist()
        depth = [0] * N
        for j in range(N - 1, -1, -1):
            q = up[j]
            if q >= 0:
                depth[j] = depth[q] + 1
        return np.array(depth, dtype=np.int64)
    depth = np.zeros(N, dtype=np.int64)
    for s, e in zip(level_bounds[-2::-1], level_bounds[:0:-1], strict=True):
        p = parent[s:e]
        depth[s:e] = np.where(p >= 0, depth[np.maximum(p, 0)] + 1, 0)
    return depth


def _child_table(parent, rank, n_ary, node_tree, n_trees) -> np.ndarray:
    """[N, K] children in their order, -1 = none; K = n_ary, or the largest fan-out."""
    N = len(parent)
    fan_out = int(rank.max()) + 1 if N > n_trees else 0
    has_parent = parent >= 0
    K = fan_out
    if n_ary is not None:
        if fan_out > n_ary:
            j = int(np.flatnonzero(rank[has_parent] >= n_ary)[0])
            tree_id = int(node_tree[has_parent][j])
            raise ValueError(
                f"build_schedule: tree {tree_id} has a node with more than n_ary={n_ary} "
                f"children (an N-ary cell takes at most {n_ary}): treelstm.binarize(tree) gives "
                "every node at most 2, or use a Child-Sum cell"
            )
        K = n_ary
    children = np.full((N, K), -1, dtype=np.int64)
    kids = np.flatnonzero(has_parent)
    children[parent[kids], rank[kids]] = kids
    return children


# ------------------------------------------------------------------------------------- tokens


def _token_ids(flats, vocab, unk: int | None) -> np.ndarray:
    """[N] int64 ids of every node's word, trees one after another in post-order."""
    if vocab is None:
        return np.full(sum(len(f) for f in flats), -1, dtype=np.int64)
    lookup = _lookup(vocab, unk)
    try:
        ids = [-1 if w is None else lookup(w) for f in flats for w in f.words]
    except LookupError:
        raise _missing(flats, lookup, "word", "the vocab", _UNK_HINT) from None
    if not _all_ints(ids):
        raise _bad_id(flats, ids, "vocab", "word", "-1 means no word")
    out = np.array(ids, dtype=np.int64)
    if out.min() < -1:
        raise _bad_id(flats, ids, "vocab", "word", "-1 means no word")
    return out


_UNK_HINT = (
    "add it, or pass unk=<id> to build_schedule (or collate) to give every unknown word one id, "
    "e.g. that of an '<unk>' entry (treelstm.Vocab does this itself)"
)


def _lookup(vocab, unk: int | None) -> Callable[[str], object]:
    if isinstance(vocab, list | tuple | str):
        raise TypeError(
            f"build_schedule: vocab is a {type(vocab).__name__}; pass a dict from word to id, "
            "e.g. {w: i for i, w in enumerate(words)}, a treelstm.Vocab, or a callable"
        )
    if isinstance(vocab, Mapping):
        get = vocab.__getitem__
    elif callable(vocab):
        get = vocab
    elif hasattr(vocab, "__getitem__"):
        get = vocab.__getitem__
    else:
        raise TypeError(
            f"vocab must be a mapping (word -> id), a callable or None, got {type(vocab).__name__}"
        )
    if unk is None:
        return get
    if type(unk) is not int or unk < 0:
        raise ValueError(f"build_schedule: unk must be an id >= 0, not {unk!r}")
    if isinstance(vocab, Mapping):
        return lambda w: vocab.get(w, unk)
    return partial(_get_or, get, unk)


def _get_or(get, default, key):
    try:
        return get(key)
    except LookupError:
        return default


# ------------------------------------------------------------------------------------- labels


def _label_ids(flats, spec) -> np.ndarray | None:
    """[N] int64 class ids (trees one after another, post-order), or None (see build_schedule)."""
    if spec is None:
        return None
    raw = [lab for f in flats for lab in f.labels]
    if isinstance(spec, str):
        if spec != "auto":
            raise ValueError(
                f'build_schedule: labels must be "auto", a LabelMap, a mapping, a callable or '
                f"None, not {spec!r}"
            )
        return _auto_labels(raw)
    if isinstance(spec, Mapping | LabelMap):
        get = spec.__getitem__
    elif callable(spec):
        get = spec
    else:
        raise TypeError(
            'build_schedule: labels must be "auto", a LabelMap, a mapping, a callable or '
            f"None, not a {type(spec).__name__}"
        )
    try:
        ids = [IGNORE_INDEX if _unlabelled(lab) else get(lab) for lab in raw]
    except LookupError:
        raise _missing(flats, get, "label", "the label map", _LABEL_HINT) from None
    if not _all_ints(ids):
        raise _bad_id(flats, ids, "label map", "label", f"or IGNORE_INDEX = {IGNORE_INDEX}")
    out = np.array(ids, dtype=np.int64)
    if ((out < 0) & (out != IGNORE_INDEX)).any():
        raise _bad_id(flats, ids, "label map", "label", f"or IGNORE_INDEX = {IGNORE_INDEX}")
    return out


_LABEL_HINT = (
    "add it, build the map from every split with LabelMap.fit(trees), or pass "
    "LabelMap(..., unknown=IGNORE_INDEX) to skip nodes with labels it lacks"
)

_INT_TYPES = {int, np.int64, np.int32, np.int16, np.int8}


def _unlabelled(label) -> bool:
    return label is None or type(label) is Factored


def _auto_labels(raw: list) -> np.ndarray | None:
    """Integer labels as they are, unlabelled nodes IGNORE_INDEX; None for other labels."""
    kinds = set(map(type, raw))
    if not kinds <= _INT_TYPES | {type(None), Factored}:
        return None  # e.g. "NP" (bool is excluded: it is not a label)
    if not kinds <= _INT_TYPES:
        raw = [IGNORE_INDEX if _unlabelled(lab) else lab for lab in raw]
    return np.array(raw, dtype=np.int64)


def _all_ints(ids: list) -> bool:
    """True when every id is an int or a numpy integer (bool, str, float... are not ids)."""
    return all(
        k is int or (k is not bool and issubclass(k, np.integer)) for k in set(map(type, ids))
    )


# ------------------------------------------------------------------------------------- errors


def _missing(flats, get, what: str, where: str, hint: str) -> ValueError:
    """The first word/label ``get`` does not know, with its tree, as one clear error."""
    for b, f in enumerate(flats):
        for item in f.words if what == "word" else f.labels:
            if item is None or _unlabelled(item):
                continue
            try:
                get(item)
            except LookupError:
                return ValueError(
                    f"build_schedule: {what} {item!r} (tree {b}) is not in {where}; {hint}"
                )
    return ValueError(f"build_schedule: a {what} is not in {where}; {hint}")


def _bad_id(flats, ids: list, source: str, what: str, note: str) -> TypeError | ValueError:
    """The first id that is not an integer >= 0 (or the allowed negative), as one clear error."""
    items = [x for f in flats for x in (f.words if what == "word" else f.labels)]
    b_of = [b for b, f in enumerate(flats) for _ in range(len(f))]
    for item, i, b in zip(items, ids, b_of, strict=True):
        if not _all_ints([i]):
            return TypeError(
                f"build_schedule: the {source} gave {type(i).__name__} {i!r} for {what} "
                f"{item!r} (tree {b}); ids must be integers, e.g. {{{item!r}: 0}}"
            )
    allowed = -1 if what == "word" else IGNORE_INDEX  # the one negative id that means "none"
    for item, i, b in zip(items, ids, b_of, strict=True):
        if i < 0 and i != allowed:
            return ValueError(
                f"build_schedule: the {source} gave id {i} for {what} {item!r} (tree {b}); "
                f"ids must be >= 0 ({note})"
            )
    return ValueError(f"build_schedule: the {source} gave ids that are not integers >= 0")
