"""Progress bars: every long step of a study writes a bar to stderr whose description names its
stage, condition or probe; ``quiet()``, ``set_progress(False)``, ``CGC_LENS_PROGRESS=0`` and a
config's ``progress=False`` each turn every bar off, and no bar changes a number."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from cgc_lens.adaptive import AdaptiveTrainConfig
from cgc_lens.adaptive.data import StudyData
from cgc_lens.adaptive.evaluate import LabelledTokens
from cgc_lens.analysis.density import DensityConfig
from cgc_lens.analysis.evolution import EvoConfig
from cgc_lens.data import TokenBlocks
from cgc_lens.forward.probes import run_probes
from cgc_lens.progress import (
    Stages,
    progress_bar,
    progress_enabled,
    progress_scope,
    quiet,
    set_progress,
)
from cgc_lens.studies.adaptive import AdaptiveStudyConfig, run_adaptive
from cgc_lens.studies.capability import CapabilityConfig, run_capability
from cgc_lens.studies.capability.result import METHODS
from cgc_lens.studies.survival import SurvivalConfig, run_survival
from conftest import make_tiny_model

# tqdm's text bar: "desc:  40%|####      | 2/5 [...]"
BAR = re.compile(r"(?:^|\r)([^\r\n]*?): +\d+%\|")


def _descriptions(err: str) -> set[str]:
    """The descriptions of every bar line tqdm wrote to ``err``."""
    return {m.group(1).strip() for m in BAR.finditer(err)}


@pytest.fixture(autouse=True)
def _library_switch_on():
    """Each test starts with the library's switch on and leaves it as it found it."""
    before = progress_enabled()
    set_progress(True)
    yield
    set_progress(before)


def _blocks(n: int, seed: int, cats=("prose", "code", "maths")) -> TokenBlocks:
    tokens = torch.randint(0, 61, (n, 32), generator=torch.Generator().manual_seed(seed))
    return TokenBlocks(
        tokens=tokens,
        categories=tuple(cats[i % len(cats)] for i in range(n)),
        starts=torch.arange(n) * 32,
        source="random",
        split="x",
        seed=seed,
        stream_len=n * 32,
    )


CAPABILITY = CapabilityConfig(
    model="random-tiny",
    saes="train",
    d_sae=32,
    k=4,
    sae_max_steps=5,
    sae_batch_size=64,
    density=DensityConfig(n_pairs=200),
    evo=EvoConfig(
        generations=2, offspring=4, survivors_per_stage=(2, 1), tokens_per_stage=(64, 192)
    ),
    probes=("induction",),
    survival_retentions=(0.75, 0.5),
    survival_tokens=256,
    bootstrap_resamples=99,
)


def _capability(config: CapabilityConfig):
    return run_capability(
        config, model=make_tiny_model(), calibration=_blocks(24, 0), evaluation=_blocks(12, 1)
    )


def test_capability_run_shows_every_stage_and_probe_and_quiet_shows_none(capsys):
    capsys.readouterr()
    loud = _capability(CAPABILITY)
    seen = _descriptions(capsys.readouterr().err)
    stages = {
        f"capability: {s}"
        for s in (
            "load model and tokens",
            "per-head SAEs",
            "calibration pass, density, Wanda",
            "head ablation",
            "Theorem 1 prune sweep",
            "allocations, CGC-F",
            "evaluate allocations, probes",
        )
    }
    inner = {
        "read sites",
        "train SAEs",
        "calibration",
        "zero-ablation",
        "prune sweep",
        "CGC-F",
        "evaluate allocations",
    }
    probes = {f"probes {m}: induction" for m in METHODS}
    assert stages | inner | probes <= seen, sorted(stages | inner | probes - seen)

    with quiet():
        silent = _capability(CAPABILITY)
    assert capsys.readouterr().err.count("%|") == 0
    assert progress_enabled()  # quiet() put the switch back
    # a bar never changes a number: the same table, bit for bit
    pd.testing.assert_frame_equal(loud.table(), silent.table(), check_exact=True)
    assert (loud.density.density == silent.density.density).all()


