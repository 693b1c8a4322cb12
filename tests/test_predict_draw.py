"""Pictures of predictions (treelstm.draw): one dot per node in its class's colour, hover texts,
no overlapping words or dots on SST-length sentences, the same picture as SVG and PNG, and the
SVG as a real browser shows it (headless Chromium; skipped with the reason where it is absent)."""

from __future__ import annotations

import math
import shutil
import subprocess
import xml.etree.ElementTree as ET

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from treelstm.data import synthetic_sst
from treelstm.draw import FONT_SIZE, RADIUS, palette, save_drawing, scene, text_width, to_svg
from treelstm.formats import normalize_token
from treelstm.prediction import TreePrediction, span_texts
from treelstm.tree import Tree

SVG = "{http://www.w3.org/2000/svg}"
NAMES = ("very negative", "negative", "neutral", "positive", "very positive")


def fake_prediction(tree: Tree, seed: int = 0, names=NAMES) -> TreePrediction:
    """A prediction with random scores (no model needed to test the drawing)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tree.size, len(names), generator=g) * 2
    return TreePrediction(tree, names, logits.argmax(1), logits.softmax(1), logits)


def long_trees(n: int = 4, words: int = 40) -> list[Tree]:
    """Generated SST-shaped trees of about ``words`` words (the longest of a few draws)."""
    trees = synthetic_sst(12 * n, seed=5, max_words=words)
    return sorted(trees, key=lambda t: -len(t.words()))[:n]


def test_one_dot_per_node_in_its_class_colour_with_its_phrase_on_hover():
    trees = long_trees(3) + [Tree.from_ptb("(3 (2 a) (3 (3 good) (2 -LRB-)))")]
    preds = [fake_prediction(t, k) for k, t in enumerate(trees)]
    s = scene(preds)
    nodes = s.nodes()
    assert len(nodes) == sum(t.size for t in trees)
    colours = palette(5)
    classes = [c for p in preds for c in p.classes.tolist()]
    assert [c.fill for c in nodes] == [colours[k] for k in classes]
    root = ET.fromstring(to_svg(s))
    dots = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "node"]
    assert len(dots) == len(nodes)
    assert [int(c.get("data-class")) for c in dots] == classes
    assert [c.get("fill") for c in dots] == [colours[k] for k in classes]
    spans = [s for t in trees for s in span_texts(t)]
    for dot, span, k in zip(dots, spans, classes, strict=True):
        tip = dot.find(f"{SVG}title").text
        assert tip.startswith(f'"{span}"\n{NAMES[k]} (') and "very negative 0." in tip
    assert dots[-1].find(f"{SVG}title").text.startswith('"a good ("')  # escapes undone
    swatches = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "swatch"]
    assert [c.get("fill") for c in swatches] == list(colours)  # the legend, in class order
    legend = [t.text for t in root.iter(f"{SVG}text")]
    assert all(name in legend for name in NAMES)


def test_palettes_run_from_red_to_blue():
    for n in (3, 5, 7):
        rgb = [to_rgb(c) for c in palette(n)]
        assert len(rgb) == n and rgb[0][0] > rgb[0][2] and rgb[-1][2] > rgb[-1][0]


def _word_boxes(s) -> list[tuple[float, float, float, float]]:
    """Each leaf word's box (x0, x1, y0, y1) in px, from its anchor, width and angle."""
    boxes = []
    for t in s.texts:
        if t.size != FONT_SIZE or t.y < s.nodes()[0].y:  # the legend and titles
            continue
        w = text_width(t.text)
        if t.angle == 0:
            boxes.append((t.x - w / 2, t.x + w / 2, t.y - FONT_SIZE, t.y + 3))
        else:
            c = math.cos(math.radians(t.angle))
            boxes.append((t.x - w * c - FONT_SIZE, t.x, t.y - 2, t.y + w * c + FONT_SIZE))
    return boxes


