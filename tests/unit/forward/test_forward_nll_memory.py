"""Perplexity at a 256k vocabulary holds one chunk of positions' logits, never a batch's.

Two measures, each robust on its own:

- the largest logits tensor materialised, read by a hook on the unembedding's output (exact,
  in-process; it sees every logits tensor, as all of them pass ``unembed.hook_out``);
- the real peak: the rise of the resident-set high-water mark (Linux's ``VmHWM``, reset by
  ``/proc/self/clear_refs`` after the warm-up) in a fresh Python process, which counts every
  page torch's CPU allocator touches (``tracemalloc`` sees none of them; ``ru_maxrss`` of a
  child starts at its parent's peak, here pytest's). The same process then takes the
  full-logits loss the old code took, so the test also shows the measure sees logits when they
  are there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cgc_lens.forward import logits
from cgc_lens.forward.metrics import perplexity_result, token_nll
from conftest import make_tiny_model

VOCAB = 1 << 18  # 262,144: Gemma-2's 256k vocabulary
MIB = 1 << 20
TESTS = Path(__file__).resolve().parents[2]


def _big_vocab_model():
    return make_tiny_model(
        n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=64, d_vocab=VOCAB
    )


def test_largest_logits_tensor_is_one_chunk(monkeypatch):
    model = _big_vocab_model()
    tokens = torch.randint(0, VOCAB, (3, 64), generator=torch.Generator().manual_seed(0))
    shapes = []
    model.unembed.hook_out.add_hook(lambda act, hook: shapes.append(tuple(act.shape)))
    monkeypatch.setattr(logits, "NLL_CHUNK_ELEMENTS", 16 * VOCAB)
    chunked = perplexity_result(model, tokens, batch_size=3, progress=False)
    sliding = perplexity_result(
        model, tokens.flatten(), window=64, stride=16, batch_size=4, progress=False
    )
    model.reset_hooks()
    assert max(rows * vocab for rows, vocab in shapes) == 16 * VOCAB
    # only scored positions are unembedded, each once: 3 × 63 chunked, 191 of the stream
    assert sum(rows for rows, _ in shapes) == 189 + 191
    with torch.no_grad():
        want = token_nll(model(tokens), tokens).double().sum()
    assert chunked.n_tokens == 189 and sliding.n_tokens == 191
    assert chunked.nll_sum == pytest.approx(float(want), rel=1e-6)


_CHILD = textwrap.dedent("""
    import json, re, sys
    import torch
    from cgc_lens.forward import logits
    from cgc_lens.forward.metrics import perplexity_result, token_nll
    from conftest import make_tiny_model

    torch.set_num_threads(1)
    vocab = int(sys.argv[1])


    def peak():
        status = open("/proc/self/status").read()
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024


    logits.NLL_CHUNK_ELEMENTS = 8 * vocab
    model = make_tiny_model(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=64,
                            d_vocab=vocab)
    tokens = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))
    perplexity_result(model, tokens[:, :9], progress=False)  # warm up: code, W_U's transpose
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark starts again from the current resident set
    base = peak()
    chunked = perplexity_result(model, tokens, progress=False).nll_sum
    mid = peak()
    with torch.inference_mode():
        full = float(token_nll(model(tokens), tokens).double().sum())
    print(json.dumps(dict(chunked=mid - base, full=peak() - mid, nll=[chunked, full])))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc needed")
def test_peak_memory_is_one_chunk_not_one_batch():
    """2 × 64 positions at a 256k vocabulary: the full logits and their log-softmax are 2 ×
    126 MiB (the old path's peak rise, measured: 365 MiB); the chunked path holds ``W_U``'s
    transpose (16 MiB, made once per call as every forward makes it) and chunks of 8
    positions, 8 MiB of logits each (measured: 32 MiB)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(VOCAB)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TESTS,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    full, chunk, w_t = 2 * 63 * VOCAB * 4, 8 * VOCAB * 4, 16 * VOCAB * 4  # bytes, float32
    assert got["full"] > 1.5 * full, got  # the measure sees the old full-logits peak
    assert got["chunked"] < w_t + 4 * chunk == 48 * MIB, got
    assert got["nll"][0] == pytest.approx(got["nll"][1], rel=1e-6)
