"""Subplot grids that wrap: many small panels in rows of at most ``max_cols``, with room for
their titles, so no panel title runs into its neighbour's (``allocation_bars``, the adaptive
study's quality panels)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["grid_shape", "wrapped_grid"]


def grid_shape(n: int, max_cols: int) -> tuple[int, int]:
    """Rows and columns for ``n`` panels, at most ``max_cols`` a row, rows as full as can be.

    Example:
        >>> grid_shape(4, 3), grid_shape(7, 3), grid_shape(6, 3), grid_shape(2, 3)
        ((2, 2), (3, 3), (2, 3), (1, 2))
    """
    n_rows = -(-n // max_cols)
    return n_rows, -(-n // n_rows)


def wrapped_grid(titles: list[str], max_cols: int) -> go.Figure:
    """Subplots for ``titles``, at most ``max_cols`` a row, with room (in pixels, whatever the
    number of rows) for two-line titles above each row and tilted tick labels below it.

    Panel ``i`` (0-based) sits at ``divmod(i, grid_shape(len(titles), max_cols)[1])`` (+ 1).

    Example:
        >>> fig = wrapped_grid(["a", "b", "c", "d", "e"], max_cols=3)
        >>> [a.text for a in fig.layout.annotations], fig.layout.height
        (['a', 'b', 'c', 'd', 'e'], 735)
    """
    n_rows, n_cols = grid_shape(len(titles), max_cols)
    panel_px, gap_px, top_px, bottom_px = 220, 115, 110, 70
    plot_px = n_rows * panel_px + (n_rows - 1) * gap_px
    fig = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=titles, horizontal_spacing=0.22 / n_cols,
        vertical_spacing=gap_px / plot_px if n_rows > 1 else 0.0,
    )  # fmt: skip
    fig.update_annotations(font_size=13)  # the subplot titles
    fig.update_layout(height=plot_px + top_px + bottom_px,
                      margin={"t": top_px, "b": bottom_px})  # fmt: skip
    return fig
