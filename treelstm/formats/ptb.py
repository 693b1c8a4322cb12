"""Penn Treebank bracket text: ``"(3 (2 good) (4 film))"``, one tree per line in a file.

A preterminal ``(2 good)`` is a leaf ``Tree(2, "good")``; labels go through ``label_type``
(``int`` for SST's sentiment classes, ``str`` for Penn Treebank categories such as ``NP``).

The reader is our own loop rather than ``nltk.Tree.fromstring``: nltk (3.10) refuses nesting
deeper than ``MAX_TREE_DEPTH = 500`` and runs custom token patterns under a wall-clock regex
timeout, and the checks below, needed for clear messages, already are a full parse. The tests
hold this reader to nltk's (ASCII-whitespace token patterns) on generated trees and on SST.
Nothing recurses; errors say what is wrong at which character offset, prefixed by ``where``
(``"train.txt:12"``).
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..tree import Tree
from ._text import ASCII_WS, convert_label, fail, read_lines, short

__all__ = ["from_ptb", "to_ptb", "read_ptb", "write_ptb", "normalize_token"]

_TOKEN_RE = re.compile(r"\(|\)|[^ \t\n\r\f\v()]+")

_BRACKET_ESCAPES = {
    "-LRB-": "(",
    "-RRB-": ")",
    "-LSB-": "[",
    "-RSB-": "]",
    "-LCB-": "{",
    "-RCB-": "}",
}


def normalize_token(token: str) -> str:
    """Undo PTB escapes for vocabulary lookup: ``-LRB-`` -> ``(``, ``1\\/2`` -> ``1/2``, ...

    Trees keep the raw form; only the embedding lookup should see the plain one.
    """
    plain = _BRACKET_ESCAPES.get(token)
    if plain is not None:
        return plain
    if "\\" in token:
        token = token.replace("\\/", "/").replace("\\*", "*")
    return token


# ------------------------------------------------------------------------------------ reading


class _Open:
    """A ``(`` not yet closed: where it is, its label, and the word or subtrees read so far."""

    __slots__ = ("start", "label", "label_at", "word", "kids")

    def __init__(self, start: int) -> None:
        self.start = start  # character offset of the "("
        self.label: str | None = None  # the raw label text, None until read (or never)
        self.label_at = -1  # character offset of the label
        self.word: str | None = None  # a leaf's word
        self.kids: list[Tree] = []  # finished subtrees, left to right


class _Reader:
    """One parse of one line: a stack of open brackets, read token by token."""

    def __init__(self, text: str, label_type, where: str | None, cls: type[Tree]) -> None:
        self.text = text
        self.label_type = label_type
        self.where = where
        self.cls = cls
        self.stack: list[_Open] = []
        self.root: Tree | None = None
        self.after_open = False  # the next word is the label of the bracket just opened

    def parse(self) -> Tree:
        stack = self.stack
        end = 0
        for match in _TOKEN_RE.finditer(self.text):
            tok = match.group()
            if tok == "(":
                self._open(match.start())
            elif tok == ")":
                self._close(match.start())
                if not stack:  # the tree is complete: only whitespace may follow
                    end = match.end()
                    break
            elif self.after_open:  # the label of the bracket just opened
                frame = stack[-1]
                frame.label = tok
                frame.label_at = match.start()
                self.after_open = False
            else:
                self._word(tok, match.start())
        return self._finish(end)

    def _open(self, pos: int) -> None:
        stack = self.stack
        if stack and stack[-1].word is not None:
            raise fail(
                self.where,
                f"node at offset {stack[-1].start} mixes a word and subtrees "
                f"(subtree at offset {pos})",
            )
        stack.append(_Open(pos))
        self.after_open = True

    def _close(self, pos: int) -> None:
        if not self.stack:
            raise fail(self.where, f"unbalanced brackets: ')' at offset {pos} has no matching '('")
        node = self._node(self.stack.pop())
        if self.stack:
            self.stack[-1].kids.append(node)
        else:
            self.root = node
        self.after_open = False

    def _node(self, frame: _Open) -> Tree:
        """The Tree a closed bracket stands for."""
        raw = frame.label
        if raw is not None:
            if self.label_type is int and raw.isascii() and raw.isdigit() and len(raw) < 20:
                label = int(raw)  # the common case (SST), without the checks below
            else:
                at = f"at offset {frame.label_at}"
                label = convert_label(raw, self.label_type, self.where, at)
            return self.cls(label, frame.word, frame.kids)
        if not self.stack and frame.word is None and len(frame.kids) == 1:
            return frame.kids[0]  # the PTB wrapper "( (S ...))"
        if frame.word is None and not frame.kids:
            raise fail(self.where, f"empty node at offset {frame.start}")
        raise fail(
            self.where,
            f"missing label: node at offset {frame.start} has none (only a root wrapping a "
            "single subtree may omit it)",
        )

    def _word(self, tok: str, pos: int) -> None:
        """A token that is not a bracket and not a label: a leaf's word."""
        if not self.stack:
            raise fail(self.where, f"expected '(' at offset {pos}, got {short(tok)}")
        frame = self.stack[-1]
        if frame.kids:
            raise fail(
                self.where,
                f"node at offset {frame.start} mixes subtrees and a word "
                f"({short(tok)} at offset {pos})",
            )
        elif frame.word is not None:
            raise fail(
                self.where,
                f"node at offset {frame.start} has two words, {short(frame.word)} and "
                f"{short(tok)} (offset {pos}); a leaf has one word",
            )
        else:
            frame.word = tok

    def _finish(self, end: int) -> Tree:
        if self.stack:
            more = f" ({len(self.stack)} unclosed)" if len(self.stack) > 1 else ""
            raise fail(
                self.where,
                f"unbalanced brackets: '(' at offset {self.stack[-1].start} is never closed{more}",
            )
        if self.root is None:
            raise fail(self.where, "empty line: no tree")
        extra = _TOKEN_RE.search(self.text, end)
        if extra is not None:
            pos = extra.start()
            if extra.group() == ")":
                raise fail(
                    self.where, f"unbalanced brackets: ')' at offset {pos} has no matching '('"
                )
            raise fail(self.where, f"text after the tree at offset {pos}: {short(self.text[pos:])}")
        return self.root


def from_ptb(
    text: str,
    label_type: Callable[[str], Any] | None = int,
    where: str | None = None,
    *,
    cls: type[Tree] = Tree,
) -> Tree:
    """Parse one PTB bracketed tree, e.g. ``"(3 (2 good) (4 film))"`` (= ``Tree.from_ptb``).

    A preterminal ``(2 good)`` becomes a leaf ``Tree(2, "good")``. Tokens are separated by
    ASCII whitespace only. ``label_type`` is applied to every label (``int`` by default;
    ``str`` or None keep the strings). A root without a label and with a single subtree,
    the PTB wrapper ``"( (S ...))"``, is removed. ``where`` (e.g. ``"train.txt:12"``) is
    put in front of error messages, which give character offsets within ``text``.

    Raises ValueError on malformed text.
    """
    if not isinstance(text, str):
        raise TypeError(f"Tree.from_ptb expects a str, not {type(text).__name__}")
    return _Reader(text, label_type, where, cls).parse()


def read_ptb(path, label_type: Callable[[str], Any] | None = int) -> list[Tree]:
    """Read one PTB tree per line (SST ``train.txt`` etc.); errors name ``path:lineno``.

    A blank line before the last tree is an error; a trailing newline is fine.
    """
    # Trees hold no reference cycles, but building thousands of them triggers the cyclic
    # collector over every live object (torch's included): pause it while reading.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return [
            _Reader(line, label_type, where, Tree).parse() for _, where, line in read_lines(path)
        ]
    finally:
        if enabled:
            gc.enable()


# ------------------------------------------------------------------------------------ writing


def _pieces(tree: Tree) -> Iterator[str]:
    """The text of ``tree`` in pieces, from an explicit stack (deep trees do not recurse)."""
    stack: list[Tree | str] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
            continue
        head = "(" if item.label is None else f"({item.label}"
        if not item.children:
            yield f"{head})" if item.word is None else f"{head} {item.word})"
            continue
        yield head
        stack.append(")")
        parts: list[Tree | str] = list(item.children)
        if item.word is not None:  # a dependency node: its word at its place in the sentence
            parts.insert(item.word_at, " " + item.word)
        for part in reversed(parts):
            stack.append(part)
            if isinstance(part, Tree):
                stack.append(" ")


def to_ptb(tree: Tree) -> str:
    """PTB bracket text on one line, e.g. ``"(3 (2 good) (4 film))"`` (= ``tree.to_ptb()``).

    A leaf writes its label and word, an internal node its label and children; a None label
    writes nothing. A node with both a word and children (a dependency tree) writes its word
    among its children, after the first ``word_at`` of them, so that every word shows in
    sentence order: ``"(root (nsubj (det the) cat) sat)"``. That is a display: PTB readers
    (this one and nltk's) reject a node that mixes words and subtrees, so dependency trees are
    stored as parent arrays (:func:`treelstm.formats.parents.to_parents`). Labels and words
    must not contain ASCII whitespace or brackets to be read back.
    """
    return "".join(_pieces(tree))


def _readable_as(tree: Tree) -> str | None:
    """The from_ptb keyword that reads to_ptb() back exactly ('' or 'str'); None if none does."""
    kinds = set()
    for node in tree.preorder():
        if node.children and node.word is not None:
            return None
        for text in (node.label, node.word):
            if isinstance(text, str) and (not text or any(c in text for c in "() " + ASCII_WS)):
                return None
        kinds.add(type(node.label))
    if kinds == {int}:
        return ""
    if kinds == {str}:
        return ", label_type=str"
    return None


def tree_repr(tree: Tree, limit: int = 160) -> str:
    """``Tree.from_ptb('...')`` when that rebuilds the tree and is short, else a summary."""
    text = ""
    for piece in _pieces(tree):
        text += piece
        if len(text) > limit:
            break
    if len(text) <= limit:
        keyword = _readable_as(tree)
        if keyword is not None:
            return f"Tree.from_ptb({text!r}{keyword})"
    else:
        text = text[:limit] + "..."
    return f"<Tree size={tree.size} height={tree.height} {text!r}>"


def write_ptb(path, trees: Iterable[Tree]) -> None:
    """Write one tree per line in PTB bracket form (UTF-8, ``\\n`` line ends).

    The file is replaced atomically (written beside it, then renamed), so a failure leaves the
    old file whole. Dependency trees are refused (their text does not read back; store them
    with ``to_parents``).
    """
    lines = []
    for i, t in enumerate(trees):
        if not isinstance(t, Tree):
            raise TypeError(f"write_ptb: item {i} is a {type(t).__name__}, not a Tree")
        if any(node.word is not None and node.children for node in t.preorder()):
            raise ValueError(
                f"write_ptb: tree {i} is a dependency tree (a node has a word and children), "
                "which PTB text cannot hold; store it with treelstm.formats.to_parents"
            )
        text = to_ptb(t)
        if "\n" in text or "\r" in text:
            raise ValueError(f"write_ptb: tree {i} has a line break in a label or word")
        lines.append(text + "\n")
    _write_atomic(Path(path), "".join(lines))


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a
    reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
