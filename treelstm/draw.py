"""Pictures of predictions: every node of a tree as a dot coloured by its predicted class, on a
diverging palette from very negative (red) to very positive (blue), the words at the leaves.

    save_drawing("tree.svg", predictions)   # SVG: hover a dot for its phrase and probabilities
    save_drawing("tree.png", predictions)   # PNG (matplotlib), twice the SVG's pixel size

Several trees are stacked in one picture (one column), each under a title line with its
sentence-level prediction. The layout is computed once (`scene`: lines, dots, texts in pixels)
and written by two small back ends (`to_svg`, `to_png`), so both show the same picture.

Layout: the leaves sit on one row in sentence order and every node sits at its height (leaves 0,
the root on top), centred over its children, joined to them by elbow lines, so no two edges
cross. Words are measured with matplotlib's DejaVu Sans metrics (the font the SVG asks for
first); a sentence wider than ``max_width`` pixels gets its words tilted by 45 degrees, one per
fixed step, which keeps a 40-word SST sentence about 900 pixels wide without overlaps.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from .formats.ptb import normalize_token
from .prediction import TreePrediction, span_texts
from .runtime.files import atomic_write_bytes

__all__ = [
    "Circle",
    "Line",
    "Scene",
    "Text",
    "palette",
    "save_drawing",
    "scene",
    "to_png",
    "to_svg",
]

FONT = "DejaVu Sans, Verdana, Geneva, sans-serif"
FONT_SIZE = 12.0  # px: the words and the legend
TITLE_SIZE = 13.0  # px: a tree's title line
RADIUS = 5.5  # px: a node's dot
MARGIN = 14.0  # px around the picture
WORD_GAP = 9.0  # px between two level words
TILT_STEP = 20.0  # px between two tilted words: 14 px apart across their slant (one text line)
EDGE = "#9a9a9a"
INK = "#222222"
# ColorBrewer RdBu (Brewer 2002), colour-blind safe; the neutral centre is a light grey rather
# than RdBu's near-white so that a neutral dot stands out from the background.
_PALETTES = {
    3: ("#ca0020", "#d4d4d4", "#0571b0"),
    5: ("#ca0020", "#f4a582", "#d4d4d4", "#92c5de", "#0571b0"),
}


def palette(n: int) -> tuple[str, ...]:
    """``n`` colours from the most negative class to the most positive (RdBu)."""
    if n in _PALETTES:
        return _PALETTES[n]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["RdBu"]
    return tuple(to_hex(cmap(0.1 + 0.8 * k / max(n - 1, 1))) for k in range(n))


# ------------------------------------------------------------------------------- the scene


@dataclass(frozen=True)
class Line:
    """A polyline through ``points`` (px)."""

    points: tuple[tuple[float, float], ...]
    colour: str = EDGE
    width: float = 1.2


@dataclass(frozen=True)
class Circle:
    """A dot: a tree node (``kind`` "node", with its class and a hover text) or a legend
    swatch (``kind`` "swatch")."""

    x: float
    y: float
    r: float
    fill: str
    kind: str = "node"
    cls: int = -1  # the predicted class of a node
    tip: str = ""  # shown on hover in the SVG (<title>)


@dataclass(frozen=True)
class Text:
    """A text whose anchor point (``x``, ``y``) is on its baseline; ``anchor`` is start, middle
    or end; ``angle`` turns it counter-clockwise (degrees) about the anchor point."""

    x: float
    y: float
    text: str
    size: float = FONT_SIZE
    anchor: str = "start"
    angle: float = 0.0
    bold: bool = False


@dataclass
class Scene:
    """Everything drawn, in pixels (y grows downwards), in drawing order by kind."""

    width: float
    height: float
    lines: list[Line] = field(default_factory=list)
    circles: list[Circle] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)

    def nodes(self) -> list[Circle]:
        """The dots of tree nodes (one per node of every tree, in order), not the legend's."""
        return [c for c in self.circles if c.kind == "node"]


