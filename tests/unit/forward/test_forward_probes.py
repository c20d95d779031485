import pytest
import torch

from cgc_lens import CgcLensError
from cgc_lens.forward.probes import InductionProbe, TaskProbe, get_probe, register_probe, run_probes


def test_induction_probe_matches_naive_loop(tiny_model):
    probe = InductionProbe(n_seqs=3, span=8, batch_size=2)
    out = probe(tiny_model)
    tokens = probe.tokens(tiny_model.cfg.d_vocab, 8)
    assert torch.equal(tokens[:, :8], tokens[:, 8:])
    first, second = [], []
    for row in tokens:
        logits = tiny_model(row[None])[0]
        logp = torch.log_softmax(logits, -1)
        for i in range(1, 16):  # predict token i from position i - 1
            (first if i < 8 else second).append(-logp[i - 1, row[i]].item())
    naive_first, naive_second = sum(first) / len(first), sum(second) / len(second)
    torch.testing.assert_close(out["first_copy_loss"], naive_first, rtol=1e-5, atol=0)
    torch.testing.assert_close(out["second_copy_loss"], naive_second, rtol=1e-5, atol=0)
    assert out["copy_ratio"] == pytest.approx(out["second_copy_loss"] / out["first_copy_loss"])


def test_induction_probe_rejects_span_longer_than_context(tiny_model):
    with pytest.raises(CgcLensError, match="n_ctx"):
        InductionProbe(span=tiny_model.cfg.n_ctx)(tiny_model)


def test_task_probe_needs_tokenizer(tiny_model):
    with pytest.raises(CgcLensError, match="tokenizer"):
        TaskProbe(task="arithmetic", n_docs=2)(tiny_model)


def test_registry_errors():
    with pytest.raises(CgcLensError, match="Closest"):
        get_probe("inductoin")
    with pytest.raises(CgcLensError, match="already registered"):
        register_probe("induction", InductionProbe)
    with pytest.raises(CgcLensError, match="task"):
        TaskProbe(task="poetry")


def test_run_probes_flattens(tiny_model):
    out = run_probes(tiny_model, ["induction"])
    assert set(out) == {"induction.first_copy_loss", "induction.second_copy_loss",
                        "induction.copy_ratio"}
