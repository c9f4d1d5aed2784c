"""PNG pictures for the contrastive and clustering metadata (matplotlib, headless Agg backend)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def loss_curve_png(train_curve: Sequence[tuple[int, float]], validation_curve: Sequence[tuple[int, float]],
                   best_step: int | None = None) -> bytes:
    """Training batch loss (light, with a running mean) and validation loss per step."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    if train_curve:
        steps, losses = np.asarray(train_curve, dtype=float).T
        axes.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (batch)")
        window = max(1, len(losses) // 30)
        smooth = pd.Series(losses).rolling(window, min_periods=1).mean()
        axes.plot(steps, smooth, color="tab:blue", label=f"train (mean of {window})")
    if validation_curve:
        steps, losses = np.asarray(validation_curve, dtype=float).T
        axes.plot(steps, losses, color="tab:orange", marker=".", label="validation")
    if best_step is not None:
        axes.axvline(best_step, color="gray", linestyle="--", linewidth=0.8, label=f"best step {best_step}")
    axes.set_xlabel("step")
    axes.set_ylabel("CLIP loss")
    axes.legend(fontsize=8)
    return _figure_png(figure)


def scatter_grid_png(points: Mapping[str, np.ndarray], colourings: Mapping[str, Mapping[str, np.ndarray]]) -> bytes:
    """A grid: one row per space (`points[space]` is [n, 2]), one column per colouring
    (`colourings[space][name]` → a label per point; missing labels drawn light grey)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    spaces = list(points)
    columns = list(next(iter(colourings.values()))) if colourings else []
    figure = Figure(figsize=(4.2 * max(len(columns), 1), 3.8 * max(len(spaces), 1)))
    grid = np.atleast_2d(figure.subplots(max(len(spaces), 1), max(len(columns), 1), squeeze=False))
    palette = colormaps["tab20"]
    for r, space in enumerate(spaces):
        xy = np.asarray(points[space])
        for c, name in enumerate(columns):
            axes = grid[r, c]
            labels = pd.Series(colourings[space][name], dtype=object)
            known = labels.notna().to_numpy() & labels.astype(str).ne("-1").to_numpy()
            codes, _ = pd.factorize(labels[known])
            axes.scatter(xy[~known, 0], xy[~known, 1], s=3, color="lightgrey", linewidths=0)
            axes.scatter(xy[known, 0], xy[known, 1], s=4, c=[palette(code % 20) for code in codes], linewidths=0)
            axes.set_title(f"{space}: {name}", fontsize=9)
            axes.set_xticks([])
            axes.set_yticks([])
    return _figure_png(figure)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that embeds a PNG inline (Dagster metadata has no image type)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
