"""The level schedule: a batch of trees as plain integer tensors, built before the step.

Level = height: leaves are level 0, a parent is one above its highest child. Nodes are numbered
level-major (all of level 0 first, then level 1, ...), so every level is a contiguous slice
``level_bounds[l]:level_bounds[l+1]``, every child has a smaller number than its parent, and a
batch costs ``max height + 1`` cell calls whatever its size (Tai et al. 2015 trees; the idea of
building the schedule as integer data before the step follows TensorFlow Fold's weaver).

Building is pure CPU/numpy work on each tree's cached flat arrays, picklable, and fit for a
DataLoader ``collate_fn`` (see `collate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property, partial

import numpy as np
import torch
from torch import Tensor

from .tree import Tree

__all__ = ["Schedule", "build_schedule", "collate"]


@dataclass(frozen=True)
class Schedule:
    """A batch of B trees with N nodes in L levels, numbered level-major.

    tokens      [N] int64  vocabulary id of each node's word, -1 where the node has none
    labels      [N] int64  numeric label of each node (-1 where None), or None for a batch whose
                           labels are not numbers (e.g. Penn Treebank "NP")
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
    def device(self) -> torch.device:
        return self.children.device

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
            sub = Schedule(
                tokens=self.tokens[torch.from_numpy(nodes)],
                labels=None if self.labels is None else self.labels[torch.from_numpy(nodes)],
                children=torch.from_numpy(np.where(ch >= 0, local[np.maximum(ch, 0)], -1)),
                parent=torch.from_numpy(np.where(p >= 0, local[np.maximum(p, 0)], -1)),
                level_ptr=torch.from_numpy(sub_ptr),
                roots=torch.tensor([n - 1]),
                node_tree=torch.zeros(n, dtype=torch.int64),
                post_index=self.post_index[torch.from_numpy(nodes)],
                level_bounds=tuple(int(v) for v in sub_ptr),
                tree_sizes=(n,),
            ).to(self.device)
            out.append((torch.from_numpy(nodes).to(self.device), sub))
        return out

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


def _lookup(vocab) -> Callable[[str], int]:
    if vocab is None:
        return lambda w: -1
    if isinstance(vocab, Mapping):
        return vocab.__getitem__
    if callable(vocab):
        return vocab
    if hasattr(vocab, "__getitem__"):
        return vocab.__getitem__
    raise TypeError(f"vocab must be a mapping, a callable or None, got {type(vocab).__name__}")


def build_schedule(
    trees: Sequence[Tree],
    vocab: Mapping[str, int] | Callable[[str], int] | None = None,
    *,
    n_ary: int | None = None,
) -> Schedule:
    """Number the nodes of `trees` level-major and lay out their structure as tensors.

    vocab   maps a word to its id (a mapping, e.g. `Vocab`, or a callable); nodes without a
            word get -1; with vocab=None every token is -1.
    n_ary   fixes K (the child slots of an N-ary cell); a node with more children than that
            raises ValueError. Default: K = the batch's largest fan-out.
    """
    if isinstance(trees, Tree):
        raise TypeError("build_schedule takes a sequence of trees; wrap a single tree in a list")
    trees = list(trees)
    if not trees:
        raise ValueError("build_schedule: empty batch (no trees)")
    for b, t in enumerate(trees):
        if not isinstance(t, Tree):
            raise TypeError(f"build_schedule: item {b} is a {type(t).__name__}, not a Tree")
    flats = [t.flat() for t in trees]
    sizes = np.array([len(f.parent) for f in flats], dtype=np.int64)
    offsets = np.zeros(len(flats), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    N = int(sizes.sum())

    height = np.concatenate([f.height for f in flats])
    rank = np.concatenate([f.child_rank for f in flats])
    parent_old = np.concatenate(
        [np.where(f.parent >= 0, f.parent + o, -1) for f, o in zip(flats, offsets, strict=True)]
    )
    node_tree_old = np.repeat(np.arange(len(flats), dtype=np.int64), sizes)
    post_old = np.arange(N, dtype=np.int64) - np.repeat(offsets, sizes)

    # Level-major numbering; stable, so within a level nodes keep tree then post-order order.
    perm = np.argsort(height, kind="stable")
    new_of_old = np.empty(N, dtype=np.int64)
    new_of_old[perm] = np.arange(N, dtype=np.int64)
    p = parent_old[perm]
    parent = np.where(p >= 0, new_of_old[np.maximum(p, 0)], -1)

    counts = np.bincount(height, minlength=int(height.max()) + 1)
    level_ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=level_ptr[1:])

    r = rank[perm]
    fan_out = int(r.max()) + 1 if N > len(flats) else 0
    has_parent = parent >= 0
    if n_ary is not None:
        if fan_out > n_ary:
            j = int(np.flatnonzero(r[has_parent] >= n_ary)[0])
            tree_id = int(node_tree_old[perm][has_parent][j])
            raise ValueError(
                f"build_schedule: tree {tree_id} has a node with more than n_ary={n_ary} "
                f"children (an N-ary cell takes at most {n_ary}; binarize the tree or use "
                "a Child-Sum cell)"
            )
        K = n_ary
    else:
        K = fan_out
    children = np.full((N, K), -1, dtype=np.int64)
    kids = np.flatnonzero(has_parent)
    children[parent[kids], r[kids]] = kids

    lookup = _lookup(vocab)
    ids = [-1 if w is None else lookup(w) for f in flats for w in f.words]
    tokens = np.array(ids, dtype=np.int64)[perm]
    labels = _labels([lab for f in flats for lab in f.labels], perm)

    roots = new_of_old[offsets + sizes - 1]
    return Schedule(
        tokens=torch.from_numpy(tokens),
        labels=labels,
        children=torch.from_numpy(children),
        parent=torch.from_numpy(parent),
        level_ptr=torch.from_numpy(level_ptr),
        roots=torch.from_numpy(roots),
        node_tree=torch.from_numpy(node_tree_old[perm]),
        post_index=torch.from_numpy(post_old[perm]),
        level_bounds=tuple(int(v) for v in level_ptr),
        tree_sizes=tuple(int(v) for v in sizes),
    )


_INT_TYPES = {int, np.int64, np.int32, np.int16, np.int8}


def _labels(labels: list, perm: np.ndarray) -> Tensor | None:
    """Numeric labels as an int64 tensor (-1 for None); None when any label is not an integer."""
    kinds = set(map(type, labels))
    if not kinds <= _INT_TYPES | {type(None)}:
        return None  # e.g. "NP" (bool is excluded: it is not a label)
    if type(None) in kinds:
        labels = [-1 if lab is None else lab for lab in labels]
    return torch.from_numpy(np.array(labels, dtype=np.int64)[perm])


def collate(vocab=None, *, n_ary: int | None = None) -> Callable[[Sequence[Tree]], Schedule]:
    """A picklable DataLoader ``collate_fn`` that builds the batch's schedule in the worker."""
    return partial(build_schedule, vocab=vocab, n_ary=n_ary)
