"""run_sites reads only what is asked, stops early, streams batches, cleans up its hooks."""

from __future__ import annotations

import pytest
import torch

from cgc_lens import CgcLensError, Site
from cgc_lens.forward.streaming import (
    collect_activations,
    iter_batches,
    run_sites,
    site_keys,
    stop_layer,
)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[int, dict[str, torch.Tensor]]] = []

    def update(self, acts, batch_index):
        self.batches.append((batch_index, {k: v.clone() for k, v in acts.items()}))


def test_readings_match_run_with_cache(tiny_model):
    tokens = torch.randint(0, 61, (5, 12))
    sites = [Site.z(0, head=2), Site.resid_post(1), "blocks.0.hook_mlp_out", Site.z(1)]
    rec = Recorder()
    n = run_sites(tiny_model, tokens, sites, batch_size=2, accumulators=[rec], progress=False)
    assert n == 3 and [i for i, _ in rec.batches] == [0, 1, 2]
    _, cache = tiny_model.run_with_cache(tokens)
    keys = ["blocks.0.attn.hook_z[2]", "blocks.1.hook_resid_post", "blocks.0.hook_mlp_out",
            "blocks.1.attn.hook_z"]
    assert site_keys(tiny_model, sites) == keys
    got = {k: torch.cat([acts[k] for _, acts in rec.batches]) for k in keys}
    torch.testing.assert_close(got[keys[0]], cache["blocks.0.attn.hook_z"][:, :, 2])
    torch.testing.assert_close(got[keys[1]], cache["blocks.1.hook_resid_post"])
    torch.testing.assert_close(got[keys[2]], cache["blocks.0.hook_mlp_out"])
    torch.testing.assert_close(got[keys[3]], cache["blocks.1.attn.hook_z"])
    assert all(set(acts) == set(keys) for _, acts in rec.batches)


def test_stops_after_the_deepest_layer_read(tiny_model):
    assert stop_layer(tiny_model, ["blocks.0.attn.hook_z"]) == 1
    assert stop_layer(tiny_model, ["hook_embed"]) == 0
    assert stop_layer(tiny_model, ["blocks.0.hook_resid_pre", "ln_final.hook_normalized"]) is None
    fired = []
    with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, hook: fired.append(1)),
                                     ("ln_final.hook_normalized",
                                      lambda a, hook: fired.append(2))]):
        run_sites(tiny_model, torch.zeros(2, 4, dtype=torch.long), [Site.z(0, head=0)],
                  progress=False)
        assert fired == []  # block 1 and the final norm never ran
        with pytest.raises(CgcLensError, match="did not fire"):
            run_sites(tiny_model, torch.zeros(2, 4, dtype=torch.long), [Site.resid_post(1)],
                      stop_at_layer=1, progress=False)


def test_callback_and_iterable_batches(tiny_model):
    seen = []
    batches = [torch.randint(0, 61, (3, 6)), torch.randint(0, 61, (1, 6))]
    def record(acts, i):
        seen.append((i, tuple(acts["blocks.0.hook_resid_pre"].shape)))

    run_sites(tiny_model, batches, [Site.resid_pre(0)], progress=False, callback=record)
    assert seen == [(0, (3, 6, 32)), (1, (1, 6, 32))]
    acts = collect_activations(tiny_model, torch.randint(0, 61, (5, 6)), [Site.z(1, head=3)],
                               batch_size=2, progress=False)
    assert acts["blocks.1.attn.hook_z[3]"].shape == (5, 6, 8)


def test_bad_input_raises(tiny_model):
    tokens = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(CgcLensError, match=r"Closest: \['blocks\.1\.attn\.hook_z'"):
        run_sites(tiny_model, tokens, ["blocks.1.hook_z"], progress=False)
    with pytest.raises(CgcLensError, match="head 4"):
        run_sites(tiny_model, tokens, [Site.z(0, head=4)], progress=False)
    with pytest.raises(CgcLensError, match="at least one site"):
        run_sites(tiny_model, tokens, [], progress=False)
    with pytest.raises(CgcLensError, match="integer tensor"):
        run_sites(tiny_model, tokens.float(), [Site.z(0)], progress=False)

    class NotCallable:
        update = None

    with pytest.raises(CgcLensError, match="update"):
        run_sites(tiny_model, tokens, [Site.z(0)], accumulators=[NotCallable()], progress=False)
    with pytest.raises(CgcLensError, match="positive int"):
        iter_batches(tokens, 0)


def test_hooks_are_removed_even_when_an_accumulator_raises(tiny_model):
    class Boom:
        def update(self, acts, batch_index):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_sites(tiny_model, torch.zeros(2, 4, dtype=torch.long), [Site.z(0)],
                  accumulators=[Boom()], progress=False)
    assert all(not hp._forward_hooks for hp in tiny_model.hook_dict.values())


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="checks streaming on a CUDA device; no CUDA device here")
def test_runs_on_cuda(tiny_model):
    model = tiny_model.to("cuda")
    rec = Recorder()
    run_sites(model, torch.randint(0, 61, (3, 5)), [Site.z(1, head=0)], accumulators=[rec],
              progress=False)
    assert rec.batches[0][1]["blocks.1.attn.hook_z[0]"].device.type == "cuda"
