"""End-to-end studies: a frozen config in, a result object out (DataFrames, saved folders)."""

__all__: list[str] = []
