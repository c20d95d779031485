"""Synthetic task documents of the embedded corpus, generated deterministically by seed.

Each category exercises one capability a probe can measure:

- ``copy``: a span of pseudo-words repeated (in-context copying / induction);
- ``arithmetic``: small additions and products (``37 + 48 = 85.``);
- ``brackets``: nested, balanced brackets whose closers are predictable from the openers;
- ``recall``: key-value facts followed by questions about them (associative recall).

The documents are regenerated on load rather than shipped: the same seed gives the same text
on every machine (only ``random.Random`` is used, whose sequence Python keeps stable).
"""

from __future__ import annotations

import random

__all__ = ["SYNTHETIC_CATEGORIES", "synthetic_documents"]

SYNTHETIC_CATEGORIES = ("copy", "arithmetic", "brackets", "recall")
_SPLITS = (("train", 0.9), ("calibration", 0.05), ("eval", 0.05))
_ONSETS = "b c d f g h j k l m n p r s t v w z".split()
_VOWELS = "a e i o u".split()
_NAMES = (
    "alice bob carol dave erin frank grace heidi ivan judy mallory nina oscar peggy rupert "
    "sybil trent uma victor wendy"
).split()
_THINGS = "apples pears books coins stones shells keys maps lamps cups".split()
_PAIRS = (("(", ")"), ("[", "]"), ("{", "}"), ("<", ">"))


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 3)))


def _copy_doc(rng: random.Random) -> str:
    span = " ".join(_pseudo_word(rng) for _ in range(rng.randint(8, 40)))
    return " | ".join([span] * rng.randint(2, 3)) + "."


def _arithmetic_doc(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(6, 16)):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if rng.random() < 0.7:
            lines.append(f"{a} + {b} = {a + b}.")
        else:
            a, b = a % 13, b % 13
            lines.append(f"{a} * {b} = {a * b}.")
    return "\n".join(lines)


def _bracket_expr(rng: random.Random, depth: int, *, top: bool = False) -> str:
    if depth == 0 or (not top and rng.random() < 0.3):
        return str(rng.randint(0, 9))
    open_, close = rng.choice(_PAIRS)
    inner = " ".join(_bracket_expr(rng, depth - 1) for _ in range(rng.randint(1, 3)))
    return f"{open_} {inner} {close}"


def _brackets_doc(rng: random.Random) -> str:
    lines = [_bracket_expr(rng, rng.randint(2, 5), top=True) for _ in range(rng.randint(3, 8))]
    return "\n".join(lines)


def _recall_doc(rng: random.Random) -> str:
    names = rng.sample(_NAMES, rng.randint(3, 6))
    facts = {n: (rng.randint(2, 99), rng.choice(_THINGS)) for n in names}
    lines = [f"{n} has {k} {t}." for n, (k, t) in facts.items()]
    for n in rng.sample(names, len(names)):
        k, t = facts[n]
        lines.append(f"question: what does {n} have? answer: {k} {t}.")
    return "\n".join(lines)


_MAKERS = {
    "copy": _copy_doc,
    "arithmetic": _arithmetic_doc,
    "brackets": _brackets_doc,
    "recall": _recall_doc,
}


def synthetic_documents(*, seed: int = 0, per_category: int = 4000) -> list[dict[str, str]]:
    """The synthetic documents of the embedded corpus, in the corpus record format.

    Args:
        seed: seed of the generator; the embedded corpus uses 0.
        per_category: documents per category, split 90 / 5 / 5 into train / calibration / eval.

    Returns:
        Records ``{"id", "category", "split", "text"}`` like the shipped natural-text ones.

    Example:
        >>> docs = synthetic_documents(per_category=20)
        >>> sorted({d["category"] for d in docs})
        ['arithmetic', 'brackets', 'copy', 'recall']
        >>> docs == synthetic_documents(per_category=20)
        True
    """
    records = []
    for c, category in enumerate(SYNTHETIC_CATEGORIES):
        rng = random.Random(seed * 1_000_003 + c)
        start = 0
        for split, frac in _SPLITS:
            n = round(per_category * frac)
            for i in range(start, start + n):
                text = _MAKERS[category](rng)
                records.append({"id": f"{category}-{i:05d}", "category": category,
                                "split": split, "text": text})
            start += n
    return records
