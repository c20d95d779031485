"""Root pytest configuration: jaxtyping shapes are checked with beartype under pytest only."""

from jaxtyping import install_import_hook

# Must run before anything imports cgc_lens, so that every annotated public function is
# checked while the tests run (STYLE rule 6), and nowhere else.
with install_import_hook("cgc_lens", "beartype.beartype"):
    import cgc_lens  # noqa: F401