@functools.lru_cache(maxsize=65536)
def text_width(text: str, size: float = FONT_SIZE, bold: bool = False) -> float:
    """Width in px of ``text`` in DejaVu Sans (matplotlib's metrics; no display needed)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    props = FontProperties(family="DejaVu Sans", size=size, weight="bold" if bold else "normal")
    return text_to_path.get_text_width_height_descent(text, props, ismath=False)[0]


def scene(predictions: Sequence[TreePrediction], max_width: float = 900.0) -> Scene:
    """The picture of ``predictions`` (at least one): a legend, then each tree under its title.

    Trees whose nodes carry words (dependency trees) are refused: the layout puts words at
    the leaves of constituency trees."""
    if not predictions:
        raise ValueError("draw: no predictions to draw")
    for pred in predictions:
        if not isinstance(pred, TreePrediction):  # a sequence model's: the sentence only
            raise ValueError(
                f"draw: a {type(pred).__name__} has no class per node to colour (a sequence "
                "model predicts the sentence only; drawings need a Tree-LSTM run)"
            )
    names = predictions[0].names
    colours = palette(len(names))
    out = Scene(0.0, 0.0)
    y = _legend(out, names, colours, MARGIN)
    for k, pred in enumerate(predictions):
        title = f"{k + 1}. " if len(predictions) > 1 else ""
        title += f"sentence: {pred.root_label} ({pred.root_prob:.2f})"
        out.texts.append(Text(MARGIN, y + TITLE_SIZE, title, TITLE_SIZE, bold=True))
        y = _tree(out, pred, colours, y + TITLE_SIZE + 6, max_width) + 10
    out.height = y + MARGIN - 10
    return out


def _legend(out: Scene, names: Sequence[str], colours: Sequence[str], y: float) -> float:
    """The colour key on one line from (MARGIN, y); returns the y below it."""
    label = "predicted class:"
    cy = y + FONT_SIZE / 2
    out.texts.append(Text(MARGIN, y + FONT_SIZE - 1, label))
    x = MARGIN + text_width(label) + 12
    for name, colour in zip(names, colours, strict=True):
        out.circles.append(Circle(x + RADIUS, cy, RADIUS, colour, kind="swatch"))
        out.texts.append(Text(x + 2 * RADIUS + 5, y + FONT_SIZE - 1, name))
        x += 2 * RADIUS + 5 + text_width(name) + 16
    out.width = max(out.width, x - 16 + MARGIN)
    return y + FONT_SIZE + 14


def _leaf_xs(words: list[str], max_width: float) -> tuple[list[float], bool, float]:
    """Leaf centres from x = MARGIN, whether the words are tilted, and the width needed."""
    widths = [text_width(w) for w in words]
    if sum(widths) + WORD_GAP * len(words) <= max_width - 2 * MARGIN:
        xs, x = [], MARGIN
        for w in widths:
            xs.append(x + max(w, 2 * RADIUS) / 2)
            x += max(w, 2 * RADIUS) + WORD_GAP
        return xs, False, x - WORD_GAP + MARGIN
    # Tilted: word k hangs down-left from leaf k, so the first words need room on the left.
    c = math.cos(math.radians(45))
    xs = [k * TILT_STEP for k in range(len(words))]
    shift = MARGIN + max(0.0, max(w * c - x for w, x in zip(widths, xs, strict=True)))
    xs = [x + shift for x in xs]
    return xs, True, xs[-1] + RADIUS + MARGIN


def _tree(out: Scene, pred: TreePrediction, colours, top: float, max_width: float) -> float:
    """One tree's lines, dots and words from y = ``top``; returns the y below it."""
    flat = pred.tree.flat()
    n = len(flat.parent)
    kids: list[list[int]] = [[] for _ in range(n)]
    for i, p in enumerate(flat.parent):
        if p >= 0:
            kids[p].append(i)
    if any(flat.words[i] is not None and kids[i] for i in range(n)):
        raise ValueError(
            "draw: a node with a word and children (a dependency tree); only "
            "trees with words at the leaves are drawn"
        )
    leaves = [i for i in range(n) if not kids[i]]  # post-order: left to right
    words = [normalize_token(flat.words[i] or "") for i in leaves]
    leaf_x, tilted, width = _leaf_xs(words, max_width)
    x = [0.0] * n
    for i, lx in zip(leaves, leaf_x, strict=True):
        x[i] = lx
    for i in range(n):  # post-order: children are placed before their parent
        if kids[i]:
            x[i] = (x[kids[i][0]] + x[kids[i][-1]]) / 2
    top_h = int(flat.height[-1])
    row = min(28.0, max(16.0, 440.0 / max(top_h, 1)))
    y = [top + RADIUS + 2 + (top_h - int(h)) * row for h in flat.height]
    for i, p in enumerate(flat.parent):
        if p >= 0:
            out.lines.append(Line(((x[i], y[i]), (x[i], y[p]), (x[p], y[p]))))
    _dots(out, pred, colours, x, y)
    bottom = top + RADIUS + 2 + top_h * row + RADIUS
    out.width = max(out.width, width)
    return _words(out, words, [x[i] for i in leaves], bottom, tilted)


def _dots(out: Scene, pred: TreePrediction, colours, x, y) -> None:
    spans = span_texts(pred.tree)
    probs = pred.probs.tolist()
    for i, cls in enumerate(pred.classes.tolist()):
        r = RADIUS + (1.5 if i == len(probs) - 1 else 0.0)  # the root a little larger
        out.circles.append(
            Circle(
                x[i], y[i], r, colours[cls], "node", cls, _tip(spans[i], pred.names, cls, probs[i])
            )
        )


