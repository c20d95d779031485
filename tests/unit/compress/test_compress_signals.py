"""Real SIGINT and SIGTERM, sent at random times into a process running compressed blocks.

A child process runs ``with compressed(...)`` blocks in a loop on a tiny model (several plans,
'copy' and 'swap'); the test sends it bursts of one to three signals at random times, 40 times.
After each burst the child checks, once the interrupt has been handled, that every parameter is
bit-equal to before and the same object, grad mode is unchanged and no block is left open, and
reports a verdict line. The one documented gap (a signal handled exactly on entry to
``__exit__``, or to the retry an interrupted ``__enter__`` makes, where Python runs pending
signal handlers before any ``try`` can catch what they raise) would leave a block open: the
child then calls ``restore_all_`` and reports where the handler's exception was raised; the test
requires every block left open to come from exactly that place (measured: about 1 burst in 130
on a loaded 2-core machine), and the weights back after ``restore_all_``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, signal, sys, time, traceback
sys.path.insert(0, sys.argv[1])
import torch
from conftest import make_tiny_model
from cgc_lens.compress import RTN, LowRank, MagnitudePrune, Plan, Targets, compressed, restore_all_
from cgc_lens.compress.context import _ACTIVE, _Block

ENTRIES = {_Block.__exit__.__code__.co_firstlineno, _Block._retry_close.__code__.co_firstlineno}

class Terminated(Exception):
    pass

armed = False
def on_int(sig, frame):
    if armed:
        raise KeyboardInterrupt
def on_term(sig, frame):
    if armed:
        raise Terminated
signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGTERM, on_term)

model = make_tiny_model(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=11)
params = list(model.parameters())
saved = [p.detach().clone() for p in params]
plans = [Plan.of(RTN(4)), Plan.of(MagnitudePrune(0.5)), Plan.of(RTN(3, group_size=8)),
         Plan.compose(RTN(5), (Targets(names="W_out"), LowRank(0.5)), MagnitudePrune(0.3))]
modes = ["copy", "swap"]
torch.set_grad_enabled(True)
for run in range(int(sys.argv[2])):
    i = 0
    armed = True
    print("ready", flush=True)
    try:
        while True:
            with compressed(model, plans[i % 4], restore=modes[(i // 4) % 2]):
                model.blocks[0].attn.W_Q.sum()
            i += 1
    except (KeyboardInterrupt, Terminated) as err:
        armed = False
        caught = type(err).__name__
        ours = [f for f in traceback.extract_tb(err.__traceback__)
                if f.filename.endswith("context.py")]
        at_entry = bool(ours) and ours[-1].lineno in ENTRIES
    time.sleep(0.02)  # the rest of the burst arrives and is ignored
    verdict = {"caught": caught, "blocks": i, "grad": torch.is_grad_enabled(),
               "stale": len(_ACTIVE.get(model) or []), "at_entry": at_entry}
    if verdict["stale"]:
        restore_all_(model)
    verdict["same_objects"] = all(a is b for a, b in zip(model.parameters(), params))
    verdict["equal"] = all(torch.equal(p.detach().view(torch.int32), s.view(torch.int32))
                           for p, s in zip(params, saved))
    print("verdict " + json.dumps(verdict), flush=True)
"""


def test_random_signals_never_leave_a_weight_changed(tmp_path):
    runs = 40
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    child = subprocess.Popen([sys.executable, str(script), str(TESTS), str(runs)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, child.kill)  # a run takes ~12 s; a hang fails fast
    watchdog.start()
    rng = random.Random(0)
    verdicts = []
    try:
        for _ in range(runs):
            line = child.stdout.readline()
            assert line.strip() == "ready", line + child.stderr.read()
            time.sleep(rng.uniform(0.005, 0.08))
            for _ in range(rng.choice([1, 1, 2, 3])):
                child.send_signal(rng.choice([signal.SIGINT, signal.SIGTERM]))
                time.sleep(rng.uniform(0, 0.002))
            line = child.stdout.readline()
            assert line.startswith("verdict "), line + child.stderr.read()
            verdicts.append(json.loads(line.removeprefix("verdict ")))
        assert child.wait(timeout=60) == 0, child.stderr.read()
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
    bad = [v for v in verdicts if not (v["grad"] and v["equal"] and v["same_objects"])]
    assert not bad, bad
    stale = [v for v in verdicts if v["stale"] > 0]
    print(f"\n{len(verdicts)} signal bursts: {len(stale)} left a block open (then restore_all_),"
          f" {sum(v['blocks'] for v in verdicts)} blocks run")
    # only the documented gap leaves a block open: a handler run on entry to __exit__ (or to the
    # retry of an interrupted __enter__), before its try; anywhere else the close is retried
    assert all(v["at_entry"] for v in stale), stale
