"""Configuration of the feature-survival audit (QDM paper §3, App. K): what to compress and read.

:class:`SurvivalConfig` is the one definition the Python API, the JSON reproduction configs
(``cgc_lens/configs/survival_*.json``) and ``cgc-lens survival`` share: every field's docstring
is its ``--help``. The compression conditions follow from these fields, in this order: the null
condition (``null``), one RTN condition per entry of ``bits`` (named ``RTN INT<b>``), one per
spec in ``conditions`` (named by its spec, :func:`cgc_lens.compress.specs.parse_condition`),
any :class:`PlanCondition` in ``plans``, the checkpoints of ``compare``, then magnitude pruning
matched to a condition: each ``matched:<spec>`` of ``conditions``, then ``match_pruning``.

Over 400 lines: the one definition of every survival option (each field's docstring is its
``--help``), the checks that refuse a bad value before anything loads, and the names and
order of the conditions those fields make, which every other module of the study reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cgc_lens.analysis.survival import SurvivalThresholds
from cgc_lens.checks import check_device_name, resolve_dtype
from cgc_lens.compress import Plan
from cgc_lens.compress.operators.rtn import check_bits
from cgc_lens.compress.specs import ConditionSpec, parse_condition
from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.io.configs import CONFIG_DIR, config_from_dict, config_to_dict, read_config
from cgc_lens.saes.loading import EMBEDDED_SAE_DIRS, check_sae_dtype

__all__ = [
    "ALLOWABLE_CHECKS", "CONFIG_DIR", "DEFAULT_BITS", "MATCH_AUTO", "NULL_NAME", "PlanCondition",
    "SurvivalConfig",
    "parse_compare", "rtn_name",
]

"""Where the packaged reproduction configs live (``survival_pythia70m.json`` ...)."""

NULL_NAME = "reference"
"""Name of the null condition: the reference model against itself (Table 1's baseline row)."""


MATCH_AUTO = "auto"
"""``match_pruning``'s default: match the RTN condition at 6 bits, else the lowest asked for."""


DEFAULT_BITS = (8, 7, 6, 5, 4)
"""The RTN bit-widths of a config that asks for no conditions (the paper's sweep)."""


class _DefaultBits(tuple):
    """``DEFAULT_BITS`` as filled in for an unset ``bits``: equal to the plain tuple, but known
    as the default, so that a copy given ``conditions`` drops them."""

    __slots__ = ()


def rtn_name(bits: int) -> str:
    """The condition name of RTN at ``bits``.

    Example:
        >>> rtn_name(6)
        'RTN INT6'
    """
    return f"RTN INT{bits}"


@dataclass(frozen=True, kw_only=True)
class PlanCondition:
    """A compression condition given as any :class:`~cgc_lens.compress.Plan`.

    Example:
        >>> from cgc_lens.compress import RTN, MagnitudePrune
        >>> c = PlanCondition(name="prune+int8", plan=Plan.compose(MagnitudePrune(0.1), RTN(8)))
        >>> PlanCondition.from_dict(c.to_dict()) == c
        True
    """

    name: str
    """Label of the condition in every table and figure."""
    plan: Plan
    """What is applied to the model (restored bit-exactly afterwards)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise CgcLensError(f"PlanCondition.name must be a non-empty string, got {self.name!r}.")
        if isinstance(self.plan, dict):
            object.__setattr__(self, "plan", Plan.from_dict(self.plan))
        if not isinstance(self.plan, Plan):
            raise CgcLensError(f"PlanCondition.plan must be a Plan, got {self.plan!r}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"name": ..., "plan": Plan.to_dict()}``."""
        return {"name": self.name, "plan": self.plan.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanCondition:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or set(data) != {"name", "plan"}:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise CgcLensError(f"A plan condition is {{'name': ..., 'plan': ...}}, got {got}.")
        return cls(name=data["name"], plan=Plan.from_dict(data["plan"]))


ALLOWABLE_CHECKS = ("baseline-perplexity",)
"""Protocol checks that ``SurvivalConfig.allow`` may let pass."""


@dataclass(frozen=True, kw_only=True)
class SurvivalConfig:
    """Everything a feature-survival audit depends on; saved with its results.

    Example:
        >>> cfg = SurvivalConfig(bits=(8, 4), match_pruning=4, tokens=4096)
        >>> cfg.condition_names
        ('reference', 'RTN INT8', 'RTN INT4', 'magnitude matched RTN INT4')
        >>> cfg.sae_source
        ('cgc-tiny', None)
        >>> SurvivalConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    model: str = "cgc-tiny"
    """Model name (TransformerLens pretrained name, "cgc-tiny") or local path."""
    sae: str = "cgc-tiny"
    """The frozen SAE: "RELEASE/ID" (e.g.
    "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"), "RELEASE" with sae_id, a
    local folder, or "cgc-tiny" (its embedded residual SAE). Its hook is the read-out site."""
    sae_id: str | None = None
    """SAE id inside the release, when "sae" is given without one (e.g. a hub repo ORG/NAME)."""
    hook: str | None = None
    """Read-out hook, for an SAE whose metadata names none (default: the SAE's own)."""
    second_sae: str | None = None
    """Optional second SAE (same forms as "sae") at another read-out site: the second-layer
    stability check, streamed in the same forward passes."""
    corpus: str = "cgc-tiny"
    """Corpus name or path (see cgc_lens.data.corpus.load_corpus)."""
    split: str = "eval"
    """Corpus split the feature tokens are drawn from."""
    eval_split: str = "eval"
    """Split of the perplexity tokens (drawn disjoint from the feature tokens if the same)."""
    match_split: str = "calibration"
    """Split of the held-out tokens the matched-pruning search is scored on."""
    calibration_split: str = "calibration"
    """Split of the calibration tokens of GPTQ, AWQ and Wanda conditions (drawn disjoint from
    the match tokens if the same)."""
    calibration_tokens: int = 16384
    """Calibration tokens of GPTQ, AWQ and Wanda conditions (drawn only when one is asked)."""
    max_documents: int | None = None
    """Read at most this many documents of each split (large hub corpora)."""
    tokens: int = 65536
    """Token budget of the feature statistics (rounded down to whole blocks)."""
    block_len: int | None = None
    """Tokens per block (context resets per block); default: the model's n_ctx, at most 512."""
    batch_size: int = 8
    """Blocks per forward pass."""
    prepend_bos: bool | None = None
    """Feed a bos token before every block; its position is left out of the statistics.
    Unset: follow the SAE's own prepend_bos (SAELens metadata; no bos when it names none). The
    policy used is recorded in results.json (info.protocol)."""
    allow: tuple[str, ...] = ()
    """Protocol checks to let pass instead of refusing the run: "baseline-perplexity" (the
    reference's perplexity on the evaluation tokens is above their unigram perplexity, a broken
    baseline such as a model trained with bos evaluated without it)."""
    seed: int = 0
    """Seed of the block draws and of the subset stability check."""
    null: bool = True
    """Include the null condition (the reference against itself; Table 1's baseline row)."""
    bits: tuple[int, ...] | None = None
    """RTN bit-widths (per-output-channel, symmetric, Eq. 2), one condition each, named
    "RTN INT<b>": shorthand for the conditions int<b> (default: 8 7 6 5 4 when no conditions
    are given, none otherwise)."""
    conditions: tuple[str, ...] = ()
    """Conditions by spec, each named by its spec: int8, int4 (per-channel RTN), int4-g128,
    int4-g128-asym, gptq4-g128, gptq4-g128-act, awq4-g128, nf4, fp8, fp8-e5m2, 2:4, 4:8,
    wanda-2:4, magnitude-0.5, wanda-0.5, and matched:SPEC (magnitude pruning matched in
    perplexity to SPEC). A group size must divide every targeted weight's input dimension."""
    plans: tuple[PlanCondition, ...] = ()
    """Further conditions, any compression plan each (JSON: [{"name": ..., "plan": ...}])."""
    compare: tuple[str, ...] = ()
    """Checkpoints to audit against the model, one condition each: PATH or NAME=PATH of a
    Hugging Face folder of the same architecture (plain, or compressed-tensors), a folder
    written by cgc_lens.save_model, or a .gguf file."""
    match_pruning: int | str | None = "auto"
    """Add magnitude pruning whose perplexity on the match tokens equals that of RTN at these
    bits (an int) or of the named condition; none if unset. "auto": the RTN condition at 6 bits
    (the paper's matched pair) when one is asked for, else the lowest-bit RTN condition asked
    for (bits, or an int<b> of conditions), else none."""
    match_method: Literal["root", "bisect"] = "root"
    """Matched search: "root" (a bracket on a power-law residual, then TOMS 748, to
    match_tolerance; cgc_lens.compress.matched.root_level) or "bisect" (the
    paper's six fixed bisection steps on [0, 0.8], keeping the closest; App. F)."""
    match_tolerance: float = 0.05
    """The "root" search stops within this fraction of the perplexity gap being matched
    (|ppl - target| <= tolerance · |target - reference|)."""
    match_tokens: int = 16384
    """Held-out tokens the matched search evaluates perplexity on."""
    eval_tokens: int = 16384
    """Tokens each condition's perplexity is measured on (chunked protocol, §3.5)."""
    ppl_window: int | None = None
    """Also measure sliding-window perplexity with this window (App. D); none if unset."""
    ppl_stride: int | None = None
    """Stride of the sliding window (default: window // 4)."""
    active_rate: float = 1e-3
    """A feature is active when its reference firing rate exceeds this (Eq. 4)."""
    survived: float = 0.9
    """Survived: r >= this (τ_s)."""
    damaged: float = 0.5
    """Damaged: r < this (τ_d); degraded in between."""
    flat_other: Literal["damaged", "undefined"] = "damaged"
    """r of a feature the condition switches off (constant under compression): 0 ("damaged")
    or NaN ("undefined", left out of every statistic)."""
    focus: str | None = None
    """Condition the fragility predictor, threshold grid and stability checks are run on
    (default: RTN INT6 if present, else the matched target, else the middle RTN condition)."""
    fragility_c: float = 1.0
    """Inverse L2 strength of the fragility logistic regression."""
    fragility_folds: int = 5
    """Stratified cross-validation folds of the fragility predictor."""
    budget_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    """Token-budget check: these fractions of the budget (whole shards) are re-summarised."""
    subset_fraction: float = 0.5
    """Random-subset check: this fraction of the shards, one draw per subset seed."""
    subset_seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the random-subset check."""
    n_shards: int = 16
    """Batches are grouped into this many shards, each with its own sums, for the checks."""
    n_groups: int = 20
    """Feature blocks are dealt into this many groups at random (a fixed permutation of their
    index), each with its own sums: the blocked-jackknife errors and 95% intervals of every
    survival number (fewer if fewer blocks; 0: no intervals)."""
    cache_mb: float = 32.0
    """Memory for reference SAE codes (stored sparse): conditions run over that many tokens per
    weight edit. 0 edits the weights once per batch per condition."""
    device: str | None = None
    """cpu, cuda ... (default: the best available)."""
    dtype: str | None = None
    """Model parameter dtype (float32 if unset)."""
    sae_dtype: str = "float32"
    """SAE parameter dtype."""
    progress: bool = True
    """Show progress bars."""
    split_by: Literal["tokens", "conditions"] = "tokens"
    """Under torchrun (several ranks): share out the feature and evaluation tokens, or the
    conditions (each rank compresses its own copy). One process: no effect."""

    def __post_init__(self) -> None:
        if self.bits is None or (isinstance(self.bits, _DefaultBits) and self.conditions):
            # bits left at the default give way to conditions, also when a copy of a default
            # config (the command line's base) carries them over
            object.__setattr__(self, "bits", () if self.conditions else _DefaultBits(DEFAULT_BITS))
        for name in ("bits", "conditions", "budget_fractions", "subset_seeds", "compare"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.plans, (list, tuple)):
            plans = tuple(PlanCondition.from_dict(p) if isinstance(p, dict) else p
                          for p in self.plans)
            object.__setattr__(self, "plans", plans)
        if isinstance(self.match_pruning, str) and self.match_pruning.strip().isdigit():
            object.__setattr__(self, "match_pruning", int(self.match_pruning))
        elif isinstance(self.match_pruning, str) and self.match_pruning.lower() in ("", "none"):
            object.__setattr__(self, "match_pruning", None)  # `--match-pruning none`
        self._check_kinds()
        self._check_sizes()
        self._check_conditions()
        SurvivalThresholds(active_rate=self.active_rate, survived=self.survived,
                           damaged=self.damaged)
        for name, valid in (("match_method", ("root", "bisect")),
                            ("flat_other", ("damaged", "undefined")),
                            ("split_by", ("tokens", "conditions"))):
            if getattr(self, name) not in valid:
                raise CgcLensError(f"{name} must be one of {valid}, got {getattr(self, name)!r}.")

    def _check_kinds(self) -> None:
        """Names, flags, seeds, dtypes and the device: each field of the right kind, checked
        before anything is loaded (a typo would otherwise fail minutes into the run)."""
        for name in ("model", "sae", "corpus", "split", "eval_split", "match_split",
                     "calibration_split"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise CgcLensError(f"{name} must be a non-empty string, got "
                                   f"{getattr(self, name)!r}.")
        if self.prepend_bos is not None and not isinstance(self.prepend_bos, bool):
            raise CgcLensError(f"prepend_bos must be true or false, got {self.prepend_bos!r} "
                               "(or unset: follow the SAE).")
        if isinstance(self.allow, (list, str)):
            object.__setattr__(self, "allow", (self.allow,) if isinstance(self.allow, str)
                               else tuple(self.allow))
        bad = [a for a in self.allow if a not in ALLOWABLE_CHECKS]
        if bad:
            raise CgcLensError(f"allow: unknown check(s) {bad}; valid: {list(ALLOWABLE_CHECKS)}.")
        for name in ("null", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise CgcLensError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        ints = {"seed": self.seed, **{f"subset_seeds[{i}]": v
                                      for i, v in enumerate(self.subset_seeds)}}
        for name in ("block_len", "max_documents", "ppl_window", "ppl_stride"):
            if getattr(self, name) is not None:
                ints[name] = getattr(self, name)
        for name, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise CgcLensError(f"{name} must be an int, got {value!r} "
                                   f"({type(value).__name__}).")
        resolve_dtype(self.dtype)
        check_sae_dtype(self.sae_dtype)
        check_device_name(self.device)

    def _check_sizes(self) -> None:
        positive = {"tokens": self.tokens, "batch_size": self.batch_size,
                    "n_shards": self.n_shards, "match_tokens": self.match_tokens,
                    "calibration_tokens": self.calibration_tokens}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CgcLensError(f"{name} must be a positive int, got {value!r}.")
        if not isinstance(self.n_groups, int) or isinstance(self.n_groups, bool) or \
                self.n_groups < 0 or self.n_groups == 1:
            raise CgcLensError(f"n_groups must be 0 (no intervals) or an int >= 2 (20 is usual), "
                               f"got {self.n_groups!r}.")
        if not isinstance(self.eval_tokens, int) or self.eval_tokens < 0:
            raise CgcLensError(f"eval_tokens must be an int >= 0 (0: no perplexity), got "
                               f"{self.eval_tokens!r}.")
        if self.block_len is not None and self.block_len < 2:
            raise CgcLensError(f"block_len must be >= 2 or None, got {self.block_len!r}.")
        if self.max_documents is not None and self.max_documents < 1:
            raise CgcLensError(f"max_documents must be >= 1 or None, got {self.max_documents!r}.")
        if self.ppl_window is None and self.ppl_stride is not None:
            raise CgcLensError("ppl_stride needs ppl_window (the sliding-window width).")
        if self.ppl_window is not None and self.ppl_window < 2:
            raise CgcLensError(f"ppl_window must be >= 2 tokens, got {self.ppl_window!r}.")
        if self.ppl_window is not None and self.ppl_stride is not None and \
                not 1 <= self.ppl_stride <= self.ppl_window:
            raise CgcLensError(f"Expected 1 <= ppl_stride <= ppl_window, got "
                               f"{self.ppl_stride!r} and {self.ppl_window!r}.")
        if not (self.cache_mb >= 0 and 0 < self.match_tolerance < 1 and self.fragility_c > 0):
            raise CgcLensError(
                f"Expected cache_mb >= 0, 0 < match_tolerance < 1, fragility_c > 0; got "
                f"{self.cache_mb!r}, {self.match_tolerance!r}, {self.fragility_c!r}.")
        if not isinstance(self.fragility_folds, int) or self.fragility_folds < 2:
            raise CgcLensError(
                f"fragility_folds must be an int >= 2, got {self.fragility_folds!r}.")
        if not self.budget_fractions or not all(0 < f <= 1 for f in self.budget_fractions):
            raise CgcLensError(f"budget_fractions must be fractions in (0, 1], got "
                               f"{self.budget_fractions!r}.")
        if not 0 < self.subset_fraction <= 1:
            raise CgcLensError(f"subset_fraction must be in (0, 1], got {self.subset_fraction!r}.")

    def _check_conditions(self) -> None:
        for b in self.bits:
            check_bits(b)
        if len(set(self.bits)) != len(self.bits):
            raise CgcLensError(f"bits must not repeat, got {self.bits!r}.")
        specs = [spec for _, spec in self.condition_specs]
        for spec in self.conditions:
            if not isinstance(spec, str):
                raise CgcLensError(f"conditions must hold spec strings, got {spec!r}.")
            parse_condition(spec)
        repeated = sorted({s for s in specs if specs.count(s) > 1})
        if repeated:
            raise CgcLensError(f"Condition specs must not repeat (bits b is the spec int<b>), "
                               f"got {repeated} twice.")
        for spec in self.compare:
            parse_compare(spec)
        for p in self.plans:
            if not isinstance(p, PlanCondition):
                raise CgcLensError(f"plans must hold PlanCondition objects, got {p!r}.")
        names = self.condition_names
        if len(set(names)) != len(names):
            raise CgcLensError(f"Condition names must be unique, got {list(names)}.")
        if not [n for n in names if n != NULL_NAME]:
            raise CgcLensError("Expected at least one compression condition (bits, conditions, "
                               "plans, compare or match_pruning), got none.")
        if self.focus is not None and self.focus not in names:
            raise unknown_name("focus condition", self.focus, names)
        matched = {name for name, _, _ in self.matched}
        base = tuple(n for n in names if n not in matched)
        match = self.match_resolved
        if isinstance(match, int) and not isinstance(match, bool):
            check_bits(match)
        elif match in {parse_compare(spec)[0] for spec in self.compare}:
            raise CgcLensError(f"match_pruning cannot name the compared checkpoint "
                               f"{match!r}: match to bits or a plan's condition.")
        elif isinstance(match, str) and match not in base:
            raise unknown_name("condition to match pruning to", match, base)
        elif match is not None and not isinstance(match, str):
            raise CgcLensError(f"match_pruning must be bits (int), a condition name, 'auto' or "
                               f"None, got {match!r}.")

    @property
    def thresholds(self) -> SurvivalThresholds:
        """The activity and taxonomy thresholds as one object."""
        return SurvivalThresholds(active_rate=self.active_rate, survived=self.survived,
                                  damaged=self.damaged)

    @property
    def match_resolved(self) -> int | str | None:
        """``match_pruning`` with "auto" resolved against the conditions asked for.

        Example:
            >>> SurvivalConfig(bits=(8, 4)).match_resolved, SurvivalConfig().match_resolved
            ('RTN INT4', 'RTN INT6')
            >>> SurvivalConfig(conditions=("nf4",)).match_resolved is None
            True
        """
        if self.match_pruning != MATCH_AUTO:
            return self.match_pruning
        rtn = {int(spec[3:]): name for name, spec in self.condition_specs
               if spec[:3] == "int" and spec[3:].isdigit()}
        return rtn.get(6, rtn[min(rtn)]) if rtn else None

    @property
    def match_target(self) -> str | None:
        """Name of the condition ``match_pruning`` matches to (``None`` if no matching)."""
        match = self.match_resolved
        if match is None:
            return None
        return rtn_name(match) if isinstance(match, int) else match

    @property
    def condition_specs(self) -> tuple[tuple[str, str], ...]:
        """``(name, spec)`` of the conditions given by spec, in order: ``bits`` (named
        "RTN INT<b>", spec int<b>), then ``conditions`` (named by their spec).

        Example:
            >>> SurvivalConfig(bits=(8,), conditions=("nf4",), match_pruning=None).condition_specs
            (('RTN INT8', 'int8'), ('nf4', 'nf4'))
        """
        return tuple((rtn_name(b), f"int{b}") for b in self.bits) + \
            tuple((spec, spec) for spec in self.conditions)

    @property
    def matched(self) -> tuple[tuple[str, str, str | None], ...]:
        """``(name, target name, target spec)`` of every matched-pruning condition: each
        ``matched:<spec>`` of ``conditions``, then ``match_pruning``'s. The target spec is
        None for a target given only by name (a plan's)."""
        by_spec = {spec: name for name, spec in self.condition_specs}
        out = []
        for spec in self.conditions:
            target = parse_condition(spec)[1].match
            if target is not None:
                out.append((spec, by_spec.get(target, target), target))
        match = self.match_resolved
        if match is not None:
            bits = isinstance(match, int)
            target = f"int{match}" if bits else dict(self.condition_specs).get(
                match)  # type: ignore[arg-type]
            out.append((f"magnitude matched {self.match_target}", self.match_target, target))
        return tuple(out)

    def spec_of(self, name: str) -> ConditionSpec | None:
        """What the condition ``name`` is, when it was given by spec (else None)."""
        spec = dict(self.condition_specs).get(name)
        return None if spec is None else parse_condition(spec)[1]

    @property
    def needs_calibration(self) -> bool:
        """Whether a condition (or a matched target) needs calibration tokens."""
        specs = [s for _, s in self.condition_specs] + [t for _, _, t in self.matched if t]
        return any(parse_condition(s)[1].calibrated for s in specs)

    @property
    def condition_names(self) -> tuple[str, ...]:
        """Every condition's name, in run order: null, RTN (bits), conditions by spec, plans,
        compared checkpoints, matched pruning."""
        matched = [name for name, _, _ in self.matched]
        names = [NULL_NAME] if self.null else []
        names += [n for n, _ in self.condition_specs if n not in matched]
        names += [p.name for p in self.plans]
        names += [parse_compare(spec)[0] for spec in self.compare]
        return tuple(names + matched)

    @property
    def focus_name(self) -> str:
        """The condition of the fragility and stability analyses (see ``focus``)."""
        if self.focus is not None:
            return self.focus
        names = [n for n in self.condition_names if n != NULL_NAME]
        for name in (rtn_name(6), "int6"):
            if name in names:
                return name
        if self.match_target in names:
            return self.match_target  # type: ignore[return-value]
        rtn = [rtn_name(b) for b in sorted(self.bits, reverse=True)]
        return rtn[len(rtn) // 2] if rtn else names[0]

    @property
    def sae_source(self) -> tuple[str, str | None]:
        """``(release_or_path, sae_id)`` for :func:`cgc_lens.saes.load_sae` (see ``sae``)."""
        return parse_sae(self.sae, self.sae_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (plans as plan dicts, tuples as lists)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SurvivalConfig:
        """Build from :meth:`to_dict`'s form; unknown keys raise with the closest names."""
        return config_from_dict(cls, data)

    @classmethod
    def from_json(cls, path: str | Path) -> SurvivalConfig:
        """Read a JSON config: a path, or the name of a packaged one (``"survival_pythia70m"``).

        Example:
            >>> SurvivalConfig.from_json("survival_pythia70m").model
            'pythia-70m-deduped'
        """
        return cls.from_dict(read_config(path, prefix="survival_"))

    def replace(self, **changes: Any) -> SurvivalConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def parse_sae(spec: str, sae_id: str | None = None) -> tuple[str, str | None]:
    """Split an SAE given as "RELEASE/ID", a folder, or "RELEASE" into (release_or_path, id).

    An existing folder or an embedded release name is taken whole; otherwise the text before the
    first "/" is the release and the rest the id. With ``sae_id`` the spec is used verbatim.

    Example:
        >>> parse_sae("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
        ('gemma-scope-2b-pt-res-canonical', 'layer_12/width_16k/canonical')
        >>> parse_sae("cgc-tiny"), parse_sae("ORG/NAME", "blocks.4.hook_resid_post")
        (('cgc-tiny', None), ('ORG/NAME', 'blocks.4.hook_resid_post'))
    """
    if not isinstance(spec, str) or not spec:
        raise CgcLensError(f"An SAE is a non-empty 'RELEASE/ID' or path, got {spec!r}.")
    if sae_id is not None or spec in EMBEDDED_SAE_DIRS or Path(spec).expanduser().exists():
        return spec, sae_id
    release, _, rest = spec.partition("/")
    return (release, rest or None) if release else (spec, None)


def parse_compare(spec: str) -> tuple[str, Path]:
    """``"NAME=PATH"`` or ``"PATH"`` (named by its basename) → ``(name, path)``. Example:
        >>> parse_compare("/ckpt/tiny-int4"), parse_compare("q8=/m/tiny-q8_0.gguf")
        (('tiny-int4', PosixPath('/ckpt/tiny-int4')), ('q8', PosixPath('/m/tiny-q8_0.gguf')))
    """
    if not isinstance(spec, str) or not spec.strip():
        raise CgcLensError(f"A compared model is 'PATH' or 'NAME=PATH', got {spec!r}.")
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name and rest and not Path(spec).expanduser().exists():
        return name, Path(rest).expanduser()
    path = Path(spec).expanduser()
    return (path.name or str(path)), path
