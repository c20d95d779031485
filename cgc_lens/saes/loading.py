"""Load SAEs by SAELens release and id, from a folder, or from cgc-tiny's embedded set.

``load_sae`` always returns a SAELens SAE. Names resolve in this order: an embedded release
(``"cgc-tiny"``); an existing folder (SAELens ``save_model`` layout, or our batched per-head
layout with ``sae_id`` choosing one SAE); a SAELens pretrained release (``SAE.from_pretrained``,
which reads the local hub cache when ``HF_HUB_OFFLINE=1``); a bare ``"org/name"`` hub repo in
SAELens format. Anything else raises :class:`CgcLensError` with the closest names.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.saes.per_head import CONFIG_FILE, FORMAT, BatchedTopKSAE
from cgc_lens.sites import Site

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE

__all__ = [
    "EMBEDDED_SAE_DIRS", "SAE_DTYPES", "check_sae_dtype", "embedded_sae_ids", "load_batched_sae",
    "load_sae",
]

log = logging.getLogger(__name__)

EMBEDDED_SAE_DIRS: dict[str, Path] = {
    "cgc-tiny": Path(__file__).resolve().parents[1] / "assets" / "cgc-tiny" / "saes",
}
"""Embedded release name → the folder holding its SAEs (one sub-folder per SAE or SAE set)."""

_SAELENS_CFG, _SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _read_json(file: Path) -> dict:
    """An SAE config file as a dict; a clear error naming the file when it is not one."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CgcLensError(f"The SAE config {file} is not valid JSON ({err}); restore it from "
                           "the SAE's source or save the SAE again.") from err
    if not isinstance(data, dict):
        raise CgcLensError(f"The SAE config {file} must hold a JSON object, got "
                           f"{type(data).__name__}; restore it from the SAE's source.")
    return data


def _is_saelens_folder(path: Path) -> bool:
    return (path / _SAELENS_CFG).is_file() and (path / _SAELENS_WEIGHTS).is_file()


def _is_batched_folder(path: Path) -> bool:
    cfg = path / CONFIG_FILE
    return cfg.is_file() and _read_json(cfg).get("format") == FORMAT


def _folder_ids(path: Path) -> dict[str, int | None]:
    """SAE ids inside one folder: its hook name (SAELens) or its site keys (batched)."""
    if _is_saelens_folder(path):
        meta = _read_json(path / _SAELENS_CFG).get("metadata", {})
        hook, head = meta.get("hook_name"), meta.get("hook_head_index")
        return {hook if head is None else f"{hook}[{head}]": None}
    if _is_batched_folder(path):
        sites = _read_json(path / CONFIG_FILE)["sites"]
        return {Site(kind, layer, head).key: i for i, (kind, layer, head) in enumerate(sites)}
    return {}


def embedded_sae_ids(release: str = "cgc-tiny") -> dict[str, tuple[Path, int | None]]:
    """Every SAE id of an embedded release → (folder, position in a batched set or ``None``).

    SAELens-format folders come first; the first of them is the release's default SAE.
    """
    if release not in EMBEDDED_SAE_DIRS:
        raise unknown_name("embedded SAE release", release, EMBEDDED_SAE_DIRS)
    root = EMBEDDED_SAE_DIRS[release]
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    folders.sort(key=lambda p: not _is_saelens_folder(p))
    ids: dict[str, tuple[Path, int | None]] = {}
    for folder in folders:
        for sae_id, index in _folder_ids(folder).items():
            ids.setdefault(sae_id, (folder, index))
    if not ids:
        raise CgcLensError(
            f"The embedded release {release!r} has no SAEs in {root}; "
            "build them with scripts/train_embedded_saes.py."
        )
    return ids


SAE_DTYPES = ("float32", "float64", "float16", "bfloat16")
"""The dtypes an SAE may be loaded in (SAELens's; ``torch.`` prefixes accepted)."""


def check_sae_dtype(dtype: str) -> None:
    """Raise unless ``dtype`` is one of :data:`SAE_DTYPES` (a typo gets the closest names).

    Example:
        >>> check_sae_dtype("flaot32")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cgc_lens.errors.CgcLensError: Unknown SAE dtype 'flaot32'. Closest: ['float32'...
    """
    if not isinstance(dtype, str) or dtype.removeprefix("torch.") not in SAE_DTYPES:
        raise unknown_name("SAE dtype", dtype, SAE_DTYPES)


def _load_saelens_folder(path: Path, device: str, dtype: str) -> SAE:
    """``SAE.load_from_disk``, its failures on a spoilt folder turned into a clear error."""
    from sae_lens import SAE
    from safetensors import SafetensorError

    try:
        return SAE.load_from_disk(path, device=device, dtype=dtype)
    except json.JSONDecodeError as err:
        raise CgcLensError(f"The SAE config {path / _SAELENS_CFG} is not valid JSON ({err}); "
                           "restore it from the SAE's source.") from err
    except SafetensorError as err:
        raise CgcLensError(f"The SAE weights {path / _SAELENS_WEIGHTS} cannot be read ({err}): "
                           "truncated or corrupt; copy or download them again.") from err
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise CgcLensError(
            f"The SAE in {path} does not load: its {_SAELENS_CFG} does not fit its "
            f"{_SAELENS_WEIGHTS} ({type(err).__name__}: {' '.join(str(err).split())[:400]}). "
            f"Fix d_in / d_sae / architecture in {path / _SAELENS_CFG} to the weights' shapes, "
            "or save the SAE again with sae.save_model(folder)."
        ) from err


