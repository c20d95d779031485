"""The embedded model meets the capability figures of its card (docs/model_card.md)."""

from cgc_lens import perplexity, token_blocks
from cgc_lens.data import token_stream
from cgc_lens.forward.metrics import unigram_perplexity
from cgc_lens.forward.probes import InductionProbe


def test_eval_perplexity_at_most_half_of_unigram(cgc_tiny):
    blocks = token_blocks("cgc-tiny", cgc_tiny, block_len=128, n_blocks=192, seed=1, split="eval")
    train = token_stream("cgc-tiny", cgc_tiny, split="train")
    ppl = perplexity(cgc_tiny, blocks, batch_size=32, progress=False)
    unigram = unigram_perplexity(train, blocks.tokens, d_vocab=cgc_tiny.cfg.d_vocab)
    assert ppl <= 0.5 * unigram, (ppl, unigram)


def test_in_context_copying(cgc_tiny):
    out = InductionProbe(n_seqs=32, span=64)(cgc_tiny)
    assert out["copy_ratio"] <= 0.30, out


def test_loads_offline_with_tokenizer_and_categories(cgc_tiny):
    assert cgc_tiny.cfg.n_layers >= 4 and cgc_tiny.cfg.n_heads >= 4 and cgc_tiny.cfg.n_ctx >= 128
    assert cgc_tiny.cfg.normalization_type == "LN"
    text = "Call me Ishmael."
    assert cgc_tiny.tokenizer.decode(cgc_tiny.to_tokens(text, prepend_bos=False)[0]) == text
    blocks = token_blocks("cgc-tiny", cgc_tiny, block_len=64, n_blocks=64, split="calibration")
    assert len(set(blocks.categories)) >= 4
