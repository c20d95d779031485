"""The restore-exactly context: records, nesting, failures while applying, permanent edits."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from cgc_lens.compress import (
    RTN,
    EditStats,
    LowRank,
    MagnitudePrune,
    Operator,
    Plan,
    Step,
    Targets,
    compress_permanently_,
    compressed,
)
from cgc_lens.compress.context import _ACTIVE
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head


def state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def same(model, before) -> bool:
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@dataclass(frozen=True)
class FailOnThird(Operator):
    """Zeroes weights, then raises on the third tensor (a failure part-way through a step)."""

    name = "fail_on_third"
    phase = "prune"
    level_field = None
    error: type = RuntimeError

    def apply_many_(self, weights, refs):
        for i, w in enumerate(weights):
            if i == 2:
                raise self.error("operator failed")
            w.zero_()
        return [EditStats()] * len(weights)

    def apply_(self, weight, ref):  # pragma: no cover - apply_many_ is overridden
        raise NotImplementedError


def test_record_reports_each_tensor(tiny_model):
    plan = Plan.of(MagnitudePrune(0.5), (Targets(names="W_in"), RTN(4)))
    with compressed(tiny_model, plan) as record:
        assert not record.restored
    assert record.restored
    frame = record.to_frame()
    assert list(frame.columns) == ["step", "operator", "param", "layer", "name", "heads", "numel",
                                   "bits", "sparsity", "rank"]
    assert len(frame) == 12 + 2
    prune = frame[frame.step == 0]
    assert (prune.operator == "magnitude").all() and (prune.sparsity == 0.5).all()
    rtn = frame[frame.step == 1]
    assert list(rtn.param) == ["blocks.0.mlp.W_in", "blocks.1.mlp.W_in"] and (rtn.bits == 4).all()
    total = sum(p.numel() for n, p in tiny_model.named_parameters()
                if n.split(".")[-1] in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"))
    assert record.n_parameters == total
    assert record.parameters_touched == total + 2 * 32 * 64
    assert "restored=True" in repr(record)


@pytest.mark.parametrize(("outer_mode", "inner_mode"), [("copy", "copy"), ("copy", "swap"),
                                                      ("swap", "copy"), ("swap", "swap")])
def test_nesting_restores_each_level(tiny_model, outer_mode, inner_mode):
    original = state(tiny_model)
    with compressed(tiny_model, RTN(4), restore=outer_mode):
        quantized = state(tiny_model)
        assert not same(tiny_model, original)
        with compressed(tiny_model, MagnitudePrune(0.5), Targets(names="W_O"),
                        restore=inner_mode):
            w = tiny_model.blocks[0].attn.W_O
            assert (w == 0).float().mean() == 0.5
            assert torch.equal(tiny_model.blocks[0].attn.W_Q, quantized["blocks.0.attn.W_Q"])
        assert same(tiny_model, quantized)
    assert same(tiny_model, original)
    assert not _ACTIVE.get(tiny_model)


def test_leaving_an_outer_block_first_closes_the_inner_one(tiny_model):
    original = state(tiny_model)
    outer, inner = compressed(tiny_model, RTN(3)), compressed(tiny_model, LowRank(0.5))
    outer.__enter__()
    record = inner.__enter__()
    outer.__exit__(None, None, None)
    assert same(tiny_model, original) and record.restored
    inner.__exit__(None, None, None)  # already closed: a no-op
    assert same(tiny_model, original)
    with pytest.raises(CgcLensError, match="already entered"):
        inner.__enter__()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("restore", ["copy", "swap"])
def test_failure_while_applying_restores_before_propagating(tiny_model, error, restore):
    original = state(tiny_model)
    plan = Plan.of(RTN(4), FailOnThird(error=error))
    with pytest.raises(error, match="operator failed"), \
            compressed(tiny_model, plan, restore=restore):
        pytest.fail("the block must not run")  # pragma: no cover
    assert same(tiny_model, original)
    assert not _ACTIVE.get(tiny_model)
    with pytest.raises(error):
        compress_permanently_(tiny_model, plan)
    assert same(tiny_model, original)


def test_permanent_edit_persists_and_is_refused_inside_a_block(tiny_model):
    original = state(tiny_model)
    with compressed(tiny_model, RTN(6)), pytest.raises(CgcLensError, match="would be undone"):
        compress_permanently_(tiny_model, MagnitudePrune(0.2))
    assert same(tiny_model, original)
    record = compress_permanently_(tiny_model, MagnitudePrune(0.2), Targets(layers=1))
    assert not record.restored and len(record.tensors) == 6
    assert torch.equal(tiny_model.blocks[0].attn.W_Q, original["blocks.0.attn.W_Q"])
    assert (tiny_model.blocks[1].attn.W_Q == 0).any()


def test_only_the_selected_head_slices_change(tiny_model):
    original = state(tiny_model)
    targets = Targets(heads=[Head(1, 2)])
    with compressed(tiny_model, MagnitudePrune(0.5), targets) as record:
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            w, w0 = getattr(tiny_model.blocks[1].attn, name), original[f"blocks.1.attn.{name}"]
            assert (w[2] == 0).float().mean() == 0.5
            keep = [0, 1, 3]
            assert torch.equal(w[keep], w0[keep])
        assert torch.equal(tiny_model.blocks[0].attn.W_Q, original["blocks.0.attn.W_Q"])
    assert all(r.heads == (2,) and r.numel == 8 * 32 for r in record.tensors)
    assert same(tiny_model, original)


def test_offload_to_cpu_and_plan_steps(tiny_model):
    original = state(tiny_model)
    with compressed(tiny_model, Step(RTN(2), Targets(layers=0)), offload_to_cpu=True):
        assert not torch.equal(tiny_model.blocks[0].mlp.W_out, original["blocks.0.mlp.W_out"])
        assert torch.equal(tiny_model.blocks[1].mlp.W_out, original["blocks.1.mlp.W_out"])
    assert same(tiny_model, original)


def test_bad_arguments(tiny_model):
    with pytest.raises(CgcLensError, match="offload_to_cpu keeps a CPU copy"):
        compressed(tiny_model, RTN(4), offload_to_cpu=True, restore="swap")
    with pytest.raises((CgcLensError, TypeError), match="restore"):
        compressed(tiny_model, RTN(4), restore="move")
    with pytest.raises(CgcLensError, match="targets= goes with a single operator"):
        compressed(tiny_model, Plan.of(RTN(4)), Targets(layers=0))
    with pytest.raises((CgcLensError, TypeError), match=r"Plan, Step or Operator|plan_or_operator"):
        compressed(tiny_model, "rtn")
    original = state(tiny_model)
    with pytest.raises(CgcLensError, match="Layer 7 is outside"), \
            compressed(tiny_model, Plan.of(RTN(4), (Targets(layers=7), RTN(2)))):
        pass  # pragma: no cover
    assert same(tiny_model, original)


@pytest.mark.parametrize("restore", ["copy", "swap"])
def test_interrupt_between_stacks_of_the_fast_path_restores(tiny_model, restore, monkeypatch):
    from cgc_lens.compress.operators import rtn

    original = state(tiny_model)
    calls = []

    def quantize_then_interrupt(*args, **kwargs):  # the second stack is interrupted
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = rtn.rtn_quantize_stack_
    monkeypatch.setattr(rtn, "rtn_quantize_stack_", quantize_then_interrupt)
    with pytest.raises(KeyboardInterrupt), compressed(tiny_model, RTN(3), restore=restore):
        pytest.fail("the block must not run")  # pragma: no cover
    assert len(calls) == 2
    assert same(tiny_model, original) and not _ACTIVE.get(tiny_model)


def test_swap_falls_back_to_copy_for_targets_that_share_storage(tiny_model):
    attn = tiny_model.blocks[0].attn
    fused = torch.cat([attn.W_Q.detach(), attn.W_K.detach()])  # one storage, two views
    attn.W_Q.data, attn.W_K.data = fused[:4], fused[4:]
    original = state(tiny_model)
    ptrs = {n: p.data_ptr() for n, p in tiny_model.named_parameters()}
    with compressed(tiny_model, RTN(3), restore="swap"):
        assert {n: p.data_ptr() for n, p in tiny_model.named_parameters()} == ptrs
        assert not torch.equal(fused[:4], original["blocks.0.attn.W_Q"])  # edited in place
    assert same(tiny_model, original)
    assert attn.W_Q.data_ptr() == fused.data_ptr()


def test_context_imports_no_operator():
    """The restore context reaches operators only through the protocol in operators.base."""
    import ast
    import inspect

    from cgc_lens.compress import context, operators

    tree = ast.parse(inspect.getsource(context))
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    modules = {alias.name for node in imports if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module or "" for node in imports if isinstance(node, ast.ImportFrom)}
    assert all(node.level == 0 for node in imports if isinstance(node, ast.ImportFrom))
    from_operators = {m for m in modules if m.startswith("cgc_lens.compress.operators")}
    assert from_operators <= {"cgc_lens.compress.operators.base"}, from_operators
    names = {alias.name for node in imports if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    registered = operators.registered_operators()
    operator_names = {operators.operator_class(n).__name__ for n in registered}
    assert len(operator_names) == len(registered) >= 5
    assert not names & (operator_names | set(operators.__all__) - {"EditStats", "Operator"}), names
