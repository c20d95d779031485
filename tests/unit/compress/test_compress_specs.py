"""Condition specs: the grammar, its errors, the up-front group-size check and effective bits
per weight against a naive count over the model's weights."""

from __future__ import annotations

import pytest
import torch

from cgc_lens.compress import RTN, MagnitudePrune, Plan, Targets, WandaPrune, as_matrix, compressed
from cgc_lens.compress.operators import FP8, NF4, SemiStructured
from cgc_lens.compress.specs import (
    CONDITION_SPECS,
    EXAMPLE_SPECS,
    check_plan_shapes,
    parse_condition,
    plan_bits_per_weight,
)
from cgc_lens.errors import CgcLensError
from cgc_lens.models import load_model_shape

EXPECTED = {
    "int8": RTN(8),
    "int4": RTN(4),
    "int3-g16": RTN(3, group_size=16),
    "int4-g128-asym": RTN(4, group_size=128, symmetric=False),
    "int4-asym": RTN(4, convention="asymmetric"),
    "nf4": NF4(),
    "nf4-dq": NF4(double_quant=True),
    "fp8": FP8("e4m3"),
    "fp8-e5m2": FP8("e5m2"),
    "fp8-e4m3-tensor": FP8("e4m3", scale="tensor"),
    "2:4": SemiStructured(2, 4),
    "magnitude-4:8": SemiStructured(4, 8),
    "wanda-2:4": SemiStructured(2, 4, score="wanda"),
    "magnitude-0.5": MagnitudePrune(0.5),
    "wanda-0.25": WandaPrune(0.25),
    "matched:int4-g32": MagnitudePrune(0.0),
}


@pytest.mark.parametrize("spec", sorted(EXPECTED))
def test_spec_names_its_operator(spec):
    op, meta = parse_condition(spec)
    assert op == EXPECTED[spec]
    assert meta.spec == spec
    assert meta.calibrated == spec.startswith("wanda")


def test_metadata_of_the_issue_specs():
    rows = {s: parse_condition(s)[1] for s in ("int4-g128-asym", "nf4", "fp8", "4:8", "wanda-0.5")}
    assert (rows["int4-g128-asym"].format, rows["int4-g128-asym"].bits) == ("rtn", 4)
    assert rows["int4-g128-asym"].group_size == 128
    assert (rows["nf4"].format, rows["nf4"].bits, rows["fp8"].bits) == ("nf4", 4, 8)
    assert (rows["4:8"].sparsity, rows["4:8"].group_size) == (0.5, 8)
    assert (rows["wanda-0.5"].format, rows["wanda-0.5"].sparsity) == ("wanda", 0.5)
    assert parse_condition("matched:nf4")[1].match == "nf4"
    for spec in EXAMPLE_SPECS:  # every example in the help text parses, or names what is missing
        try:
            parse_condition(spec)
        except CgcLensError as err:
            assert spec.startswith(("gptq", "awq")) and "not available" in str(err)
    assert all(s in CONDITION_SPECS for s in EXAMPLE_SPECS)


@pytest.mark.parametrize(
    ("spec", "closest"),
    [
        ("int4g128", "int4-g128"),
        ("nf5", "nf4"),
        ("fp8-e5m3", "fp8-e5m2"),
        ("wanda2:4", "wanda-2:4"),
    ],
)
def test_unknown_spec_names_the_closest(spec, closest):
    with pytest.raises(CgcLensError, match="Closest") as err:
        parse_condition(spec)
    assert closest in str(err.value)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("int1", "2..16"),
        ("int4-g0", "positive"),
        ("int4-asym-asym", "repeated option 'asym'"),
        ("int4-act", "'act'"),
        ("magnitude-1.5", "fraction"),
        ("4:2", "1 <= n < m"),
        ("matched:matched:int4", "not another match"),
        ("matched:int9x", "Unknown condition"),
        ("", "non-empty"),
    ],
)
def test_bad_levels_are_refused_by_name(spec, says):
    with pytest.raises(CgcLensError, match=r"[Cc]ondition") as err:
        parse_condition(spec)
    assert says in str(err.value)