def _load_folder(path: Path, sae_id: str | None, device: str, dtype: str) -> SAE:
    if _is_saelens_folder(path):
        return _load_saelens_folder(path, device, dtype)
    if _is_batched_folder(path):
        batched = BatchedTopKSAE.load(path, device=device)
        if sae_id is None:
            raise CgcLensError(
                f"{path} holds {batched.n} per-site SAEs; pass sae_id, one of "
                f"{[s.key for s in batched.sites][:8]}{' ...' if batched.n > 8 else ''}."
            )
        return batched.to_saelens(sae_id).to(dtype=_torch_dtype(dtype))
    raise CgcLensError(
        f"Expected a SAE folder ({_SAELENS_CFG} + {_SAELENS_WEIGHTS}, or a batched SAE's "
        f"{CONFIG_FILE}); {path} has neither."
    )


def _torch_dtype(dtype: str) -> torch.dtype:
    import torch

    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise CgcLensError(f"Unknown dtype {dtype!r}; expected e.g. 'float32' or 'bfloat16'.")
    return value


def _from_pretrained(release: str, sae_id: str, device: str, dtype: str) -> SAE:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    from sae_lens import SAE

    try:
        return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError) as err:
        raise CgcLensError(
            f"SAE {release!r} / {sae_id!r} is not in the local hub cache "
            f"({constants.HF_HUB_CACHE}) and the hub cannot be reached "
            f"(HF_HUB_OFFLINE={constants.HF_HUB_OFFLINE}). Download it once where the hub is "
            f"reachable, or pass a local folder. ({type(err).__name__}: {err})"
        ) from err


def load_sae(
    release_or_path: str | Path,
    sae_id: str | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
) -> SAE:
    """A SAELens SAE by release and id, by folder, or from cgc-tiny's embedded set.

    Args:
        release_or_path: a folder; ``"cgc-tiny"``; a SAELens release such as
            ``"gemma-scope-2b-pt-res-canonical"``; or a hub repo ``"org/name"``.
        sae_id: the SAE inside the release (``"layer_12/width_16k/canonical"``,
            ``"blocks.4.hook_resid_post"``); for cgc-tiny ``None`` gives the residual SAE and
            ``"blocks.1.attn.hook_z[2]"`` one head's SAE.
        device: where to put the weights.
        dtype: their dtype.

    Example:
        >>> try:
        ...     load_sae("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonicl")
        ... except CgcLensError as err:
        ...     print(str(err).split("Closest: ")[1][:31])
        ['layer_12/width_16k/canonical'
    """
    check_sae_dtype(dtype)
    name = str(release_or_path)
    path = Path(release_or_path)
    if name not in EMBEDDED_SAE_DIRS and path.is_dir():
        return _load_folder(path, sae_id, device, dtype)
    if name in EMBEDDED_SAE_DIRS:
        ids = embedded_sae_ids(name)
        sae_id = next(iter(ids)) if sae_id is None else sae_id
        if sae_id not in ids:
            raise unknown_name("SAE id", sae_id, ids, where=f" in embedded release {name!r}")
        folder, index = ids[sae_id]
        return _load_folder(folder, None if index is None else sae_id, device, dtype)

    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if name in directory:
        valid = directory[name].saes_map
        if sae_id is None or sae_id not in valid:
            what = "none" if sae_id is None else repr(sae_id)
            if sae_id is None:
                raise CgcLensError(
                    f"Release {name!r} needs a sae_id; got {what}. "
                    f"Valid: {list(valid)[:5]}{' ...' if len(valid) > 5 else ''}."
                )
            raise unknown_name("SAE id", sae_id, valid, where=f" in release {name!r}")
        return _from_pretrained(name, sae_id, device, dtype)
    if _REPO_ID.match(name) and sae_id is not None:
        return _from_pretrained(name, sae_id, device, dtype)
    raise unknown_name(
        "SAE release or folder", name, [*EMBEDDED_SAE_DIRS, *directory],
        where=" (no such folder either)",
    )


def load_batched_sae(
    release_or_path: str | Path = "cgc-tiny", *, device: str = "cpu"
) -> BatchedTopKSAE:
    """A batched per-head SAE set: from a folder, or an embedded release's (``"cgc-tiny"``)."""
    path = Path(release_or_path)
    if str(release_or_path) in EMBEDDED_SAE_DIRS or not path.is_dir():
        name = str(release_or_path)
        if name not in EMBEDDED_SAE_DIRS:
            raise unknown_name("batched SAE release or folder", name, EMBEDDED_SAE_DIRS)
        folders = {folder for folder, index in embedded_sae_ids(name).values() if index is not None}
        if not folders:
            raise CgcLensError(f"The embedded release {name!r} has no batched SAE set.")
        path = sorted(folders)[0]
    return BatchedTopKSAE.load(path, device=device)
