"""Who this process is in a ``torch.distributed`` run, and its share of the work.

``torchrun --nproc-per-node N -m cgc_lens ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
:func:`init_world` turns that into a process group (gloo on CPU, NCCL when CUDA is available)
with a timeout, so a rank that dies or stalls ends the others instead of hanging them.
Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing is initialised and :func:`world` is
the single process ``World(rank=0, size=1, local_rank=0, backend=None)``.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cgc_lens.errors import CgcLensError

__all__ = ["World", "device_for", "init_world", "shard_range", "world"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class World:
    """This process's place in the run.

    Example:
        >>> World(rank=0, size=1, local_rank=0, backend=None).is_main
        True
    """

    rank: int
    """Global rank, 0 .. size - 1."""
    size: int
    """Number of processes (1 without torch.distributed)."""
    local_rank: int
    """Rank on this machine (``LOCAL_RANK``): the GPU index under NCCL."""
    backend: str | None
    """``"gloo"``, ``"nccl"``, or None for a single process."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one rank that writes results and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise CgcLensError(
            f"Environment variable {name}={raw!r} is not an integer; torchrun "
            "sets it, unset it to run a single process."
        ) from None


def world() -> World:
    """The current world: the initialised process group's rank and size, else one process.

    Example:
        >>> world().size >= 1
        True
    """
    if dist.is_available() and dist.is_initialized():
        return World(
            rank=dist.get_rank(),
            size=dist.get_world_size(),
            local_rank=_env_int("LOCAL_RANK", 0),
            backend=str(dist.get_backend()),
        )
    return World(rank=0, size=1, local_rank=0, backend=None)


def init_world(*, timeout_s: float = 600.0) -> World:
    """Initialise the process group from ``torchrun``'s environment when ``WORLD_SIZE > 1``.

    A no-op for a single process and when a group is already initialised (a caller's own
    ``init_process_group`` is used as it is). The backend is NCCL when CUDA is available, else
    gloo; ``timeout_s`` bounds every collective, so a rank that fails ends the others.

    Args:
        timeout_s: seconds a collective may wait for the other ranks.

    Returns:
        :func:`world` after initialisation.
    """
    if timeout_s <= 0:
        raise CgcLensError(f"timeout_s must be positive, got {timeout_s}.")
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise CgcLensError(
            f"WORLD_SIZE={size} but this torch build has no torch.distributed; "
            "unset WORLD_SIZE to run a single process."
        )
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise CgcLensError(
            f"WORLD_SIZE={size} but {missing} are not set: launch with torchrun "
            "(torchrun --nproc-per-node N -m cgc_lens ...)."
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    w = world()
    log.info(
        "torch.distributed: rank %d of %d (local rank %d), backend %s",
        w.rank,
        w.size,
        w.local_rank,
        w.backend,
    )
    return w


def shard_range(n_items: int, world: World | None = None) -> range:
    """This rank's contiguous share of ``n_items``: the first ``n_items % size`` ranks take one
    more; a rank may get none. Concatenated in rank order the shares are ``range(n_items)``.

    Args:
        n_items: how many items to share out.
        world: whose share (default: the current :func:`world`).

    Example:
        >>> [shard_range(5, World(rank=r, size=3, local_rank=r, backend="gloo")) for r in range(3)]
        [range(0, 2), range(2, 4), range(4, 5)]
    """
    if not isinstance(n_items, int) or isinstance(n_items, bool) or n_items < 0:
        raise CgcLensError(f"n_items must be a non-negative int, got {n_items!r}.")
    w = globals()["world"]() if world is None else world
    if not 0 <= w.rank < w.size:
        raise CgcLensError(f"rank {w.rank} is outside a world of size {w.size}.")
    base, extra = divmod(n_items, w.size)
    start = w.rank * base + min(w.rank, extra)
    return range(start, start + base + (w.rank < extra))


def device_for(world: World, requested: torch.device | str | None) -> torch.device:
    """The device a rank runs on: ``cuda:LOCAL_RANK`` under NCCL, else ``requested``.

    Example:
        >>> device_for(World(rank=1, size=2, local_rank=1, backend="gloo"), "cpu")
        device(type='cpu')
    """
    if world.backend == "nccl":
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu" if requested is None else requested)
