"""Root pytest configuration: jaxtyping shapes are checked with beartype under pytest only."""

from jaxtyping import install_import_hook

# Installed for the whole session (not as a `with` block, which would instrument only what is
# imported inside it): every cgc_lens module imported later is checked too (STYLE rule 6).
# The PEP 484 numeric tower lets an int stand where a float is annotated, as Python intends.
_JAXTYPING_HOOK = install_import_hook(
    "cgc_lens", "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"
)
