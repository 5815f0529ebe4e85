"""decode.py: the shared pieces against hand-computed cases, and the decoders' properties: batching does
not change results, SDAR's cache is exact, per-sample stopping, determinism, and clear argument errors.
Token-for-token parity with the official implementations is ../shared/parity/check.py's job (CI runs it)."""
import importlib.util
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import decode as D
import model as M
from conftest import ROOT


def test_schedule_spreads_the_remainder_over_the_first_steps():
    k = D.get_num_transfer_tokens(torch.tensor([[True] * 10 + [False] * 3, [True] * 6 + [False] * 7]), 6)
    assert k.tolist() == [[2, 2, 2, 2, 1, 1], [1, 1, 1, 1, 1, 1]]


def test_gumbel_noise_is_identity_at_zero_and_samples_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert D.add_gumbel_noise(logits, 0.0) is logits
    torch.manual_seed(0)
    draws = D.add_gumbel_noise(logits.expand(20000, 3), 1.0).argmax(-1)
    freq = torch.bincount(draws, minlength=3) / 20000
    assert (freq - torch.softmax(logits[0], -1)).abs().max() < 0.02


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_eos_flags_follow_the_official_chained_assignment(temperature):
    """LLaDA's generate.py, confidence_eos_eot_inf: which of EOS (id 1) / EoT (id 2) get confidence 0."""
    eos, eot = 1, 2
    # x0: EOS, EoT, 3
    logits = torch.tensor([[[0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 9.0]]])
    mask, x = torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.long)

    def conf(**flags):
        torch.manual_seed(0)
        x0, c = D.propose(logits.clone(), x, mask, temperature, "low_confidence", torch.float32, eos, eot,
                          **flags)
        return x0[0].tolist(), c[0].tolist()
    x0, c = conf()
    assert all(v > 0.9 for v in c)
    x0, c = conf(logits_eos_inf=True)
    assert x0[0] != eos and c[0] < 0.9  # EOS never proposed
    x0, c = conf(confidence_eos_eot_inf=True)
    if temperature == 0:
        assert x0 == [eos, eot, 3] and c[0] == 0 and c[1] == 0 and c[2] > 0.9
    else:  # the EOS write lands on a separate float64 tensor: only EoT loses its confidence
        assert c[0] > 0 and c[1] == 0 and c[2] > 0


def test_commit_rules():
    inf = float("-inf")
    conf = torch.tensor([[0.2, 0.95, inf, 0.91, 0.5], [0.3, 0.1, inf, inf, 0.2]])
    assert D.commit_topk(conf, [2, 1]).tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]]
    # Fast-dLLM: >= threshold, and always the best mask even below it
    assert D.commit_threshold(conf, 0.91).tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]]
    # SDAR: strictly above threshold if at least quota of them, else top quota
    assert D.commit_dynamic(conf, 0.9, 2).tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 0, 1]]
    assert D.commit_dynamic(conf, 0.91, 2).tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 0, 1]]  # 0.91 not > 0.91
    assert D.commit_dynamic(conf, 0.91, 1).tolist() == [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]



def official_commits(confidence, k, threshold=None):
    """The official commit loops: one torch.topk per row (LLaDA generate.py; Fast-dLLM get_transfer_index)."""
    transfer = torch.zeros_like(confidence, dtype=torch.bool)
    for r in range(confidence.shape[0]):
        idx = torch.topk(confidence[r], int(k[r])).indices
        transfer[r, idx] = True
        if threshold is not None:  # rank 0 always, the others only at or above the threshold
            transfer[r, idx[1:][confidence[r, idx[1:]] < threshold]] = False
    return transfer


def tied_confidences(seed, device="cpu"):
    """(B, T) confidences drawn from a few levels (0 among them, like EOS under confidence_eos_eot_inf), with
    -inf off the masks: ties everywhere, which is where a vectorised top-k can pick other positions."""
    g = torch.Generator().manual_seed(seed)
    B, T, levels = int(torch.randint(1, 9, (), generator=g)), int(torch.randint(2, 80, (), generator=g)), 3
    conf = torch.randint(0, levels, (B, T), generator=g).double() / levels
    conf[torch.rand(B, T, generator=g) < 0.3] = -torch.inf
    conf[:, 0] = 0.0  # at least one mask per row
    return conf.to(device)


