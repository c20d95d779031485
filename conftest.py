"""Root pytest configuration: jaxtyping shapes are checked with beartype under pytest only, and
the cache folder is a temporary one."""

import os

import pytest
from jaxtyping import install_import_hook

# Installed for the whole session (not as a `with` block, which would instrument only what is
# imported inside it): every cgc_lens module imported later is checked too (STYLE rule 6).
# The PEP 484 numeric tower lets an int stand where a float is annotated, as Python intends.
_JAXTYPING_HOOK = install_import_hook(
    "cgc_lens", "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"
)


@pytest.fixture(scope="session", autouse=True)
def _cache_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory):
    """The tests never write the user's cache folder (``cgc_lens.data.cache``): the session,
    doctests and the subprocesses it starts included, uses an empty temporary one, as on a
    clean clone; the cache is an optimisation only."""
    before = os.environ.get("CGC_LENS_CACHE")
    os.environ["CGC_LENS_CACHE"] = str(tmp_path_factory.mktemp("cgc-lens-cache"))
    yield
    if before is None:
        os.environ.pop("CGC_LENS_CACHE", None)
    else:
        os.environ["CGC_LENS_CACHE"] = before