def test_group_size_not_dividing_is_refused_up_front_naming_weight_and_sizes(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    plan = Plan.of(parse_condition("int4-g24")[0])
    with pytest.raises(CgcLensError) as err:
        check_plan_shapes(plan, tiny_model, name="int4-g24")
    msg = str(err.value)
    assert "blocks.0.attn.W_Q" in msg and "'int4-g24'" in msg
    assert "1, 2, 4, 8, 16, 32" in msg  # the divisors of d_model = 32
    check_plan_shapes(Plan.of(parse_condition("int4-g16")[0]), tiny_model)
    with pytest.raises(CgcLensError, match="W_in"):  # an n:m group is a group size too
        check_plan_shapes(Plan.of((Targets(families="mlp"), SemiStructured(2, 3))), tiny_model)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


def test_group_size_check_works_on_shapes_only():
    shape_only = load_model_shape("cgc-tiny")  # meta device: no weights loaded
    check_plan_shapes(Plan.of(parse_condition("int4-g128")[0]), shape_only)
    with pytest.raises(CgcLensError, match="valid group sizes: 1, 2, 4, 8, 16, 32, 64, 128"):
        check_plan_shapes(Plan.of(parse_condition("int4-g256")[0]), shape_only)


def _naive_bits(model, bits_of) -> float:
    """Storage bits summed weight by weight from each weight's [out, in] matrix."""
    total_bits = total = 0
    for ref, param in Targets().resolve_params(model):
        n_out, n_in = as_matrix(param.detach(), ref.out_axes).shape
        total_bits += bits_of(n_out, n_in)
        total += n_out * n_in
    return total_bits / total


@pytest.mark.parametrize(
    ("spec", "bits_of"),
    [
        ("int4", lambda o, i: 4 * o * i + 16 * o),
        ("int4-g16", lambda o, i: 4 * o * i + 16 * o * i // 16),
        ("int3-g16-asym", lambda o, i: 3 * o * i + (16 + 3) * o * i // 16),
        ("nf4", lambda o, i: 4 * o * i + 32 * o * i // 64),
        ("fp8", lambda o, i: 8 * o * i + 32 * o),
        ("fp8-tensor", lambda o, i: 8 * o * i + 32),
        ("2:4", lambda o, i: (16 + 2) * o * i // 2),
        ("magnitude-0.25", lambda o, i: 16 * o * i * 3 // 4 + o * i),
    ],
)
def test_bits_per_weight_equals_a_naive_count(tiny_model, spec, bits_of):
    plan = Plan.of(parse_condition(spec)[0])
    got = plan_bits_per_weight(plan, tiny_model)
    assert got == pytest.approx(_naive_bits(tiny_model, bits_of), rel=1e-12)


def test_bits_per_weight_of_a_matched_level_and_of_plans(tiny_model):
    matched = Plan.of(parse_condition("matched:int4")[0])
    assert plan_bits_per_weight(matched, tiny_model, sparsity=0.3) == pytest.approx(16 * 0.7 + 1)
    assert plan_bits_per_weight(Plan.of(RTN(4), MagnitudePrune(0.5)), tiny_model) is None
    only_mlp = Plan.of((Targets(families="mlp"), RTN(4, group_size=16)))
    assert plan_bits_per_weight(only_mlp, tiny_model) == pytest.approx(4 + 16 / 16)


@torch.no_grad()
def test_spec_edits_like_its_operator(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 16))
    direct = {
        "int4": RTN(4),
        "int4-g16-asym": RTN(4, group_size=16, convention="asymmetric"),
        "nf4": NF4(64),
        "fp8-e5m2": FP8("e5m2"),
        "2:4": SemiStructured(2, 4),
    }
    reference = tiny_model(tokens)
    for spec, op in direct.items():
        with compressed(tiny_model, parse_condition(spec)[0]):
            by_spec = tiny_model(tokens)
        with compressed(tiny_model, op):
            by_operator = tiny_model(tokens)
        assert torch.equal(by_spec, by_operator), spec
        assert torch.isfinite(by_spec).all() and not torch.equal(by_spec, reference), spec
