"""Where a rank other than 0 writes: its own log file, never the results or the terminal's
stdout.

Rank 0 alone writes the results folder and prints the table. Rank ``k > 0`` of a command
writing ``--out OUT`` logs to ``OUT.rank<k>.log`` beside the folder (its logging records and
anything it prints), with every progress bar off; its stderr stays the terminal's, so an error
on that rank is still shown there (and ``torchrun`` names the rank that failed).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cgc_lens.distributed.group import World, init_world
from cgc_lens.progress import progress_scope

__all__ = ["other_rank", "ran_on_other_rank", "rank_log_path"]


def rank_log_path(out: Path, world: World) -> Path:
    """The log of rank ``world.rank`` for results folder ``out``: ``OUT.rank<k>.log`` beside it.

    Example:
        >>> rank_log_path(Path("runs/audit"), World(rank=1, size=2, local_rank=1, backend="gloo"))
        PosixPath('runs/audit.rank1.log')
    """
    return out.parent / f"{out.name}.rank{world.rank}.log"


@contextlib.contextmanager
def other_rank(out: Path, world: World) -> Iterator[Path]:
    """A block run by a rank other than 0: the root logger's handlers and stdout go to
    :func:`rank_log_path` (replaced on exit), progress bars off. Yields the log's path."""
    path = rank_log_path(out, world)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    saved = root.handlers[:]
    with path.open("w", encoding="utf-8") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s rank {world.rank} %(levelname)s %(name)s: %(message)s")
        )
        root.handlers = [handler]
        try:
            with contextlib.redirect_stdout(fh), progress_scope(False):
                yield path
        finally:
            root.handlers = saved


def ran_on_other_rank(out: Path, run: Callable[[], Any]) -> bool:
    """The top of a study command: initialise the process group when ``torchrun`` started this
    process (:func:`~cgc_lens.distributed.init_world`); on a rank other than 0, ``run()``
    inside :func:`other_rank` and True; on rank 0 (or alone) False, nothing run: the caller
    runs, writes and prints."""
    world = init_world()
    if world.is_main:
        return False
    with other_rank(out, world):
        run()
    return True