def test_commit_rules_break_ties_as_the_official_per_row_topk():
    for seed in range(200):
        conf = tied_confidences(seed)
        n = torch.isfinite(conf).sum(1)
        k = torch.minimum(n, torch.randint(1, 5, n.shape, generator=torch.Generator().manual_seed(seed)))
        assert torch.equal(D.commit_topk(conf, k), official_commits(conf, k))  # per-row counts
        assert torch.equal(D.commit_topk(conf, int(k.min())), official_commits(conf, k.min().expand_as(k)))
        assert torch.equal(D.commit_threshold(conf, 0.6), official_commits(conf, n, threshold=0.6))
        assert torch.equal(D.commit_threshold(conf, 0.6, counts=n.tolist()), D.commit_threshold(conf, 0.6))
        q = int(k.min())
        hot = conf > 0.5
        dyn = torch.where(hot.sum(1, keepdim=True) >= q, hot, official_commits(conf, k.min().expand_as(k)))
        assert torch.equal(D.commit_dynamic(conf, 0.5, q), dyn)


def test_sample_tokens_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    x0, p = D.sample_tokens(logits)
    assert x0.item() == 0 and abs(p.item() - 0.5) < 1e-6
    torch.manual_seed(0)
    draws = torch.stack([D.sample_tokens(logits, 1.0, top_k=2)[0] for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}
    draws = torch.stack([D.sample_tokens(logits, 1.0, top_p=0.7)[0] for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 < 0.7 needs the second token, not the third
    _, p = D.sample_tokens(logits, 1.0, top_k=1)
    assert abs(p.item() - 0.5) < 1e-6  # confidence from the unfiltered softmax


def test_llada_commits_exactly_the_schedule(llada):
    seen = []
    x, stats = D.generate(llada, torch.arange(5), steps=12, gen_length=16, block_length=8,
                          on_step=lambda x: seen.append(int((x == 95).sum())))
    # 8 masks over 6 steps per block: 2, 2, 1, 1, 1, 1
    assert [16 - s for s in seen] == [2, 4, 5, 6, 7, 8, 10, 12, 13, 14, 15, 16]
    assert stats["nfe"] == 12 and (x == 95).sum() == 0


@pytest.mark.parametrize("kw", [dict(), dict(threshold=0.05), dict(cache="prefix"),
                                dict(cache="dual", threshold=0.05),
                                pytest.param(dict(cfg_scale=1.0), marks=pytest.mark.slow),
                                pytest.param(dict(cache="dual", cfg_scale=0.5), marks=pytest.mark.slow)])
def test_llada_batch_equals_one_by_one(llada, kw):
    prompts = torch.randint(0, 90, (3, 6))
    x, stats = D.generate(llada, prompts, steps=16, gen_length=16, block_length=8, **kw)
    for r in range(3):
        xr, sr = D.generate(llada, prompts[r], steps=16, gen_length=16, block_length=8, **kw)
        assert torch.equal(x[r], xr[0]) and stats["nfe_per_sample"][r] == sr["nfe"]


def test_llada_ragged_batch_is_left_padded(llada):
    short, long = [7, 8, 9], [1, 2, 3, 4, 5, 6]
    x, stats = D.generate(llada, [short, long], steps=8, gen_length=8, block_length=8)
    assert x[0, :3].tolist() == [llada.config.eos_token_id] * 3 and x[0, 3:6].tolist() == short
    alone, _ = D.generate(llada, torch.tensor([[94, 94, 94] + short]), steps=8, gen_length=8, block_length=8,
                          attention_mask=torch.tensor([[0, 0, 0, 1, 1, 1]]))
    assert torch.equal(x[0], alone[0]) and stats["gen_start"] == [6, 6]


def test_threshold_decoding_commits_several_tokens_per_step(llada):
    _, slow = D.generate(llada, torch.arange(4), steps=32, gen_length=32, block_length=32)
    _, fast = D.generate(llada, torch.arange(4), gen_length=32, block_length=32, threshold=0.02)
    assert slow["nfe"] == 32 and fast["nfe"] < 32


@pytest.mark.parametrize("kw", [dict(), dict(threshold=0.3), dict(remasking="sequential"),
                                dict(denoising_steps=2)])
def test_sdar_cache_is_exact(sdar, kw):
    prompt = torch.randint(0, 75, (6,))
    a, sa = D.block_generate(sdar, prompt, gen_length=16, block_length=4, stop_ids=[], **kw)
    b, sb = D.block_generate(sdar, prompt, gen_length=16, block_length=4, stop_ids=[], use_cache=False, **kw)
    assert torch.equal(a, b) and sa["nfe"] == sb["nfe"]
    assert sa["prefill_forwards"] == 1 and sa["store_forwards"] == 5 and sb["store_forwards"] == 0


def test_sdar_ragged_batch_equals_one_by_one_with_per_sample_stopping(sdar):
    prompts = [torch.randint(0, 75, (n,)) for n in (3, 9, 6)]
    solo = [D.block_generate(sdar, p, gen_length=20, block_length=4, stop_ids=[]) for p in prompts]
    stop = solo[1][0][0, 9 + 4].item()  # a token sample 1 writes in its second generated block
    solo = [D.block_generate(sdar, p, gen_length=20, block_length=4, stop_ids=[stop]) for p in prompts]
    x, stats = D.block_generate(sdar, prompts, gen_length=20, block_length=4, stop_ids=[stop])
    for r, (xr, sr) in enumerate(solo):
        s, n = stats["gen_start"][r], len(prompts[r])
        assert x[r, s - n:s + 20].tolist() == xr[0, :n + 20].tolist()
        assert stats["gen_tokens"][r] == sr["gen_tokens"][0] and stats["nfe_per_sample"][r] == sr["nfe"]
    assert (solo[1][0] == sdar.config.mask_token_id).any()  # sample 1 stopped early: later blocks stay [MASK]


def test_sampling_is_seeded_and_greedy_ignores_the_seed(sdar, llada):
    p = torch.arange(1, 7)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(D.block_generate(sdar, p, gen_length=12, temperature=1.0, stop_ids=[])[0])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    torch.manual_seed(0)
    g0 = D.generate(llada, p, steps=8, gen_length=8, block_length=8, remasking="random", temperature=0.5)[0]
    torch.manual_seed(0)
    g1 = D.generate(llada, p, steps=8, gen_length=8, block_length=8, remasking="random", temperature=0.5)[0]
    assert torch.equal(g0, g1)
    torch.manual_seed(1)
    a = D.generate(llada, p, steps=8, gen_length=8, block_length=8)[0]
    torch.manual_seed(2)
    assert torch.equal(a, D.generate(llada, p, steps=8, gen_length=8, block_length=8)[0])


@pytest.mark.parametrize("call, words", [
    (lambda m: D.generate(m, [1, 2], gen_length=20, block_length=8),
     "gen_length (20) must be a positive multiple of block_length (8)"),
    (lambda m: D.generate(m, [1, 2], steps=5, gen_length=16, block_length=8),
     "steps (5) must be a positive multiple of the number of blocks (2)"),
    (lambda m: D.generate(m, [1, 95], steps=8, gen_length=8, block_length=8), "contains the mask id 95"),
    (lambda m: D.generate(m, [1, 2], steps=8, gen_length=8, block_length=8, remasking="best"),
     "remasking 'best'"),
    (lambda m: D.generate(m, [1, 2], steps=8, gen_length=8, block_length=8, cache="full"), "cache 'full'"),
    (lambda m: D.generate(m, [1, 2], gen_length=8, block_length=8, threshold=1.5),
     "threshold 1.5 must be in (0, 1]"),
    (lambda m: D.generate(m, list(range(1, 90)) * 2, steps=64, gen_length=64, block_length=64),
     "exceed the model's maximum of 128"),
    (lambda m: D.generate(m, [], steps=8, gen_length=8, block_length=8), "prompt: empty"),
])
def test_llada_bad_arguments(llada, call, words):
    with pytest.raises(ValueError) as e:
        call(llada)
    assert words in str(e.value)


@pytest.mark.parametrize("kw, words", [
    (dict(denoising_steps=5), "0 < denoising_steps (5) <= block_length (4)"),
    (dict(threshold=0.0), "threshold 0.0 must be in (0, 1]"),
    (dict(remasking="random"), "remasking 'random'"),
])
def test_sdar_bad_arguments(sdar, kw, words):
    with pytest.raises(ValueError) as e:
        D.block_generate(sdar, [1, 2, 3], gen_length=8, **kw)
    assert words in str(e.value)


def test_cli_help():
    out = subprocess.run([sys.executable, "decode.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--threshold" in out.stdout and "--show" in out.stdout


class HFLike(torch.nn.Module):
    """What Hugging Face's LLaDA offers decode.py: config.mask_token_id, config.eos_token_id and a forward
    returning an object with `.logits` (no stop_ids, max_seq_len, lm_head, KV cache or positions)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = SimpleNamespace(mask_token_id=inner.config.mask_token_id,
                                      eos_token_id=inner.config.eos_token_id)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.inner(input_ids, attention_mask=attention_mask))


def test_decode_py_alone_drives_a_hugging_face_style_model(llada, tmp_path):
    """decode.py copied alone into an empty folder imports nothing of the project, and with forward=hf_forward
    gives the tokens of our own model on the no-cache path (plain, threshold, guidance, ragged batch)."""
    shutil.copy(os.path.join(ROOT, "decode.py"), tmp_path / "decode.py")
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import decode; "
             "print(sorted({'model', 'tokenizer', 'tasks', 'eval', 'residual', 'mrp'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-c", probe, str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    spec = importlib.util.spec_from_file_location("decode_alone", tmp_path / "decode.py")
    alone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alone)
    hf = HFLike(llada)
    prompts = [torch.randint(0, 90, (n,)) for n in (6, 4)]
    for kw in (dict(steps=16), dict(threshold=0.2), dict(steps=16, cfg_scale=0.5)):
        ours, s_ours = D.generate(llada, prompts, gen_length=16, block_length=8, **kw)
        theirs, s_theirs = alone.generate(hf, prompts, gen_length=16, block_length=8,
                                          forward=alone.hf_forward, **kw)
        assert torch.equal(ours, theirs) and s_ours["nfe_per_sample"] == s_theirs["nfe_per_sample"]
    with pytest.raises(ValueError, match="hf_forward drives the plain path"):
        alone.generate(hf, prompts, gen_length=16, block_length=8, threshold=0.2, cache="dual",
                       forward=alone.hf_forward)


def test_decoder_loops_copy_nothing_to_the_host(llada, sdar, monkeypatch):
    """Per-sample forward counts are added up on the device and the canvas is read once, at the end
    (decode.finish): one .cpu() per generation, none per step."""
    calls, cpu = [], torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: calls.append(1) or cpu(self, *a, **k))
    _, stats = D.generate(llada, [[1, 2, 3], [4, 5]], steps=8, gen_length=8, block_length=8, threshold=0.5)
    assert len(calls) == 1 and stats["nfe"] > 1
    _, stats2 = D.block_generate(sdar, [[1, 2, 3], [4, 5]], gen_length=8, block_length=4, stop_ids=[])
    assert len(calls) == 2 and stats2["nfe"] > 1
    assert len(stats["nfe_per_sample"]) == len(stats2["nfe_per_sample"]) == 2


def test_generation_defaults_come_from_the_model_folder(tmp_path):
    """The flags, else generation_config.json (its steps only with its own lengths), else the family's."""
    args = lambda **kw: SimpleNamespace(**{"gen_length": None, "block_length": None, "steps": None, **kw})
    gen = {"gen_length": 56, "block_length": 8, "steps": 56}
    assert D.lengths(args(), "llada", None, gen) == (56, 8, 56)
    assert D.lengths(args(gen_length=112), "llada", None, gen) == (112, 8, 112)  # one token per step again
    assert D.lengths(args(block_length=56), "llada", None, gen) == (56, 56, 56)
    assert D.lengths(args(), "llada", None, {}) == (128, 32, 128)
    assert D.lengths(args(), "sdar", 4, {}) == (256, 4, 4)
    (tmp_path / "generation_config.json").write_text('{"gen_length": 0}')
    with pytest.raises(SystemExit, match="gen_length must be a positive integer"):
        D.generation_defaults(str(tmp_path))
    for name in os.listdir(os.path.join(ROOT, "models")):  # every embedded model carries its own
        gen = D.generation_defaults(os.path.join(ROOT, "models", name))
        assert gen["gen_length"] == 56 and gen["chat"] and gen["task"] == "tiny"


@pytest.mark.slow
def test_cli_shows_plain_frames_in_a_pipe_and_checks_the_answer():
    """`python decode.py --show` into a pipe: numbered frames without escape codes, the prompt, the decoded
    text and whether the built-in task's answer is right; the embedded model's own lengths by default. A
    prompt unlike anything the model was trained on gets a one-line note instead of silence."""
    question = ("Mia has 46 apples. Each day, if the number is even she gives away half, else she gets 7 "
                "more. How many apples after 4 days?")
    out = subprocess.run([sys.executable, "decode.py", "--prompt", question, "--show"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "\033" not in out.stdout and out.stdout.count("--- step ") == 56
    assert f"prompt: {question}" in out.stdout and "gen 56, block 8, steps 56" in out.stdout
    assert "answer 22: right (the built-in task's answer is 22)" in out.stdout
    out = subprocess.run([sys.executable, "decode.py", "--prompt", "What is the capital of France?",
                          "--gen-length", "8", "--block-length", "8"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "note: this prompt is far from what the model was trained on" in out.stdout
    out = subprocess.run([sys.executable, "decode.py", "--prompt", "hi", "--gen-length", "20"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip() == ("decode.py: gen_length (20) must be a positive "
                                                          "multiple of block_length (8)")
