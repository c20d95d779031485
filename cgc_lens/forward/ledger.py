"""The forward ledger: how much forward work a block of code runs, and how much of it repeats.

``with forward_ledger(model) as ledger: run_capability(config, model=model)`` counts every pass
through ``model``'s blocks as tokens × blocks (a pass started at ``start_at_layer`` or stopped at
``stop_at_layer`` counts only the blocks it runs) and matches every call of the model against
the earlier ones. A call is a *repeat* of an earlier one when it reads the same input (token ids,
or the residual it starts from), starts and stops at the same layers, returns the same kind of
output, and its last block writes the same residual, bit for bit — which is what the weights
and the hooks up to that block decide, so a hook that only reads does not make a pass new and
one that edits does — with the same final weights (``ln_final``, ``unembed``) when it unembeds.

``ledger.report()`` gives the work run and the work *needed*: the same work without the
repeats, so ``run / needed`` is the factor a study would save by computing nothing twice.
Block calls outside a call of the model (``run_with_hooks`` calls ``forward`` directly) count as
run and needed, unmatched. The ledger only observes, through forward hooks of the model and its
blocks that it removes on exit; it changes no output. Matching digests every input and last
residual (BLAKE2b), which costs time: it is a measuring tool, not for production runs.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["ForwardLedger", "LedgerReport", "forward_ledger"]


@dataclass(frozen=True, kw_only=True)
class LedgerReport:
    """What a :class:`ForwardLedger` counted."""

    forwards: int
    """Calls of the model (``model(...)``)."""
    repeats: int
    """Calls identical to an earlier one (see the module docstring)."""
    run: int
    """Tokens × blocks run, every block call counted."""
    needed: int
    """``run`` less the tokens × blocks of the repeats."""
    repeat_sites: dict[str, int] = field(default_factory=dict)
    """Repeats per caller (``module:function`` of the nearest ``cgc_lens`` frame outside
    ``cgc_lens.forward``, else the nearest outside this module), most first."""

    @property
    def ratio(self) -> float:
        """``run / needed`` (1.0 when nothing ran)."""
        return self.run / self.needed if self.needed else 1.0

    @property
    def repeat_fraction(self) -> float:
        """``repeats / forwards`` (0.0 when nothing ran)."""
        return self.repeats / self.forwards if self.forwards else 0.0

    def summary(self) -> str:
        """One line: forwards, repeats, run / needed."""
        return (
            f"{self.forwards} forwards, {self.repeats} repeated "
            f"({100 * self.repeat_fraction:.1f}%), run/needed {self.ratio:.3f} "
            f"({self.run:,} / {self.needed:,} token-blocks)"
        )


def _digest(value: Any) -> str:
    """A digest of a tensor's dtype, shape and bytes, or of another value's repr."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(value, Tensor):
        t = value.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()


def _caller() -> str:
    """``module:function`` of the study code that called the model (see ``repeat_sites``)."""
    frame, fallback = sys._getframe(2), None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("cgc_lens") and module != __name__:
            name = f"{module}:{frame.f_code.co_name}"
            fallback = fallback or name
            if not module.startswith("cgc_lens.forward"):
                return name
        frame = frame.f_back
    return fallback or "?"


class ForwardLedger:
    """Counts the forward work run through ``model`` while entered (see the module docstring).

    Example:
        >>> from cgc_lens import load_model
        >>> model = load_model("cgc-tiny", device="cpu")
        >>> tokens = torch.randint(0, 100, (2, 8))
        >>> with forward_ledger(model) as ledger:
        ...     _ = model(tokens)
        ...     _ = model(tokens, stop_at_layer=2)
        ...     _ = model(tokens)
        >>> r = ledger.report()
        >>> (r.forwards, r.repeats, r.run, r.needed)
        (3, 1, 160, 96)
    """

    def __init__(self, model: HookedTransformer) -> None:
        self.model = model
        self._handles: list[Any] = []
        self._seen: set[tuple[Any, ...]] = set()
        self._current: dict[str, Any] | None = None
        self._forwards = self._repeats = self._run = self._repeated = 0
        self._sites: Counter[str] = Counter()

    def __enter__(self) -> ForwardLedger:
        self._handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.model.register_forward_hook(self._post, with_kwargs=True),
        ]
        for block in self.model.blocks:
            self._handles.append(block.register_forward_hook(self._block))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._current = None

    def _pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs = args[0] if args else kwargs.get("input", kwargs.get("tokens"))
        self._current = {
            "key": (
                _digest(inputs),
                kwargs.get("start_at_layer"),
                kwargs.get("stop_at_layer"),
                kwargs.get("return_type", args[1] if len(args) > 1 else "logits"),
            ),
            "work": 0,
            "last": None,
        }

    def _block(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        work = int(output.shape[0] * output.shape[1]) if output.ndim >= 2 else 0
        if self._current is None:
            self._run += work  # a block run outside a model call: run and needed, unmatched
            return
        self._current["work"] += work
        self._current["last"] = output

    def _post(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        cur, self._current = self._current, None
        if cur is None:
            return
        key = cur["key"]
        last = _digest(cur["last"]) if cur["last"] is not None else _digest(output)
        final = None
        if key[3] is not None and key[2] is None:  # it unembeds: the final weights count too
            final = tuple(
                _digest(p)
                for p in (*self.model.ln_final.parameters(), *self.model.unembed.parameters())
            )
        full = (*key, last, final)
        self._forwards += 1
        self._run += cur["work"]
        if full in self._seen:
            self._repeats += 1
            self._repeated += cur["work"]
            self._sites[_caller()] += 1
        else:
            self._seen.add(full)

    def report(self) -> LedgerReport:
        """What was counted so far."""
        return LedgerReport(
            forwards=self._forwards,
            repeats=self._repeats,
            run=self._run,
            needed=self._run - self._repeated,
            repeat_sites=dict(self._sites.most_common()),
        )


@contextmanager
def forward_ledger(model: HookedTransformer) -> Iterator[ForwardLedger]:
    """A :class:`ForwardLedger` over ``model`` for the ``with`` block; its hooks are removed on
    exit, even on an error."""
    ledger = ForwardLedger(model)
    with ledger:
        yield ledger
