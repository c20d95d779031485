"""Every study at its floor: forward work run against forward work needed, per study.

Each study runs on cgc-tiny inside :func:`cgc_lens.forward.ledger.forward_ledger`, which counts
tokens × blocks of every pass and matches every call of the model against the earlier ones
(same input, start and stop layers, output kind, and the same residual out of its last block).
``run / needed`` is the forward work run over the same work without repeats; the repeated
forwards are also given as a share of the calls. Targets (issue 18): run / needed ≤ 1.05 and
repeated forwards ≤ 2% for each study. The exit status is 1 when a study misses a target.

    python benchmarks/bench_ledger.py --smoke          # seconds: tiny runs, nothing asserted
    python benchmarks/bench_ledger.py                  # small runs of the three studies
    python benchmarks/bench_ledger.py --study capability --sites   # where the repeats are
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from common import add_smoke

from cgc_lens.forward.ledger import LedgerReport, forward_ledger

TARGET_RATIO, TARGET_REPEATS = 1.05, 0.02


def _survival(model, smoke: bool) -> None:
    from cgc_lens.studies.survival import SurvivalConfig, run_survival

    size = (
        dict(tokens=1024, eval_tokens=512, match_tokens=512)
        if smoke
        else dict(tokens=8192, eval_tokens=4096, match_tokens=2048)
    )
    run_survival(SurvivalConfig(bits=(8, 4), progress=False, **size), model=model)


def _capability(model, smoke: bool) -> None:
    from cgc_lens.analysis.evolution import EvoConfig
    from cgc_lens.studies.capability import CapabilityConfig, run_capability

    tokens = (1024, 512, 512, (256, 512)) if smoke else (4096, 1024, 2048, (512, 2048))
    cal, ev, surv, stages = tokens
    config = CapabilityConfig(
        calibration_tokens=cal,
        eval_tokens=ev,
        survival_tokens=surv,
        survival_retentions=(0.75, 0.5, 0.25),
        probes=("induction", "arithmetic"),
        retention=0.5,
        progress=False,
        evo=EvoConfig(
            generations=2 if smoke else 6,
            offspring=2 if smoke else 6,
            survivors_per_stage=(2, 1),
            tokens_per_stage=stages,
            progress=False,
        ),
    )
    run_capability(config, model=model)


def _adaptive(model, smoke: bool) -> None:
    from cgc_lens.adaptive.train import AdaptiveTrainConfig
    from cgc_lens.studies.adaptive import AdaptiveStudyConfig, run_adaptive

    config = AdaptiveStudyConfig(
        layers=(1, 2),
        eval_blocks=4 if smoke else 8,
        probe_blocks=32 if smoke else 96,
        progress=False,
        save_weights=False,
        train=AdaptiveTrainConfig(
            steps=4 if smoke else 12, batch_size=8 if smoke else 16, log_every=2 if smoke else 4
        ),
    )
    run_adaptive(config, model=model)


STUDIES = {"survival": _survival, "capability": _capability, "adaptive": _adaptive}


def measure(name: str, model, smoke: bool) -> tuple[LedgerReport, float]:
    """The ledger of one study's run on a copy of ``model``, and its wall seconds."""
    model = copy.deepcopy(model)
    t0 = time.perf_counter()
    with forward_ledger(model) as ledger:
        STUDIES[name](model, smoke)
    return ledger.report(), time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_smoke(parser)
    parser.add_argument(
        "--study",
        choices=list(STUDIES),
        action="append",
        help="the studies to run (repeatable; default: all three)",
    )
    parser.add_argument("--sites", action="store_true", help="print where the repeats are")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from cgc_lens.models import load_model

    model = load_model("cgc-tiny", device="cpu")
    missed = False
    print(
        f"{'study':<12}{'forwards':>9}{'repeats':>9}{'repeat %':>10}{'run/needed':>12}"
        f"{'seconds':>9}"
    )
    for name in args.study or list(STUDIES):
        report, seconds = measure(name, model, args.smoke)
        print(
            f"{name:<12}{report.forwards:>9}{report.repeats:>9}"
            f"{100 * report.repeat_fraction:>9.1f}%{report.ratio:>12.3f}{seconds:>9.1f}"
        )
        if args.sites:
            for site, n in report.repeat_sites.items():
                print(f"    {n:>5}  {site}")
        missed |= report.ratio > TARGET_RATIO or report.repeat_fraction > TARGET_REPEATS
    print(f"targets: run/needed <= {TARGET_RATIO}, repeats <= {100 * TARGET_REPEATS:.0f}%")
    return int(missed and not args.smoke)


if __name__ == "__main__":
    sys.exit(main())
