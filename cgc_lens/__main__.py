"""``python -m cgc_lens``: the ``cgc-lens`` command, as ``torchrun -m cgc_lens survival ...``
starts it on every rank (see docs/scaling.md)."""

from cgc_lens.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
