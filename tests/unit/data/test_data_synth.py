import re
from collections import Counter

from cgc_lens.data.synth import SYNTHETIC_CATEGORIES, synthetic_documents


def test_deterministic_and_split():
    docs = synthetic_documents(seed=3, per_category=40)
    assert docs == synthetic_documents(seed=3, per_category=40)
    assert docs != synthetic_documents(seed=4, per_category=40)
    counts = Counter((d["category"], d["split"]) for d in docs)
    for c in SYNTHETIC_CATEGORIES:
        assert counts[(c, "train")] == 36 and counts[(c, "calibration")] == 2
    assert len({d["id"] for d in docs}) == len(docs)


def test_task_documents_are_correct():
    docs = synthetic_documents(per_category=50)
    for d in docs:
        if d["category"] == "arithmetic":
            for a, op, b, c in re.findall(r"(\d+) ([+*]) (\d+) = (\d+)\.", d["text"]):
                assert int(c) == (int(a) + int(b) if op == "+" else int(a) * int(b))
        elif d["category"] == "brackets":
            stack = []
            for ch in d["text"]:
                if ch in "([{<":
                    stack.append(ch)
                elif ch in ")]}>":
                    assert "([{<"[")]}>".index(ch)] == stack.pop()
            assert not stack
        elif d["category"] == "copy":
            parts = d["text"].rstrip(".").split(" | ")
            assert len(parts) >= 2 and len(set(parts)) == 1