def _tip(span: str, names: Sequence[str], cls: int, probs: list[float]) -> str:
    """The hover text of a node: its phrase, its class, every class's probability."""
    phrase = span if len(span) <= 300 else span[:297] + "..."
    all_p = ", ".join(f"{name} {p:.2f}" for name, p in zip(names, probs, strict=True))
    return f'"{phrase}"\n{names[cls]} ({probs[cls]:.2f})\n{all_p}'


def _words(out: Scene, words: list[str], xs: list[float], y: float, tilted: bool) -> float:
    """The words under the leaves from y; returns the y below them."""
    if not tilted:
        for w, x in zip(words, xs, strict=True):
            out.texts.append(Text(x, y + 4 + FONT_SIZE, w, anchor="middle"))
        return y + 4 + FONT_SIZE + 4
    c = math.cos(math.radians(45))
    for w, x in zip(words, xs, strict=True):
        out.texts.append(Text(x + 4, y + 9, w, anchor="end", angle=45.0))
    longest = max((text_width(w) for w in words), default=0.0)
    return y + 9 + longest * c + 6


# ------------------------------------------------------------------------------- back ends


def _n(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _svg_text(t: Text) -> str:
    attrs = f'x="{_n(t.x)}" y="{_n(t.y)}"'
    if t.anchor != "start":
        attrs += f' text-anchor="{t.anchor}"'
    if t.size != FONT_SIZE:
        attrs += f' font-size="{_n(t.size)}"'
    if t.bold:
        attrs += ' font-weight="bold"'
    if t.angle:
        attrs += f' transform="rotate({_n(-t.angle)} {_n(t.x)} {_n(t.y)})"'
    return f"<text {attrs}>{escape(t.text)}</text>"


def _svg_circle(c: Circle) -> str:
    attrs = f'class="{c.kind}" cx="{_n(c.x)}" cy="{_n(c.y)}" r="{_n(c.r)}" fill="{c.fill}"'
    if c.kind == "node":
        attrs += f' data-class="{c.cls}"'
        return f"<circle {attrs}><title>{escape(c.tip)}</title></circle>"
    return f"<circle {attrs}/>"


def to_svg(s: Scene) -> str:
    """The scene as a standalone SVG document (hover a node for its phrase and probabilities)."""
    w, h = math.ceil(s.width), math.ceil(s.height)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="{FONT}" font-size="{_n(FONT_SIZE)}" fill="{INK}">',
        "<style>circle{stroke:#555;stroke-width:0.8}circle.node:hover{stroke:#000;"
        "stroke-width:2.5}</style>",
        f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
        '<g fill="none" stroke-linejoin="round">',
    ]
    for line in s.lines:
        pts = " ".join(f"{_n(x)},{_n(y)}" for x, y in line.points)
        parts.append(
            f'<polyline points="{pts}" stroke="{line.colour}" stroke-width="{_n(line.width)}"/>'
        )
    parts.append("</g>")
    parts += [_svg_circle(c) for c in s.circles]
    parts += [_svg_text(t) for t in s.texts]
    parts.append("</svg>\n")
    return "\n".join(parts)


def to_png(s: Scene, scale: float = 2.0) -> bytes:
    """The scene as a PNG, ``scale`` device pixels per scene pixel (matplotlib, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle as Dot

    w, h = math.ceil(s.width), math.ceil(s.height)
    fig = Figure(figsize=(w / 72, h / 72), dpi=72)  # 1 px of the scene = 1 pt
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    for line in s.lines:
        xs, ys = zip(*line.points, strict=True)
        ax.plot(xs, ys, color=line.colour, lw=line.width, solid_joinstyle="round", zorder=1)
    for c in s.circles:
        ax.add_patch(Dot((c.x, c.y), c.r, facecolor=c.fill, edgecolor="#555555", lw=0.8, zorder=2))
    for t in s.texts:
        ax.text(
            t.x,
            t.y,
            t.text,
            fontsize=t.size,
            ha={"start": "left", "end": "right"}.get(t.anchor, "center"),
            va="baseline",
            rotation=t.angle,
            rotation_mode="anchor",
            family="DejaVu Sans",
            weight="bold" if t.bold else "normal",
            color=INK,
            parse_math=False,
            zorder=3,
        )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72 * scale, facecolor="white")
    return buffer.getvalue()


def save_drawing(path, predictions: Sequence[TreePrediction], max_width: float = 900.0) -> None:
    """Draw ``predictions`` into ``path`` (``.svg`` or ``.png``, by its suffix), atomically."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".svg", ".png"):
        raise ValueError(f"--draw {path}: the file must end in .svg or .png")
    s = scene(predictions, max_width)
    data = to_svg(s).encode() if kind == ".svg" else to_png(s)
    atomic_write_bytes(path, data)
