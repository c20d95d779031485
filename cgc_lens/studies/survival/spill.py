"""Chunks of reference SAE codes kept on disk, so each compared checkpoint is loaded once.

The survival sweep (:func:`~cgc_lens.studies.survival.passes.stream_conditions`) holds one chunk
of reference codes at a time and runs every condition over it. An in-place condition re-applies
its edit per chunk (cheap); a compared checkpoint (``--compare``) would be re-read from its file
per chunk once two of them alternate in the one slot that holds compared weights
(:class:`~cgc_lens.studies.survival.compare.CheckpointSlot`). So when two or more checkpoints
are compared over more than one chunk, the first one streams with the in-place conditions, and
each chunk's reference codes are written here; afterwards each further checkpoint is loaded
once and streamed over the chunks read back one at a time. The codes come back bit for bit
(``torch.save`` / ``torch.load``), every condition's sums are added batch by batch in the same
order as before, so the numbers are identical; memory stays one chunk plus one compared model.
Disk: the reference codes of the whole run (``cache_bytes`` per chunk) in a temporary folder
(``tempfile``'s, ``$TMPDIR``), removed on exit, also on an exception.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import torch
from torch import Tensor

from cgc_lens.saes.sparse_encoder import SparseCodes

__all__ = ["ReferenceSpill"]

Chunk = list[tuple[int, dict[str, SparseCodes]]]
"""A chunk of the sweep: ``(batch index, {read-out key: reference codes})`` per batch."""


class ReferenceSpill:
    """Reference code chunks written to a temporary folder and read back in order.

    Example:
        >>> codes = SparseCodes.of(torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
        >>> with ReferenceSpill() as spill:
        ...     spill.put([(0, {"h": codes})])
        ...     [(j, c["h"].flat.tolist()) for chunk in spill.chunks() for j, c in chunk]
        [(0, [1, 7])]
    """

    def __init__(self) -> None:
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._paths: list[Path] = []

    def __enter__(self) -> ReferenceSpill:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def put(self, chunk: Chunk) -> None:
        """Write one chunk (in sweep order)."""
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="cgc-lens-spill-")
        path = Path(self._folder.name) / f"chunk-{len(self._paths):05d}.pt"
        rows = [
            (j, {k: (c.n, c.d, c.flat, c.vals, c.dense) for k, c in codes.items()})
            for j, codes in chunk
        ]
        torch.save(rows, path)
        self._paths.append(path)

    def chunks(self) -> Iterator[Chunk]:
        """The chunks written, in order, one held at a time."""
        for path in self._paths:
            rows: list[
                tuple[int, dict[str, tuple[int, int, Tensor | None, Tensor | None, Tensor | None]]]
            ]
            rows = torch.load(path, weights_only=True)
            chunk = [
                (
                    j,
                    {
                        k: SparseCodes(n, d, flat=flat, vals=vals, dense=dense)
                        for k, (n, d, flat, vals, dense) in codes.items()
                    },
                )
                for j, codes in rows
            ]
            del rows
            yield chunk
            del chunk  # before the next chunk is read (the caller drops its own reference)

    def close(self) -> None:
        """Remove the folder and its files."""
        if self._folder is not None:
            self._folder.cleanup()
        self._folder, self._paths = None, []
