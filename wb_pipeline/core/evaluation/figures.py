"""PNG pictures for the report assets' metadata (matplotlib figures, no pyplot state), each meant to be
shown with a caption saying what to look for."""

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


def loss_curve_png(
    train_curve: Sequence[tuple[int, float]],
    validation_curve: Sequence[tuple[int, float]],
    best_step: int | None = None,
) -> bytes:
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


def silhouette_by_k_png(
    scores: Mapping[str, Mapping[int, float]],
    chosen: Mapping[str, int],
    marks: Mapping[str, Mapping[int, float]] | None = None,
) -> bytes:
    """Silhouette against k, one line per space (`scores[space][k]`), the chosen k ringed; `marks[name]`
    adds one point per space at another k (e.g. k = number of known categories) as `{space: (k, score)}`."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 3.8))
    axes = figure.subplots()
    palette = [f"C{i}" for i in range(10)]
    shapes = ["x", "^", "s", "d"]
    for position, (space, by_k) in enumerate(scores.items()):
        colour = palette[position % len(palette)]
        ks = sorted(by_k)
        if ks:
            axes.plot(ks, [by_k[k] for k in ks], marker=".", color=colour, label=space)
        if space in chosen and chosen[space] in by_k:
            axes.scatter([chosen[space]], [by_k[chosen[space]]], s=90, facecolors="none", edgecolors=colour)
        for shape, (name, points) in zip(shapes, (marks or {}).items()):
            if space in points:
                k, score = points[space]
                axes.scatter([k], [score], marker=shape, color=colour, label=name if position == 0 else None)
    axes.set_xlabel("k (KMeans clusters)")
    axes.set_ylabel("silhouette (reduced space)")
    handles, names = axes.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda i: names[i] not in scores)  # the spaces' lines first
    axes.legend([handles[i] for i in order], [names[i] for i in order], fontsize=8)
    axes.grid(alpha=0.3)
    return _figure_png(figure)


def grouped_bars_png(
    values: pd.DataFrame,
    lower: pd.DataFrame | None = None,
    upper: pd.DataFrame | None = None,
    ylabel: str = "",
    highlight: Mapping[str, str] | None = None,
) -> bytes:
    """Grouped bars: one group per row of `values` (e.g. a label), one bar per column (e.g. a model);
    optional `lower`/`upper` frames of the same shape draw error bars (e.g. bootstrap CIs);
    `highlight[row] = column` outlines one bar per group (e.g. the best model)."""
    from matplotlib.figure import Figure

    groups, bars = list(values.index), list(values.columns)
    figure = Figure(figsize=(max(6.0, 0.9 * len(groups) * max(len(bars), 1) / 3 + 2), 3.8))
    axes = figure.subplots()
    width = 0.8 / max(len(bars), 1)
    x = np.arange(len(groups))
    for position, bar in enumerate(bars):
        heights = values[bar].to_numpy(dtype=float)
        errors = None
        if lower is not None and upper is not None:
            errors = np.vstack([heights - lower[bar].to_numpy(dtype=float), upper[bar].to_numpy(dtype=float) - heights])
        offsets = x + (position - (len(bars) - 1) / 2) * width
        axes.bar(
            offsets,
            heights,
            width,
            label=str(bar),
            color=f"C{position % 10}",
            yerr=errors,
            capsize=2,
            error_kw={"linewidth": 0.8},
        )
        outlined = [index for index, group in enumerate(groups) if (highlight or {}).get(group) == bar]
        if outlined:  # drawn over, unlabelled: the legend keeps the plain bar style
            axes.bar(offsets[outlined], heights[outlined], width, fill=False, edgecolor="black", linewidth=1.5)
    axes.set_xticks(x, [str(g) for g in groups], rotation=20, ha="right")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7, ncol=min(len(bars), 6), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    axes.grid(axis="y", alpha=0.3)
    return _figure_png(figure)


def png_markdown(png: bytes, alt: str, caption: str = "") -> str:
    """Markdown that embeds a PNG inline (Dagster metadata has no image type), with an optional caption
    below it (what to look for)."""
    image = f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
    return f"{image}\n\n{caption}" if caption else image
