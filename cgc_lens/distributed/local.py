"""Several ranks on this machine without ``torchrun``: tests, benchmarks, notebooks.

:func:`run_local` starts ``n_ranks`` processes (spawned, on 127.0.0.1, a free port), each with
``torchrun``'s environment, a gloo process group and ``threads`` torch threads, runs ``fn(*args)``
in each and returns the results in rank order. A rank that raises ends the run: the others are
stopped and a :class:`~cgc_lens.errors.CgcLensError` names the failing rank and its error; a
run that outlives ``timeout_s`` is stopped the same way. ``fn`` must be importable by name
(a module-level function), as :mod:`multiprocessing`'s spawn requires.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cgc_lens.distributed.group import init_world
from cgc_lens.errors import CgcLensError

__all__ = ["free_port", "run_local"]

_GRACE_S = 5.0
"""Seconds the other ranks get to finish after one rank failed, before they are stopped."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, kw_only=True)
class _Launch:
    """What every rank of one :func:`run_local` is given."""

    n_ranks: int
    port: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    threads: int
    timeout_s: float


def _entry(rank: int, launch: _Launch, out: str) -> None:
    """One rank: torchrun's environment, the process group, ``fn``; its outcome to ``out``."""
    n_ranks, port, threads = launch.n_ranks, launch.port, launch.threads
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(n_ranks),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(n_ranks),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": str(threads),
        }
    )
    torch.set_num_threads(threads)
    try:
        init_world(timeout_s=launch.timeout_s)
        outcome: tuple[str, Any] = ("ok", launch.fn(*launch.args))
    except BaseException as err:  # reported to the parent, which raises
        outcome = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
    try:
        payload = pickle.dumps(outcome)
    except Exception as err:
        payload = pickle.dumps(("error", f"result of rank {rank} is not picklable: {err}"))
    Path(out).write_bytes(payload)
    if dist.is_initialized() and outcome[0] == "ok":
        dist.destroy_process_group()


def run_local(
    fn: Callable[..., Any],
    n_ranks: int,
    *,
    args: tuple[Any, ...] = (),
    timeout_s: float = 120.0,
    threads: int = 1,
) -> list[Any]:
    """Run ``fn(*args)`` on ``n_ranks`` local gloo ranks; the results in rank order.

    Args:
        fn: a module-level function; inside it :func:`~cgc_lens.distributed.world` is its rank.
        n_ranks: how many processes.
        args: arguments of ``fn`` (picklable).
        timeout_s: the process group's timeout, and the whole run's limit.
        threads: torch threads per rank.

    Raises:
        CgcLensError: a rank raised (its message, the rank named), or the run timed out.
    """
    if n_ranks < 1:
        raise CgcLensError(f"n_ranks must be at least 1, got {n_ranks}.")
    ctx = mp.get_context("spawn")
    launch = _Launch(
        n_ranks=n_ranks, port=free_port(), fn=fn, args=args, threads=threads, timeout_s=timeout_s
    )
    with tempfile.TemporaryDirectory(prefix="cgc-ranks-") as tmp:
        outs = [str(Path(tmp) / f"rank{r}.pkl") for r in range(n_ranks)]
        procs = [
            ctx.Process(target=_entry, daemon=True, args=(r, launch, outs[r]))
            for r in range(n_ranks)
        ]
        for p in procs:
            p.start()
        _wait(procs, outs, timeout_s)
        outcomes = [pickle.loads(Path(o).read_bytes()) if Path(o).exists() else None for o in outs]
    return _results(outcomes, procs, timeout_s)


def _wait(procs: list[Any], outs: list[str], timeout_s: float) -> None:
    """Until every rank ends; once one failed, the rest get :data:`_GRACE_S`, then stop."""
    deadline = time.monotonic() + timeout_s + _GRACE_S
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        failed = any(
            not p.is_alive() and (p.exitcode != 0 or _failed(o))
            for p, o in zip(procs, outs, strict=True)
        )
        if failed:
            deadline = min(deadline, time.monotonic() + _GRACE_S)
        time.sleep(0.05)
    for p in procs:
        if p.is_alive():
            p.terminate()
        p.join(timeout=5.0)
        if p.is_alive():
            p.kill()
            p.join()


def _failed(out: str) -> bool:
    path = Path(out)
    if not path.exists():
        return False
    try:
        return pickle.loads(path.read_bytes())[0] == "error"
    except Exception:  # still being written
        return False


def _results(outcomes: list[Any], procs: list[Any], timeout_s: float) -> list[Any]:
    """The results, or the error of the rank that failed first in its own code."""
    errors = {r: o[1] for r, o in enumerate(outcomes) if o is not None and o[0] == "error"}
    if errors:
        # a rank whose error is not a collective that lost its peer is the cause
        cause = next((r for r, e in errors.items() if not _collective_error(e)), min(errors))
        others = ", ".join(str(r) for r in errors if r != cause)
        raise CgcLensError(
            f"rank {cause} of {len(procs)} failed: {errors[cause]}"
            + (f"\n(ranks {others} stopped with it)" if others else "")
        )
    missing = [r for r, o in enumerate(outcomes) if o is None]
    if missing:
        codes = {r: procs[r].exitcode for r in missing}
        raise CgcLensError(
            f"ranks {missing} of {len(procs)} ended without a result (exit codes "
            f"{codes}); the run's limit was {timeout_s:.0f} s."
        )
    return [o[1] for o in outcomes]


def _collective_error(message: str) -> bool:
    first = message.splitlines()[0] if message else ""
    return any(
        s in first
        for s in (
            "DistBackendError",
            "Connection closed by peer",
            "Connection reset",
            "Timed out",
            "timed out",
            "gloo",
        )
    )
