"""PNG plots of the run report: Stage I recall@K by epoch, Stage II AUC by popularity bucket.

The figures are drawn on matplotlib's Agg canvas directly, without pyplot, so
drawing touches no global backend state and works without a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 100
_SIZE_INCHES = (7.0, 4.2)


def plot_recall_by_epoch(
    epochs: Sequence[int], recalls: Mapping[str, Sequence[float | None]], path: str
) -> str:
    """Draw one line of eval recall@K per K against the epoch and save it as a PNG.

    Args:
      epochs: epoch numbers, 1 first.
      recalls: line label (e.g. "recall@10") to one recall per epoch, where None is a gap.
      path: the PNG file to write.

    Returns:
      `path`.

    Raises:
      ValueError: a line has a different length than `epochs`.
    """
    figure = Figure(figsize=_SIZE_INCHES, dpi=_DPI)
    axes = figure.add_subplot()
    for label, values in recalls.items():
        if len(values) != len(epochs):
            raise ValueError(
                f"{label} has {len(values)} values for {len(epochs)} epochs: give one per epoch."
            )
        axes.plot(epochs, [_or_nan(value) for value in values], marker="o", label=label)

    axes.set_title("Stage I eval recall@K by epoch")
    axes.set_xlabel("epoch")
    axes.set_ylabel("recall")
    axes.set_xticks(list(epochs))
    axes.set_ylim(bottom=0.0)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_auc_by_bucket(
    buckets: Sequence[str],
    candidate: Sequence[float | None],
    baseline: Sequence[float | None] | None,
    path: str,
) -> str:
    """Draw the eval AUC per item popularity bucket as bars, beside the baseline's, as a PNG.

    Args:
      buckets: bucket labels, e.g. train-count ranges "0", "1", "2-4".
      candidate: the candidate model's AUC per bucket, or None where the bucket has
        no eval examples or AUC is undefined (one label class only).
      baseline: the baseline model's AUC per bucket, or None without a baseline.
      path: the PNG file to write.

    Returns:
      `path`.

    Raises:
      ValueError: a series has a different length than `buckets`.
    """
    series = {"candidate": candidate}
    if baseline is not None:
        series["baseline"] = baseline
    for name, values in series.items():
        if len(values) != len(buckets):
            raise ValueError(
                f"{name} has {len(values)} AUCs for {len(buckets)} buckets: give one per bucket."
            )

    figure = Figure(figsize=_SIZE_INCHES, dpi=_DPI)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    for index, (name, values) in enumerate(series.items()):
        positions = [
            bucket + (index - (len(series) - 1) / 2) * width for bucket in range(len(buckets))
        ]
        heights = [_or_nan(value) for value in values]
        bars = axes.bar(positions, heights, width, label=name)
        axes.bar_label(bars, labels=[_bar_label(height) for height in heights], fontsize=8)
        # A NaN bar has no top to label, so "n/a" is written on the axis instead.
        for position, height in zip(positions, heights, strict=True):
            if math.isnan(height):
                axes.text(position, 0.01, "n/a", ha="center", va="bottom", fontsize=8)

    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
    axes.set_title("Stage II eval AUC by item popularity bucket (train count)")
    axes.set_xlabel("item popularity bucket")
    axes.set_ylabel("AUC")
    axes.set_xticks(range(len(buckets)), list(buckets))
    axes.set_ylim(0.0, 1.05)
    axes.legend()
    return _save(figure, path)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _bar_label(height: float) -> str:
    return "" if math.isnan(height) else f"{height:.3f}"


def _save(figure: Figure, path: str) -> str:
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(path)
    return path
