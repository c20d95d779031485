"""Plotly figures from result objects. Functions return ``go.Figure`` and never call ``.show()``."""

__all__: list[str] = []
