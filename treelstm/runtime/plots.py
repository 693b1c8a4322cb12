"""Training curves as a PNG: one panel per quantity, one line per series, epochs on x.

Drawn on a bare matplotlib Figure (no pyplot: no global backend or figure state) and written
through the session's atomic writer.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["curves_figure"]

Panel = tuple[str, str, dict[str, tuple[Sequence[float], Sequence[float]]]]


def curves_figure(panels: Sequence[Panel], title: str):
    """A Figure with one panel per ``(title, y label, {series name: (xs, ys)})``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, ylabel, series) in zip(axes, panels, strict=True):
        for i, (label, (xs, ys)) in enumerate(series.items()):
            style = "o-" if i == 0 else ".--"
            ax.plot(list(xs), list(ys), style, label=label)
        ax.set(xlabel="epoch", ylabel=ylabel, title=name)
        if len(series) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
