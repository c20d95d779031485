"""Print cgc-tiny's capability figures (recorded in docs/model_card.md).

(a) eval perplexity (chunked, 128-token blocks of the eval split) against an add-one unigram
    model fitted on the train split, scored on the same positions;
(b) in-context copying: mean loss on the second copy of 64 uniformly random token ids over the
    mean loss on the first copy;
plus per-category eval perplexity and the synthetic-task probes.

Usage:
    python scripts/cgc_tiny_capabilities.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cgc_lens
from cgc_lens.data import token_stream
from cgc_lens.forward.metrics import unigram_perplexity
from cgc_lens.forward.probes import InductionProbe, probe_names, run_probes


def capability_figures() -> dict[str, object]:
    model = cgc_lens.load_model("cgc-tiny")
    blocks = cgc_lens.token_blocks("cgc-tiny", model, block_len=model.cfg.n_ctx, split="eval")
    train = token_stream("cgc-tiny", model, split="train")
    ppl = cgc_lens.perplexity(model, blocks, batch_size=32, progress=False)
    unigram = unigram_perplexity(train, blocks.tokens, d_vocab=model.cfg.d_vocab)
    per_category = {
        c: cgc_lens.perplexity(model, blocks.select(c), batch_size=32, progress=False)
        for c in sorted(set(blocks.categories))
    }
    induction = InductionProbe(n_seqs=64, span=64)(model)
    return {
        "eval_tokens": int(blocks.tokens[:, 1:].numel()),
        "eval_ppl": ppl,
        "unigram_ppl": unigram,
        "ppl_over_unigram": ppl / unigram,
        "copy_ratio": induction["copy_ratio"],
        "first_copy_loss": induction["first_copy_loss"],
        "second_copy_loss": induction["second_copy_loss"],
        "eval_ppl_by_category": per_category,
        "probes": run_probes(model, [p for p in probe_names() if p != "induction"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    figures = capability_figures()
    print(f"(a) eval ppl {figures['eval_ppl']:.2f} vs unigram {figures['unigram_ppl']:.2f}: "
          f"ratio {figures['ppl_over_unigram']:.3f} (required ≤ 0.5) "
          f"on {figures['eval_tokens']:,} tokens")
    print(f"(b) copy ratio {figures['copy_ratio']:.3f} (required ≤ 0.30): first copy "
          f"{figures['first_copy_loss']:.3f} nats, second {figures['second_copy_loss']:.3f}")
    for category, value in figures["eval_ppl_by_category"].items():
        print(f"    eval ppl {category:12s} {value:8.2f}")
    for key, value in figures["probes"].items():
        print(f"    {key:28s} {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
