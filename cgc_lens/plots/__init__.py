"""Plotly figures from result objects. Functions return ``go.Figure`` and never call ``.show()``."""

from cgc_lens.plots.capability import (
    allocation_bars,
    density_heatmap,
    density_vs_ablation,
    density_wanda_ranks,
    reallocation_map,
    search_history,
)
from cgc_lens.plots.grid import grid_shape, wrapped_grid
from cgc_lens.plots.survival import (
    plot_dissociation,
    plot_feature_scatter,
    plot_nonsurvival_deciles,
    plot_quartile_survival,
    plot_roc_curves,
    plot_taxonomy,
)

__all__ = [
    "allocation_bars",
    "density_heatmap",
    "density_vs_ablation",
    "density_wanda_ranks",
    "grid_shape",
    "plot_dissociation",
    "plot_feature_scatter",
    "plot_nonsurvival_deciles",
    "plot_quartile_survival",
    "plot_roc_curves",
    "plot_taxonomy",
    "reallocation_map",
    "search_history",
    "wrapped_grid",
]