def _survival(eval_tokens: int = 0, **config):
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 61, (16, 16), generator=gen)
    evals = torch.randint(0, 61, (eval_tokens // 16, 16), generator=gen) if eval_tokens else None
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=32, d_sae=64, k=6, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post")
        )
    )
    cfg = SurvivalConfig(
        **{
            "allow": ("baseline-perplexity",),  # a random untrained model: worse than unigram
            "batch_size": 4,
            "n_shards": 4,
            "active_rate": 0.0,
            "fragility_folds": 2,
            "match_pruning": None,
            "bits": (8, 4),
            "eval_tokens": eval_tokens,
            **config,
        }
    )
    return run_survival(cfg, model=make_tiny_model(), sae=sae, tokens=tokens, eval_tokens=evals)


def test_survival_sweep_names_the_condition_streamed(capsys):
    capsys.readouterr()
    result = _survival()
    seen = _descriptions(capsys.readouterr().err)
    names = [c.name for c in result.conditions]
    assert names and all(f"survival: {n}" in seen for n in names), (names, seen)
    assert "survival: reference" in seen
    set_progress(False)
    _survival()
    assert capsys.readouterr().err.count("%|") == 0
    set_progress(True)
    _survival(progress=False)  # the config's own switch
    assert capsys.readouterr().err.count("%|") == 0


def test_survival_perplexities_name_the_condition(capsys):
    """The per-condition perplexity step shows a bar naming the condition it evaluates."""
    capsys.readouterr()
    result = _survival(eval_tokens=64)
    seen = _descriptions(capsys.readouterr().err)
    named = [c.name for c in result.conditions if c.name != "null"]
    assert named and all(f"perplexity: {n}" in seen for n in named), (named, seen)


def _labelled(n: int, seed: int) -> LabelledTokens:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 61, (n, 16), generator=gen)
    cats = ("fiction", "code", "speech")
    return LabelledTokens(tokens=tokens, labels=tuple(cats[i % 3] for i in range(n)))


def test_adaptive_run_names_its_stages_and_quiet_shows_none(capsys):
    gen = torch.Generator().manual_seed(0)
    data = StudyData(
        train=torch.randint(0, 61, (32, 16), generator=gen),
        eval=torch.randint(0, 61, (8, 16), generator=gen),
        probes={"toy": (_labelled(48, 1), _labelled(24, 2))},
    )
    cfg = AdaptiveStudyConfig(
        model="random-tiny",
        model_batch_size=8,
        train=AdaptiveTrainConfig(steps=4, batch_size=8, log_every=2),
    )
    capsys.readouterr()
    loud = run_adaptive(cfg, model=make_tiny_model(), data=data)
    seen = _descriptions(capsys.readouterr().err)
    want = {
        "adaptive: load model",
        "adaptive: read tokens",
        "adaptive: train compressors",
        "adaptive: evaluate quality",
        "adaptive: probing toy",
        "train compressors",
        "evaluate sites",
        "SAE quality",
        "pool features",
    }
    assert want <= seen, sorted(want - seen)
    with quiet():
        silent = run_adaptive(replace(cfg), model=make_tiny_model(), data=data)
    assert capsys.readouterr().err.count("%|") == 0
    pd.testing.assert_frame_equal(loud.metrics, silent.metrics, check_exact=True)


def test_run_probes_names_each_probe(tiny_model, capsys):
    capsys.readouterr()
    out = run_probes(tiny_model, ["induction"], desc="probes dense")
    assert "probes dense: induction" in _descriptions(capsys.readouterr().err)
    assert out == run_probes(tiny_model, ["induction"], progress=False)
    assert capsys.readouterr().err == ""