@pytest.mark.parametrize("words", [6, 25, 40, 60])
def test_no_overlaps_and_everything_inside_the_picture(words):
    [tree] = long_trees(1, words)
    s = scene([fake_prediction(tree)])
    dots = s.nodes()
    for i, a in enumerate(dots):
        for b in dots[i + 1 :]:
            assert math.hypot(a.x - b.x, a.y - b.y) >= a.r + b.r, (a, b)
    texts = [t for t in s.texts if t.size == FONT_SIZE and t.y > dots[0].y]
    assert [t.text for t in texts] == [normalize_token(w) for w in tree.words()]
    boxes = _word_boxes(s)
    tilted = texts[0].angle != 0
    for a, b in zip(texts, texts[1:], strict=False):
        if tilted:  # parallel slanted lines: their distance across the slant
            assert (b.x - a.x) * math.sin(math.radians(45)) >= 14.0
        else:
            wa, wb = text_width(a.text), text_width(b.text)
            assert a.x + wa / 2 + 4 <= b.x - wb / 2
    lowest_dot = max(d.y + d.r for d in dots)
    for x0, x1, y0, y1 in boxes:
        assert 0 <= x0 and x1 <= s.width and y1 <= s.height and y0 > lowest_dot - 1
    if words <= 40:
        assert s.width <= 1000  # an SST sentence fits a page


def _pixels_at_dots(image: np.ndarray, dots, scale: float) -> list[tuple[float, ...]]:
    h, w = image.shape[:2]
    out = []
    for d in dots:
        y, x = int(round(d.y * scale)), int(round(d.x * scale))
        out.append(tuple(image[min(y, h - 1), min(x, w - 1), :3]))
    return out


def _matches(got, want: str, tol: float = 6 / 255) -> bool:
    return all(abs(g - w) <= tol for g, w in zip(got, to_rgb(want), strict=True))


def test_png_has_each_dot_in_its_colour(tmp_path):
    preds = [fake_prediction(t, k) for k, t in enumerate(long_trees(2, 30))]
    save_drawing(tmp_path / "t.png", preds)
    image = matplotlib.image.imread(tmp_path / "t.png")
    s = scene(preds)
    assert image.shape[:2] == (2 * math.ceil(s.height), 2 * math.ceil(s.width))
    dots = s.nodes()
    got = _pixels_at_dots(image, dots, 2.0)
    assert all(_matches(g, d.fill) for g, d in zip(got, dots, strict=True))


def test_draw_refuses_what_it_cannot_draw(tmp_path):
    dep = Tree.from_parents([2, 0], ["cats", "purr"])
    with pytest.raises(ValueError, match="dependency tree"):
        scene([fake_prediction(dep)])
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        save_drawing(tmp_path / "t.pdf", [fake_prediction(Tree.from_ptb("(2 a)"))])
    with pytest.raises(ValueError, match="no predictions"):
        scene([])


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(
    _chromium() is None,
    reason="no Chromium on this machine (Debian: apt-get "
    "install chromium); the browser check of the SVG is skipped",
)
def test_a_real_browser_shows_one_coloured_dot_per_node(tmp_path):
    preds = [fake_prediction(t, k) for k, t in enumerate(long_trees(2, 40))]
    svg = tmp_path / "t.svg"
    save_drawing(svg, preds)
    s = scene(preds)
    w, h = math.ceil(s.width), math.ceil(s.height)
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={max(w, 400)},{max(h, 200)}",
        f"--screenshot={shot}",
        svg.as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    image = matplotlib.image.imread(shot)
    ink = (image[:h, :w, :3] < 0.9).any(-1).mean()
    assert ink > 0.02, f"the screenshot is (almost) blank: {ink:.4f} of the pixels drawn"
    dots = s.nodes()
    got = _pixels_at_dots(image, dots, 1.0)
    wrong = [
        (d.x, d.y, d.fill, g) for g, d in zip(got, dots, strict=True) if not _matches(g, d.fill)
    ]
    assert not wrong, f"{len(wrong)} of {len(dots)} dots not in their colour: {wrong[:3]}"
    assert RADIUS >= 4  # the dot's centre pixel is its fill, not its outline
