"""One contract, every registered operator (STYLE rule 9; issue 3, item 7)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformer_lens import HookedTransformer

from cgc_lens.compress import (
    RTN,
    HeadPrune,
    LowRank,
    MagnitudePrune,
    Operator,
    Targets,
    WandaPrune,
    as_matrix,
    compress_permanently_,
    compressed,
    registered_operators,
)
from cgc_lens.compress.operators import AWQ, FP8, GPTQ, NF4, NF4_CODE, SemiStructured
from cgc_lens.compress.operators.sparsity import n_pruned
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head
from conftest import make_tiny_model

RETENTION = {Head(0, 1): 0.25, Head(1, 0): 0.5, Head(1, 3): 0.0}


def make_model(dtype: torch.dtype = torch.float32) -> HookedTransformer:
    return make_tiny_model(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=23,
                           n_ctx=8, dtype=dtype, seed=0)


def tokens(model: HookedTransformer) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (3, 8), generator=torch.Generator().manual_seed(0))


def check_rtn(model, record, op):  # every output channel uses at most 2^b - 1 levels
    for ref in Targets().resolve(model):
        mat = as_matrix(model.get_parameter(ref.param).detach(), ref.out_axes)
        assert max(len(torch.unique(row)) for row in mat) <= 2**op.bits - 1
    assert {r.bits for r in record.tensors} == {op.bits}


def check_magnitude(model, record, op):
    for ref in Targets().resolve(model):
        w = model.get_parameter(ref.param)
        assert int((w == 0).sum()) == n_pruned(w.numel(), op.sparsity)
    assert all(abs(r.sparsity - op.sparsity) <= 1 / 128 for r in record.tensors)


def check_wanda(model, record, op):
    for ref in Targets().resolve(model):
        mat = as_matrix(model.get_parameter(ref.param).detach(), ref.out_axes)
        zeros = (mat == 0).sum(1)
        assert (zeros == n_pruned(mat.shape[1], op.sparsity)).all()


def check_head_prune(model, record, op):
    for head, r in op.retention.items():
        w = model.blocks[head.layer].attn.W_O[head.head]
        assert float((w != 0).float().mean()) == pytest.approx(r, abs=1 / w.numel())
    assert {(r.layer, r.heads) for r in record.tensors} == {(0, (1,)), (1, (0, 3))}


def check_low_rank(model, record, op):
    for ref, rec in zip(Targets().resolve(model), record.tensors, strict=True):
        mat = as_matrix(model.get_parameter(ref.param).detach(), ref.out_axes).double()
        expected = max(1, round(op.rank_ratio * min(mat.shape)))
        assert rec.rank == expected
        assert int(torch.linalg.matrix_rank(mat, rtol=1e-4)) == expected


def check_rtn_groups(model, record, op):  # every group of op.group_size: at most 2^b levels
    for ref in Targets().resolve(model):
        mat = as_matrix(model.get_parameter(ref.param).detach(), ref.out_axes)
        groups = mat.reshape(-1, op.group_size)
        assert max(len(torch.unique(g)) for g in groups) <= 2**op.bits
    assert {r.bits for r in record.tensors} == {op.bits}


def check_nf4(model, record, op):  # every block is absmax times NF4 levels
    code = torch.tensor(NF4_CODE, dtype=torch.float64)
    for ref in Targets().resolve(model):
        w = model.get_parameter(ref.param).detach()
        blocks = as_matrix(w, ref.out_axes).double().reshape(-1, op.block_size)
        levels = blocks / blocks.abs().amax(1, keepdim=True)
        gap = (levels.unsqueeze(-1) - code).abs().amin(-1)
        assert gap.max() < (1e-6 if w.dtype == torch.float32 else 1e-12)
    assert {r.bits for r in record.tensors} == {4}


def check_fp8(model, record, op):  # value / channel scale is exactly an e4m3 number
    for ref in Targets().resolve(model):
        mat = as_matrix(model.get_parameter(ref.param).detach(), ref.out_axes)
        scaled = mat / (mat.abs().amax(1, keepdim=True) / 448)
        assert scaled.abs().max() <= 448 * (1 + 1e-6)
        torch.testing.assert_close(scaled.to(torch.float8_e4m3fn).to(scaled.dtype), scaled)
    assert {r.bits for r in record.tensors} == {8}


def check_semi_structured(model, record, op):  # at most n non-zeros in every m inputs
    for ref in Targets().resolve(model):
        mat = as_matrix(model.get_parameter(ref.param).detach(), ref.out_axes)
        assert int((mat.reshape(-1, op.m) != 0).sum(1).max()) <= op.n
    assert all(r.sparsity >= 1 - op.n / op.m for r in record.tensors)


Builder = Callable[[HookedTransformer], Operator]
CASES: dict[str, tuple[Builder, Callable]] = {
    "rtn": (lambda m: RTN(3), check_rtn),
    "magnitude": (lambda m: MagnitudePrune(0.3), check_magnitude),
    "wanda": (lambda m: WandaPrune(0.4).calibrate(m, tokens(m)), check_wanda),
    "head_prune": (lambda m: HeadPrune(RETENTION), check_head_prune),
    "low_rank": (lambda m: LowRank(0.5), check_low_rank),
    "nf4": (lambda m: NF4(32), check_nf4),
    "fp8": (lambda m: FP8("e4m3"), check_fp8),
    "semi_structured": (lambda m: SemiStructured(2, 4), check_semi_structured),
    "gptq": (lambda m: GPTQ(3, group_size=8).calibrate(m, tokens(m)), check_rtn_groups),
    "awq": (lambda m: AWQ(3, group_size=8).calibrate(m, tokens(m)), check_rtn_groups),
}
EXTRA_CASES: dict[str, tuple[Builder, Callable]] = {  # more settings of registered operators
    "rtn-g8-asym": (lambda m: RTN(3, group_size=8, symmetric=False), check_rtn_groups),
    "rtn-g4-sym": (lambda m: RTN(4, group_size=4), check_rtn_groups),
    "nf4-double-quant": (lambda m: NF4(64, double_quant=True), check_nf4),
    "wanda-4:8": (lambda m: SemiStructured(4, 8, score="wanda").calibrate(m, tokens(m)),
                  check_semi_structured),
    "gptq-g4-asym-act": (lambda m: GPTQ(3, group_size=4, symmetric=False, act_order=True,
                                        block_size=3).calibrate(m, tokens(m)), check_rtn_groups),
}
ALL_CASES = {**CASES, **EXTRA_CASES}
IDENTITIES = {
    "rtn": RTN(16),
    "magnitude": MagnitudePrune(0.0),
    "wanda": WandaPrune(0.0),
    "head_prune": HeadPrune(dict.fromkeys(RETENTION, 1.0)),
    "low_rank": LowRank(1.0),
    "nf4": None,  # no level that leaves a weight unchanged
    "fp8": None,
    "semi_structured": SemiStructured(4, 4),
    "gptq": GPTQ(16),
    "awq": AWQ(16),
}
BAD_LEVELS: dict[str, list[Callable[[], Operator]]] = {
    "rtn": [lambda: RTN(1), lambda: RTN(17), lambda: RTN(0)],
    "magnitude": [lambda: MagnitudePrune(-0.1), lambda: MagnitudePrune(1.0)],
    "wanda": [lambda: WandaPrune(-0.01), lambda: WandaPrune(1.0)],
    "head_prune": [lambda: HeadPrune({Head(0, 0): 1.01}), lambda: HeadPrune({Head(0, 0): -0.1})],
    "low_rank": [lambda: LowRank(0.0), lambda: LowRank(1.5)],
    "nf4": [lambda: NF4(0), lambda: NF4(1), lambda: NF4(8192)],
    "fp8": [lambda: FP8("e3m4"), lambda: FP8(scale="group")],
    "semi_structured": [lambda: SemiStructured(0, 4), lambda: SemiStructured(5, 4),
                        lambda: SemiStructured(2, 0)],
    "gptq": [lambda: GPTQ(1), lambda: GPTQ(17)],
    "awq": [lambda: AWQ(1), lambda: AWQ(17)],
}
BAD_LEVEL_MESSAGE = {"fp8": r"FP8 (format|scale)|'fmt'|'scale'"}  # TypeError under the checker
NAMES = registered_operators()
RECALIBRATED = {"gptq", "awq"}  # calibrated on the model as it is when applied: not idempotent


def state(model: HookedTransformer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_bit_equal(model: HookedTransformer, before: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        a, b = p.detach(), before[name]
        assert a.dtype == b.dtype and a.device == b.device, name
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        assert torch.equal(a.view(ints), b.view(ints)), f"{name} not restored bit for bit"


def test_every_registered_operator_is_covered():
    assert set(CASES) == set(NAMES) == set(IDENTITIES) == set(BAD_LEVELS)


@pytest.mark.parametrize("name", NAMES + tuple(EXTRA_CASES))
@pytest.mark.parametrize("restore", ["copy", "swap"])
def test_restores_exactly_and_reaches_level(name, restore):
    model = make_model()
    build, check = ALL_CASES[name]
    op = build(model)
    before = state(model)
    params = dict(model.named_parameters())
    ptrs = {n: p.data_ptr() for n, p in params.items()}
    with compressed(model, op, restore=restore) as record:
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        assert changed, "the operator changed nothing"
        assert {r.param for r in record.tensors} >= set(changed)
        assert all(".ln" not in n and "embed" not in n and ".b_" not in n for n in changed)
        check(model, record, op)
        moved = {n for n, p in model.named_parameters() if p.data_ptr() != ptrs[n]}
        assert moved == (set() if restore == "copy" else {r.param for r in record.tensors})
    assert record.restored
    assert_bit_equal(model, before)
    assert dict(model.named_parameters()) == params  # the same Parameter objects throughout
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
@pytest.mark.parametrize("restore", ["copy", "swap"])
def test_restores_after_an_exception_in_the_block(name, error, restore):
    model = make_model()
    op = CASES[name][0](model)
    before = state(model)
    with pytest.raises(error), compressed(model, op, restore=restore):
        raise error("boom")
    assert_bit_equal(model, before)


@pytest.mark.parametrize("name", NAMES + tuple(EXTRA_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_dtype_device_and_hook_points(name, dtype):
    model = make_model(dtype)
    op = ALL_CASES[name][0](model)
    before = state(model)
    hooks = set(model.hook_dict)
    with compressed(model, op, offload_to_cpu=True):
        for n, p in model.named_parameters():
            assert p.dtype == before[n].dtype == dtype and p.device == before[n].device
        assert set(model.hook_dict) == hooks
        logits = model(tokens(model))
        assert torch.isfinite(logits).all()
    assert set(model.hook_dict) == hooks
    assert all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())
    assert_bit_equal(model, before)


@pytest.mark.parametrize("name", NAMES)
def test_identity_level_touches_nothing(name):
    if IDENTITIES[name] is None:
        pytest.skip(f"{name} has no identity level")
    model = make_model()
    before = state(model)
    with compressed(model, IDENTITIES[name]) as record:
        assert_bit_equal(model, before)
    assert record.parameters_touched == 0


@pytest.mark.parametrize("name", NAMES)
def test_idempotent(name):
    model = make_model()
    op = CASES[name][0](model)
    compress_permanently_(model, op)
    once = state(model)
    if name in RECALIBRATED:  # a second pass re-optimizes on the edited model: same grid only
        CASES[name][1](model, compress_permanently_(model, op), op)
        return
    compress_permanently_(model, op)
    for n, p in model.named_parameters():  # RTN and SVD re-derive scales / bases: ulp-close
        torch.testing.assert_close(p.detach(), once[n], atol=1e-5, rtol=1e-5)
        assert torch.equal(p == 0, once[n] == 0) or name in ("low_rank",)


@pytest.mark.parametrize("name", NAMES)
def test_bad_levels_raise(name):
    for make in BAD_LEVELS[name]:
        match = BAD_LEVEL_MESSAGE.get(name, r"must be (an int|a number) in")
        errors = (CgcLensError, TypeError) if name in BAD_LEVEL_MESSAGE else CgcLensError
        with pytest.raises(errors, match=match):
            make()
