"""Every study config is refused complete in ``__post_init__`` (never minutes into a run), and
each run refuses a non-finite model or an absent device before its first forward pass; each
message names the value and the fix."""

from __future__ import annotations

import pytest
import torch

from cgc_lens.errors import CgcLensError
from cgc_lens.studies.adaptive.config import AdaptiveStudyConfig
from cgc_lens.studies.adaptive.run import run_adaptive
from cgc_lens.studies.capability import CapabilityConfig, run_capability
from cgc_lens.studies.survival import SurvivalConfig, run_survival
from cgc_lens.studies.survival.conditions import token_sets
from conftest import make_tiny_model


@pytest.mark.parametrize(("fields", "match"), [
    ({"device": "tpu:0"}, r"Unknown device 'tpu:0'. Expected one of \['cpu', 'cuda'"),
    ({"dtype": "bfloat61"}, r"Expected a floating dtype, got 'bfloat61'. Valid: \["),
    ({"sae_dtype": "flaot32"}, r"Unknown SAE dtype 'flaot32'. Closest: \['float32'"),
    ({"seed": "abc"}, r"seed must be an int, got 'abc' \(str\)"),
    ({"block_len": 64.5}, r"block_len must be an int, got 64\.5 \(float\)"),
    ({"subset_seeds": (0, 1.5)}, r"subset_seeds\[1\] must be an int, got 1\.5"),
    ({"ppl_window": 64, "ppl_stride": 0}, r"1 <= ppl_stride <= ppl_window, got 0 and 64"),
    ({"ppl_window": 1}, r"ppl_window must be >= 2 tokens, got 1"),
    ({"prepend_bos": "yes"}, r"prepend_bos must be true or false, got 'yes'"),
    ({"corpus": ""}, r"corpus must be a non-empty string, got ''"),
])
def test_survival_config_refuses_bad_fields(unchecked, fields, match):
    with pytest.raises(CgcLensError, match=match):
        SurvivalConfig(**fields)


@pytest.mark.parametrize(("fields", "match"), [
    ({"probes": ("induction", "inducton")},
     r"Unknown probe 'inducton' in CapabilityConfig.probes.*Closest: \['induction'\]"),
    ({"probes": ("induction", "induction")}, r"probes: expected distinct probe names"),
    ({"ceiling_gamma": 0}, r"ceiling_gamma: expected a positive γ.*got 0"),
    ({"ceiling_gamma": -1.0}, r"ceiling_gamma: expected a positive γ.*got -1\.0"),
    ({"rho_min": 0.8, "rho_max": 0.3},
     r"rho_min=0\.8 is above rho_max=0\.3.*swap them or lower rho_min"),
    ({"floor": 1.5}, r"floor: expected a retention in \[0, 1\], got 1\.5"),
    ({"rho_max": 2.0}, r"rho_max: expected a retention in \[0, 1\], got 2\.0"),
    ({"density": {"tau_min": 0.1}}, r"density: expected a DensityConfig \(from_dict builds"),
    ({"device": "tpu:0"}, r"Unknown device 'tpu:0'"),
    ({"seed": "abc"}, r"seed: expected an int, got 'abc'"),
    ({"survived": 0.0}, r"survived: expected a correlation threshold in \(0, 1\], got 0\.0"),
    ({"cgc_f": "no"}, r"cgc_f: expected true or false, got 'no'"),
])
def test_capability_config_refuses_bad_fields(unchecked, fields, match):
    with pytest.raises(CgcLensError, match=match):
        CapabilityConfig(**fields)


def test_capability_unknown_density_key_from_json_names_the_closest():
    with pytest.raises(CgcLensError, match=r"Unknown DensityConfig fields \['tau_mn'\] \(closest: "
                                           r"\['tau_min'\]\)"):
        CapabilityConfig.from_dict({"density": {"tau_mn": 0.1}})
    with pytest.raises(CgcLensError, match=r"Unknown EvoConfig fields \['generatons'\]"):
        CapabilityConfig.from_dict({"evo": {"generatons": 3}})
    assert CapabilityConfig.from_dict({"density": {"tau_min": 0.01}}).density.tau_min == 0.01


@pytest.mark.parametrize(("fields", "match"), [
    ({"device": "tpu:0"}, r"Unknown device 'tpu:0'"),
    ({"progress": 1}, r"progress must be true or false, got 1"),
])
def test_adaptive_config_refuses_bad_fields(unchecked, fields, match):
    with pytest.raises(CgcLensError, match=match):
        AdaptiveStudyConfig(**fields)
    with pytest.raises(CgcLensError, match=r"Unknown AdaptiveTrainConfig fields \['stepz'\]"):
        AdaptiveStudyConfig.from_dict({"train": {"stepz": 3}})


def _nan_in_w_q():
    model = make_tiny_model()
    with torch.no_grad():
        model.blocks[1].attn.W_Q[2, 0, 0] = float("nan")
    return model


@pytest.mark.parametrize("run", [
    lambda m: run_survival(SurvivalConfig(progress=False), model=m),
    lambda m: run_capability(CapabilityConfig(progress=False), model=m),
    lambda m: run_adaptive(AdaptiveStudyConfig(progress=False), model=m),
], ids=["survival", "capability", "adaptive"])
def test_studies_refuse_a_non_finite_model_before_the_first_forward_pass(run, monkeypatch):
    model = _nan_in_w_q()
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: pytest.fail("forward ran"))
    with pytest.raises(CgcLensError, match=r"finite weights in the (reference )?model "
                                           r"'random-tiny-2l', got NaN or inf in "
                                           r"\['blocks\.1\.attn\.W_Q'\].*Reload the model"):
        run(model)


@pytest.mark.parametrize("run", [
    lambda: run_survival(SurvivalConfig(device="cuda", progress=False)),
    lambda: run_capability(CapabilityConfig(device="cuda", progress=False)),
    lambda: run_adaptive(AdaptiveStudyConfig(device="cuda", progress=False)),
], ids=["survival", "capability", "adaptive"])
def test_studies_refuse_cuda_without_cuda_before_loading(run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("cgc_lens.models.load_model", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(CgcLensError, match=r"Device 'cuda' is not available.*no CUDA device.*"
                                           r"Pass device='cpu'"):
        run()


def test_ppl_window_over_n_ctx_is_refused_before_the_forward_passes(cgc_tiny):
    config = SurvivalConfig(ppl_window=cgc_tiny.cfg.n_ctx + 1, tokens=4096, progress=False)
    with pytest.raises(CgcLensError, match=rf"ppl_window={cgc_tiny.cfg.n_ctx + 1} does not fit "
                                           rf".*set ppl_window <= {cgc_tiny.cfg.n_ctx}\."):
        token_sets(config, cgc_tiny, {})


@pytest.mark.parametrize("run", [
    lambda m: token_sets(SurvivalConfig(max_documents=1, tokens=65536, progress=False), m, {}),
    lambda m: run_capability(CapabilityConfig(max_documents=1, progress=False), model=m),
], ids=["survival", "capability"])
def test_max_documents_too_small_names_max_documents(run, cgc_tiny):
    with pytest.raises(CgcLensError, match=r"max_documents=1 keeps 1 documents of 'cgc-tiny' "
                                           r"split '\w+': \d+ blocks of \d+ tokens, but .* need "
                                           r"\d+\. Raise max_documents"):
        run(cgc_tiny)
