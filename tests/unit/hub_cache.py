"""Write Hugging Face hub caches the way the hub lays them out, and point the libraries at them.

Reused by every test that loads something "by name" offline (models, datasets, SAEs):

    cache/models--ORG--NAME/refs/main            -> "<commit>"
    cache/models--ORG--NAME/snapshots/<commit>/… -> symlinks into blobs/
    cache/models--ORG--NAME/blobs/<sha256>
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

__all__ = ["offline_hub", "repo_folder", "write_datasets_cache", "write_hub_snapshot"]

RepoType = Literal["model", "dataset", "space"]


def repo_folder(cache_dir: str | Path, repo_id: str, repo_type: RepoType = "model") -> Path:
    """The folder the hub cache uses for one repository (``models--ORG--NAME``)."""
    return Path(cache_dir) / "--".join([f"{repo_type}s", *repo_id.split("/")])


def write_hub_snapshot(
    cache_dir: str | Path,
    repo_id: str,
    files: Mapping[str, bytes | str | Path],
    *,
    repo_type: RepoType = "model",
    revision: str = "main",
    commit: str | None = None,
) -> Path:
    """Write ``files`` into a hub-layout cache as one snapshot of ``repo_id``; return its folder.

    Args:
        cache_dir: the hub cache root (what ``HF_HUB_CACHE`` points at).
        repo_id: ``"ORG/NAME"`` or ``"NAME"``.
        files: path inside the repository → content (bytes, text, or a file to copy, or a
            folder whose files are all added under that path).
        repo_type: ``"model"``, ``"dataset"`` or ``"space"``.
        revision: the ref that points at the snapshot.
        commit: the 40-hex commit id; derived from the content when ``None``.
    """
    blobs: dict[str, bytes] = {}
    for rel, content in files.items():
        if isinstance(content, Path) and content.is_dir():
            for sub in sorted(content.rglob("*")):
                if sub.is_file():
                    blobs[f"{rel}/{sub.relative_to(content).as_posix()}".lstrip("/")] = (
                        sub.read_bytes()
                    )
        elif isinstance(content, Path):
            blobs[rel] = content.read_bytes()
        else:
            blobs[rel] = content.encode() if isinstance(content, str) else content
    if commit is None:
        digest = hashlib.sha1()
        for rel in sorted(blobs):
            digest.update(rel.encode() + b"\0" + blobs[rel])
        commit = digest.hexdigest()
    root = repo_folder(cache_dir, repo_id, repo_type)
    snapshot = root / "snapshots" / commit
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    for rel, data in blobs.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snapshot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            target.symlink_to(os.path.relpath(blob, target.parent))
        except OSError:  # file systems without symlinks: the hub falls back to copies too
            target.write_bytes(data)
    return snapshot


def write_datasets_cache(
    datasets_cache: str | Path,
    repo_id: str,
    config_name: str,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
) -> Path:
    """Lay out a prepared ``datasets`` cache as an earlier online ``load_dataset`` leaves it.

    Offline, ``datasets.load_dataset(repo_id, config_name, split=...)`` does not read the hub
    cache: it reuses ``HF_DATASETS_CACHE/ORG___NAME/<config>/<version>/<hash>/`` (arrow files
    and ``dataset_info.json``). The packaged parquet builder writes exactly that, under the
    name it is given; the folders are then renamed to the repository's and the config's.
    Returns the prepared folder.
    """
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, _, name = repo_id.rpartition("/")
    target = Path(datasets_cache) / (f"{namespace}___{name}" if namespace else name) / config_name
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for split, rows in splits.items():
            files[split] = str(Path(tmp) / f"{split}.parquet")
            pq.write_table(pa.Table.from_pylist(list(rows)), files[split])
        builder = Parquet(dataset_name=name, config_name=config_name, data_files=files,
                          cache_dir=str(Path(tmp) / "cache"), hash="0" * 16)
        builder.download_and_prepare()
        (config_dir,) = (Path(tmp) / "cache" / name).iterdir()  # "<config>-<data files hash>"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(config_dir), str(target))
    return target


def offline_hub(monkeypatch: pytest.MonkeyPatch, hf_home: str | Path) -> Path:
    """Point huggingface_hub, transformers and datasets at ``hf_home`` and switch them offline.

    The libraries read ``HF_HOME`` and friends once, at import, into module constants; setting
    the environment alone is too late in a running test session, so the constants are patched
    too (monkeypatch restores both). Returns the hub cache folder, ``hf_home/hub``.
    """
    import datasets.config
    import huggingface_hub.constants as hub_constants

    hf_home = Path(hf_home)
    hub_cache = hf_home / "hub"
    datasets_cache = hf_home / "datasets"
    hub_cache.mkdir(parents=True, exist_ok=True)
    datasets_cache.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hub_cache,
        "HF_DATASETS_CACHE": datasets_cache,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(hub_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_CACHE_HOME", str(hf_home))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    return hub_cache
