"""mask_compress.py: with r >= block_length nothing is dropped and Elastic-dLLM decoding equals plain
decoding token for token (plain, threshold, prefix and dual cache); kept positions carry their original
position ids; the terminal anchor sees only itself and is never decoded; folding keeps the active set
inside its budget while generating past the model's maximum length. Beyond the paper: a near window keeps
the masks right after the block."""
import pytest
import torch

import decode as D
import mask_compress as E
import model as M


@pytest.mark.parametrize("kw", [dict(steps=32), dict(threshold=0.05), dict(cache="prefix", steps=32),
                                dict(cache="dual", threshold=0.05)])
def test_keeping_every_mask_is_plain_decoding(llada, kw):
    prompts = torch.randint(0, 90, (2, 5))
    plain, s0 = D.generate(llada, prompts, gen_length=32, block_length=8, **kw)
    elastic, s1 = E.decode_elastic(llada, prompts, gen_length=32, block_length=8, r=8, **kw)
    assert torch.equal(plain, elastic) and s1["active_max"] == s1["canvas"]


def test_compression_drops_future_masks_and_keeps_original_positions(llada):
    seen = []

    def forward(model, ids, position_ids=None, **kw):
        seen.append(position_ids.clone())
        return model(ids, position_ids=position_ids, **kw)
    feed = E.elastic_feed(r=2)
    D.generate(llada, torch.arange(1, 6), steps=32, gen_length=32, block_length=8, feed=feed, forward=forward)
    # block 0 of 4: prompt 0..4, block 5..12, 2 of block 13..20, 2 of 21..28, block 29..36
    first = seen[0].tolist()
    assert first == list(range(13)) + [13, 20, 21, 28] + list(range(29, 37))
    assert seen[-1].tolist() == list(range(37))  # the last block sees everything (nothing left to drop)
    _, stats = E.decode_elastic(llada, torch.arange(1, 6), gen_length=32, block_length=8, r=2)
    # 5+8+2+2+8, then 5+8+8+2+8 (prompt, history, block, samples, end)
    assert stats["active"] == [25, 31, 37, 37]


def test_random_sampler_is_seeded_and_without_terminal_block(llada):
    a = E.elastic_feed(r=3, sampler="random", seed=1)(torch.zeros(1, 45), 5, 13, 5)
    b = E.elastic_feed(r=3, sampler="random", seed=1)(torch.zeros(1, 45), 5, 13, 5)
    c = E.elastic_feed(r=3, terminal=False)(torch.zeros(1, 45), 5, 13, 5)
    assert torch.equal(a, b) and len(a) == 5 + 8 + 3 * 3 + 8
    assert len(c) == 5 + 8 + 3 * 4  # the last block is sampled like the others


def test_anchor_is_seen_but_sees_only_itself(sdar):
    anchor = E.TerminalAnchor([23], sdar.config.mask_token_id)
    m = anchor.mask(torch.arange(8, 12)[None], torch.ones(1, 4, dtype=torch.bool), None, 0, 4)
    assert m.shape == (1, 1, 5, 5)
    assert m[0, 0, :4, 4].all() and m[0, 0, 4].tolist() == [False] * 4 + [True]
    both = E.TerminalAnchor([23], 0, bidirectional=True).mask(torch.arange(8, 12)[None],
                                                              torch.ones(1, 4, dtype=torch.bool), None, 0, 4)
    assert both[0, 0, 4].all()


def test_anchor_changes_sdar_decoding_and_is_never_decoded(sdar):
    prompts = [torch.randint(0, 75, (n,)) for n in (6, 3)]
    plain, s0 = D.block_generate(sdar, prompts, gen_length=16, stop_ids=[])
    with_anchor, s1 = E.decode_elastic(sdar, prompts, gen_length=16, block_length=4, stop_ids=[])
    assert plain.shape == with_anchor.shape and not torch.equal(plain, with_anchor)
    assert (with_anchor != sdar.config.mask_token_id).all() and s0["nfe"] == s1["nfe"]
    # no anchor: exactly plain decoding (the hook is the only change)
    off, _ = E.decode_elastic(sdar, prompts, gen_length=16, block_length=4, anchor=False, stop_ids=[])
    assert torch.equal(plain, off)
    nocache, _ = E.decode_elastic(sdar, prompts, gen_length=16, block_length=4, stop_ids=[], use_cache=False)
    assert torch.equal(with_anchor, nocache)  # the anchor's K/V never depend on the context: caching is exact


def test_folding_generates_past_the_maximum_within_the_budget(llada):
    assert llada.config.max_seq_len == 128
    with pytest.raises(ValueError, match="exceed the model's maximum"):
        D.generate(llada, torch.arange(1, 11), steps=160, gen_length=160, block_length=16)
    for positions in ("original", "folded"):
        x, stats = E.decode_elastic(llada, torch.arange(1, 11), gen_length=160, block_length=16, r=2,
                                    budget=96, positions=positions, threshold=0.05)
        assert x.shape[1] == 170 > 128 and max(stats["active"]) <= 96
        assert (x != llada.config.mask_token_id).all()
    with pytest.raises(ValueError, match="budget 40"):
        E.decode_elastic(llada, torch.arange(1, 11), gen_length=160, block_length=16, budget=40)


def test_bad_arguments(llada, sdar):
    with pytest.raises(ValueError, match="sampler 'every'"):
        E.elastic_feed(sampler="every")
    # not silently ignored
    with pytest.raises(ValueError, match="compression and folding are for full-sequence"):
        E.decode_elastic(sdar, torch.arange(1, 7), gen_length=8, block_length=4, budget=64)
    for bad in (dict(r=2), dict(window=4), dict(terminal=False), dict(sampler="random")):
        with pytest.raises(ValueError, match="compression and folding are for full-sequence"):
            E.decode_elastic(sdar, torch.arange(1, 7), gen_length=8, block_length=4, **bad)
    with pytest.raises(ValueError, match="window -1"):
        E.elastic_feed(window=-1)


# ---- Beyond the paper: the near window ----


def test_window_keeps_the_masks_right_after_the_block(llada):
    x = torch.zeros(1, 45)  # prompt 0..4, blocks of 8 from 5; decoding block 5..12
    plain = E.elastic_feed(r=2)(x, 5, 13, 5).tolist()
    near = E.elastic_feed(r=2, window=10)(x, 5, 13, 5).tolist()
    # block 13..20 whole, 21..22 of the next, then as before
    assert near == sorted(set(plain) | set(range(13, 23)))
    assert E.elastic_feed(r=2, window=100)(x, 5, 13, 5).tolist() == list(range(45))
    # nothing after the last block
    assert E.elastic_feed(r=2, window=8)(x, 37, 45, 5).tolist() == list(range(45))
    kw = dict(gen_length=32, block_length=8, steps=32)  # a window over everything is plain decoding
    assert torch.equal(E.decode_elastic(llada, torch.arange(1, 6), r=0, window=32, **kw)[0],
                       D.generate(llada, torch.arange(1, 6), **kw)[0])
