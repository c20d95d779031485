"""The checks run before the first forward pass: devices present here, finite weights."""

from __future__ import annotations

import pytest
import torch

from cgc_lens.checks import check_device, check_device_name, check_finite_weights
from cgc_lens.errors import CgcLensError
from conftest import make_tiny_model


@pytest.mark.parametrize("device", [None, "cpu", "meta", torch.device("cpu")])
def test_good_devices_pass(device):
    check_device(device)


@pytest.mark.parametrize(("device", "match"), [
    ("tpu:0", r"Unknown device 'tpu:0'.*Expected one of"),
    ("gpu", r"Unknown device 'gpu'"),
    ("cdua", r"Unknown device 'cdua'.*closest: \['cuda'\]"),
    ("cuda:-1", r"Unknown device 'cuda:-1'.*index"),
    (3, r"Expected a device name such as 'cpu' or 'cuda:0', got 3"),
])
def test_malformed_devices_are_refused(unchecked, device, match):
    with pytest.raises(CgcLensError, match=match):
        check_device_name(device)


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CgcLensError, match=r"Device 'cuda' is not available: this machine has no "
                                           r"CUDA device.*Pass device='cpu' or leave it unset"):
        check_device("cuda")
    check_device_name("cuda")  # well-formed: a config naming it still loads here


@pytest.mark.parametrize(("param", "value"), [("blocks.0.attn.W_Q", float("nan")),
                                                ("embed.W_E", float("-inf"))])
def test_non_finite_weights_are_named(param, value):
    model = make_tiny_model()
    check_finite_weights(model)
    with torch.no_grad():
        dict(model.named_parameters())[param].view(-1)[3] = value
    with pytest.raises(CgcLensError, match=rf"finite weights in the reference model, got NaN or "
                                           rf"inf in \['{param}'\].*Reload the model"):
        check_finite_weights(model, what="the reference model")
