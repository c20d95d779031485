"""The survival sweep on 1 rank against 2 ranks (gloo, one thread each), on the same tokens.

Each arm starts its ranks with :func:`cgc_lens.distributed.run_local` (spawned processes on
127.0.0.1, ``torch.set_num_threads(1)`` in each), loads cgc-tiny and its residual SAE, draws the
same feature tokens, resolves the same conditions (the null and RTN at ``--bits``), waits for
every rank, then times :func:`cgc_lens.studies.survival.ranks.sweep`: each rank streams its
share of the token blocks through the reference and every condition, then the float64 sums are
all-reduced. Reported side by side: the sweep's wall clock on 1 rank and on 2 (the slowest
rank, merge included), the speed-up (issue target on a 2-core machine: >= 1.7x), and the
all-reduce's time as a share of the 2-rank sweep (target: < 2%). One run per arm, the arms in
turn; nothing is asserted (an idle machine is needed for the figures to mean anything).

    python benchmarks/bench_distributed.py                  # 64k tokens, null + RTN 8..4
    python benchmarks/bench_distributed.py --tokens 262144 --ranks 1 2
    python benchmarks/bench_distributed.py --smoke          # seconds, every code path (CI)
"""

from __future__ import annotations

import argparse
import json
import time

from common import add_smoke, smoke


def _worker(tokens: int, bits: tuple[int, ...], batch_size: int) -> dict:
    """One rank: load, draw, resolve; then the timed sweep (after a barrier)."""
    from cgc_lens.distributed import gather_objects, world
    from cgc_lens.models import load_model
    from cgc_lens.studies.survival.conditions import resolve_conditions, sae_target, token_sets
    from cgc_lens.studies.survival.config import SurvivalConfig
    from cgc_lens.studies.survival.ranks import sweep

    config = SurvivalConfig(
        tokens=tokens,
        bits=bits,
        match_pruning=None,
        eval_tokens=0,
        batch_size=batch_size,
        progress=False,
    )
    model = load_model(config.model, device="cpu")
    targets = [sae_target(model, None, config.sae_source, config=config, hook=config.hook)]
    feats = token_sets(config, model, {})["features"]
    conds, _ = resolve_conditions(config, model, None)
    gather_objects(None)  # every rank ready: the clocks start together
    t0 = time.perf_counter()
    sums, facts = sweep(config, model, feats, targets, conds, bos=None)
    seconds = time.perf_counter() - t0
    return {
        "rank": world().rank,
        "seconds": seconds,
        "merge": facts.get("merge_seconds", 0.0),
        "tokens": sum(sums.n_tokens),
        "conditions": len(conds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65536, help="feature tokens (default 64k)")
    parser.add_argument(
        "--bits",
        type=int,
        nargs="+",
        default=[8, 7, 6, 5, 4],
        help="RTN bit-widths (with the null: the conditions)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per forward")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    add_smoke(parser)
    args = smoke(parser.parse_args(), tokens=2048, bits=[8], ranks=[1, 2])

    from cgc_lens.distributed import run_local

    rows = []
    for n in args.ranks:
        t0 = time.perf_counter()
        out = run_local(
            _worker, n, args=(args.tokens, tuple(args.bits), args.batch_size), timeout_s=1800
        )
        wall = time.perf_counter() - t0
        sweep_s = max(o["seconds"] for o in out)
        merge_s = max(o["merge"] for o in out)
        rows.append(
            {
                "ranks": n,
                "sweep_s": sweep_s,
                "merge_s": merge_s,
                "merge_pct": 100 * merge_s / sweep_s,
                "wall_with_start_s": wall,
                "tokens": out[0]["tokens"],
                "conditions": out[0]["conditions"],
            }
        )
    base = rows[0]["sweep_s"]
    print(
        f"survival sweep on cgc-tiny: {rows[0]['tokens']:,} tokens x (reference + "
        f"{rows[0]['conditions']} conditions, the null included), one thread per rank (gloo)"
    )
    print(
        f"{'ranks':>5} {'sweep s':>9} {'speed-up':>9} {'all_reduce s':>13} {'% of sweep':>11} "
        f"{'wall incl. start s':>19}"
    )
    for r in rows:
        print(
            f"{r['ranks']:>5} {r['sweep_s']:>9.2f} {base / r['sweep_s']:>8.2f}x "
            f"{r['merge_s']:>13.4f} {r['merge_pct']:>10.2f}% {r['wall_with_start_s']:>19.1f}"
        )
    print("targets (issue #16, 2 idle cores): 2 ranks >= 1.7x faster; all_reduce < 2% of sweep")
    if args.smoke:
        print("(--smoke: tiny sizes, the numbers mean nothing)")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