def test_stages_name_the_running_stage_and_close_after_the_last(capsys):
    capsys.readouterr()
    stages = Stages(("load", "train", "evaluate"), desc="study")
    assert stages.running == "load" and stages.bar.total == 3
    for _ in range(3):
        stages.next()
    err = capsys.readouterr().err
    assert stages.running is None and stages.bar.n == 3
    assert stages.bar.disable  # tqdm marks a closed bar disabled
    # each stage's description was written, in order, and the finished bar was cleared
    firsts = [err.index(f"study: {s}:") for s in ("load", "train", "evaluate")]
    assert firsts == sorted(firsts)
    with quiet():
        assert Stages(("a",), desc="x").bar.disable
        assert list(progress_bar(range(3), desc="y")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_environment_variable_turns_every_bar_off():
    code = (
        "from cgc_lens.progress import progress_enabled, progress_bar; "
        "print(progress_enabled(), progress_bar(desc='x').disable)"
    )
    for value, expected in (("0", "False True"), ("off", "False True"), ("1", "True False")):
        env = {**os.environ, "CGC_LENS_PROGRESS": value, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert out == expected, (value, out)


def _log_under_a_bar(scope) -> None:
    """Emit a log record while a bar is drawn, inside ``scope``."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # the console handler a command sets up
    root.addHandler(handler)
    try:
        with scope:
            bar = progress_bar(total=3, desc="long step")
            bar.update(1)
            logging.getLogger("cgc_lens.test").warning("a log line")
            bar.close()
    finally:
        root.removeHandler(handler)


def test_progress_scope_prints_logs_above_the_bar_or_turns_bars_off(capsys):
    capsys.readouterr()
    _log_under_a_bar(contextlib.nullcontext())  # no redirection: into the bar's line
    err = capsys.readouterr().err
    assert re.search(r"long step: [^\r\n]*\]a log line", err), repr(err)
    _log_under_a_bar(progress_scope(True))  # the bar is cleared, the record gets its own line
    err = capsys.readouterr().err
    assert "long step" in err and re.search(r"(^|[\r\n])a log line\n", err), repr(err)
    assert not re.search(r"\]a log line", err)
    _log_under_a_bar(progress_scope(False))
    assert capsys.readouterr().err == "a log line\n"


def test_saving_a_results_folder_names_its_stage(tmp_path, capsys):
    """Writing a results folder shows a stage bar (results, figures, report, seal)."""
    capsys.readouterr()
    result = _survival()
    result.save(tmp_path / "run")
    seen = _descriptions(capsys.readouterr().err)
    assert {"saving run: figures", "saving run: report"} <= seen, seen
    set_progress(False)
    result.save(tmp_path / "quiet")
    assert capsys.readouterr().err.count("%|") == 0


@pytest.mark.skipif(not hasattr(os, "fork"),
                    reason="POSIX only: the lock at stake is shared with forked children, and "
                           "this platform has no os.fork")
@pytest.mark.parametrize("ours", [True, False])
def test_a_child_killed_holding_the_bar_lock_does_not_block_the_parent(ours):
    """A forked child that dies holding the bars' lock (SIGKILL while it makes a bar, as a
    killed save does) leaves the parent's bars free; tqdm's own lock, a semaphore forked
    children share, stays taken (the control case)."""
    import threading

    from tqdm import tqdm as plain_tqdm

    from cgc_lens import progress

    cls = progress.tqdm if ours else type("PlainBar", (plain_tqdm,), {})
    if not ours:
        cls.set_lock(plain_tqdm.get_lock().__class__())  # a fresh default lock (mp + thread)
    pid = os.fork()
    if pid == 0:
        cls.get_lock().acquire()
        os._exit(0)  # dies holding it
    os.waitpid(pid, 0)
    done = threading.Event()

    def make_bar():
        cls.get_lock().acquire()
        cls.get_lock().release()
        done.set()

    threading.Thread(target=make_bar, daemon=True).start()
    assert done.wait(5.0 if ours else 1.0) is ours
    if ours:  # and a bar of the library opens and closes
        with progress.progress_bar(range(3), desc="after", enabled=False) as bar:
            assert sum(bar) == 3
