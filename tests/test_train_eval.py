"""train.py and eval.py: the vocabulary, the block-diffusion mask, exact resumption of training, and the
harness end to end on tiny checkpoints trained for a few steps (resume, torchrun sharding, --data, code
tasks executed behind the opt-in; its refusal: test_sandbox.py)."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import model as M
import tasks
import train
from conftest import ROOT
from tokenizer import load_tokenizer

TINY = ["--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--batch-size", "4", "--warmup", "1",
        "--save-every", "2"]


def run(*args, check=True, env=None):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(out.stderr[-3000:])
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both families trained for 3 steps through the real command line (official-format folders); the
    tests that use it are marked slow."""
    root = tmp_path_factory.mktemp("models")
    for family in ("llada", "sdar"):
        run("train.py", "--family", family, "--out", str(root / family), "--steps", "3", *TINY)
    return root


def test_vocabulary_is_byte_level_bpe_with_both_chat_formats(tmp_path):
    for family, fmt in (("llada", "llada"), ("sdar", "qwen3")):
        tok = train.write_tokenizer(str(tmp_path / family), family)
        assert tok.chat_format == fmt
        q, a = tasks.tiny_problem(__import__("random").Random(0))
        assert tok.decode(tok.encode(q + "\n" + a)) == q + "\n" + a
        assert all(len(tok.decode([i])) == 1 for i in tok.encode("1234567890"))  # digits stay single tokens
        assert len(tok.encode(" marbles")) == 1  # words are merged
    # not an endless draw
    with pytest.raises(SystemExit, match="length 8: 1000 examples in a row do not fit"):
        train.make_batch(tok, "sdar", 0, 0, 2, 8, set())


def test_block_diff_mask_structure():
    m = train.block_diff_mask(8, 4)  # [x_t (0..7) | x_0 (8..15)], blocks {0..3}, {4..7}
    assert m[1, :4].all() and not m[1, 4:8].any() and not m[1, 8:].any()  # noisy block 0: itself only
    assert m[5, 4:8].all() and m[5, 8:12].all() and not m[5, 12:].any()  # noisy block 1: + clean block 0
    assert m[13, 8:16].all() and not m[13, :8].any()                       # clean block 1: clean blocks <= 1
    assert m[9, 8:12].all() and not m[9, 12:].any()                        # clean block 0: itself


def test_noise_is_stratified_and_spares_the_prompt():
    ids, prompt = torch.zeros(16, 50, dtype=torch.long), torch.zeros(16, 50, dtype=torch.bool)
    prompt[:, :10] = True
    x_t, masked, p = train.add_noise(ids, prompt, 7, torch.Generator().manual_seed(0))
    assert not masked[:, :10].any() and (x_t[masked] == 7).all()
    t = sorted(p[:, 0].tolist())
    assert all(i / 16 <= v <= (i + 1) / 16 + 1e-3 for i, v in enumerate(t))  # one noise level per stratum


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_training_resumes_exactly(tmp_path, family, monkeypatch, capsys):
    """Interrupted (Ctrl-C) after the state of step 2 is saved, then the same command: == 4 steps in one go
    (batches depend only on the step). The interruption is one line, not a traceback."""
    common = ["train.py", "--family", family, "--steps", "4", *TINY, "--threads", "1"]
    run(*common, "--out", str(tmp_path / "straight"))
    save = train.save_state

    def save_then_interrupt(folder, net, opt, step, rank):
        save(folder, net, opt, step, rank)
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_state", save_then_interrupt)
    monkeypatch.setattr("sys.argv", common + ["--out", str(tmp_path / "resumed")])
    with pytest.raises(SystemExit) as e:
        train.interrupted(train.main)
    assert e.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == "interrupted; rerun the same command to resume"
    out = run(*common, "--out", str(tmp_path / "resumed")).stdout
    assert "resuming" in out and "at step 2" in out
    a = M.from_pretrained(str(tmp_path / "straight"), device="cpu")
    b = M.from_pretrained(str(tmp_path / "resumed"), device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_trained_folder_is_an_official_checkpoint(trained):
    for family in ("llada", "sdar"):
        folder = str(trained / family)
        cfg = json.load(open(os.path.join(folder, "config.json")))
        assert cfg["model_type"] == family
        net = M.from_pretrained(folder, device="cpu")
        tok = load_tokenizer(folder)
        mask = "<|mdm_mask|>" if family == "llada" else "<|MASK|>"
        assert net.config.mask_token_id == tok.special_ids[mask]
        assert net.config.vocab_size >= tok.vocab_size and net.config.vocab_size % 64 == 0


def last_json(out):
    return json.loads(out.stdout.strip().splitlines()[-1])


def eval_json(*argv):
    """`python eval.py --json ARGV`: its summary, the last line of its output."""
    return last_json(run("eval.py", "--json", *argv))


@pytest.mark.slow
def test_eval_runs_resumes_and_keeps_totals(trained, tmp_path):
    log = str(tmp_path / "s.jsonl")
    args = ["eval.py", "--json", "--model", str(trained / "llada"), "--limit", "6", "--batch-size", "1",
            "--samples", log, "--gen-length", "16", "--block-length", "8", "--out", str(tmp_path / "r.json")]
    first = last_json(run(*args))
    rows = open(log).read().splitlines()
    assert len(rows) == 6
    assert {"id", "output", "extracted", "correct", "nfe", "tokens", "seconds"} <= set(json.loads(rows[0]))
    open(log, "w").write("\n".join(rows[:2]) + "\n")  # interrupted after two samples
    # without --json: the table only, --out still written
    out = run(*[a for a in args if a != "--json"]).stdout
    assert "tokens/forward" in out and not out.strip().splitlines()[-1].startswith("{")
    second = json.load(open(tmp_path / "r.json"))
    assert len(open(log).read().splitlines()) == 6
    for key in ("n", "accuracy", "nfe", "tokens"):
        assert first["rows"][0][key] == second["rows"][0][key]
    assert first["rows"][0]["nfe"] == 16 and json.load(open(tmp_path / "r.json"))["device"] == "CPU"
    # the same log with another setting that keeps the setting's name: refused, and the log is left as it was
    changed = run(*[("16" if a == "8" else a) for a in args], check=False)  # --block-length 8 -> 16
    assert changed.returncode != 0 and "written by another model, data or setting" in changed.stderr
    assert len(open(log).read().splitlines()) == 6


@pytest.mark.slow
def test_eval_sweeps_thresholds_on_sdar(trained, tmp_path):
    res = eval_json("--model", str(trained / "sdar"), "--method", "threshold", "--thresholds", "0.3,0.9",
                    "--limit", "3", "--gen-length", "16", "--samples", str(tmp_path / "s.jsonl"))
    assert [r["setting"] for r in res["rows"]] == ["threshold=0.3", "threshold=0.9"]
    assert set(res["rows"][0]) >= {"task", "method", "setting", "n", "accuracy", "nfe", "tokens",
                                   "tokens_per_forward", "seconds"}


@pytest.mark.slow
def test_eval_under_torchrun_shards_and_merges(trained, tmp_path):
    common = ["--json", "--model", str(trained / "llada"), "--limit", "5", "--batch-size", "1",
              "--gen-length", "16", "--block-length", "8", "--method", "dual-cache"]
    single = last_json(run("eval.py", *common, "--samples", str(tmp_path / "one.jsonl")))
    multi = run("-m", "torch.distributed.run", "--nproc_per_node", "2", "eval.py", *common,
                "--samples", str(tmp_path / "two.jsonl"), env={"OMP_NUM_THREADS": "1"})
    merged = last_json(multi)
    assert merged["world_size"] == 2 and os.path.exists(tmp_path / "two.jsonl.rank1")
    for key in ("n", "accuracy", "nfe", "tokens"):
        assert merged["rows"][0][key] == single["rows"][0][key]


@pytest.mark.slow
def test_eval_real_task_formats_with_local_data(trained, tmp_path):
    data = os.path.join(os.path.dirname(__file__), "fixtures", "tasks")
    res = eval_json("--model", str(trained / "sdar"), "--task", "gsm8k",
                    "--data", os.path.join(data, "gsm8k_test.jsonl"), "--gen-length", "8",
                    "--samples", str(tmp_path / "g.jsonl"))
    assert res["metric"] == "gsm8k_boxed" and res["rows"][0]["n"] == 3
    res = eval_json("--model", str(trained / "llada"), "--task", "humaneval",
                    "--data", os.path.join(data, "humaneval_test.jsonl.gz"), "--gen-length", "8",
                    "--block-length", "8", "--samples", str(tmp_path / "h.jsonl"), "--allow-code-exec")
    statuses = {json.loads(line)["rule"] for line in open(tmp_path / "h.jsonl")}
    assert res["rows"][0]["accuracy"] == 0 and statuses <= {"failed", "timeout"}  # run (and wrong: 3 steps)


@pytest.mark.slow
def test_eval_compares_a_research_method_with_its_counterpart(trained, tmp_path):
    res = eval_json("--model", str(trained / "llada"), "--method", "elastic", "--r", "1", "--limit", "3",
                    "--gen-length", "16", "--samples", str(tmp_path / "e"))
    assert [(r["method"], r["model"]) for r in res["rows"]] == [("baseline", "llada"), ("elastic", "llada")]
    base, new = res["rows"]
    c = new["vs_counterpart"]  # paired over the same 3 problems: the difference of the accuracies
    assert c["n"] == 3 and abs(c["delta"] - (new["accuracy"] - base["accuracy"])) < 1e-9
    assert c["only_method"] - c["only_counterpart"] == round(3 * c["delta"] / 100) and c["ci95"] >= 0
    # with --thresholds the plain counterpart decodes with the same threshold (not one token per step)
    res = eval_json("--model", str(trained / "llada"), "--method", "elastic", "--r", "1", "--limit", "2",
                    "--gen-length", "16", "--thresholds", "0.5", "--samples", str(tmp_path / "t"))
    assert [(r["method"], r["setting"]) for r in res["rows"]] == [("threshold", "threshold=0.5"),
                                                                  ("elastic", "threshold=0.5")]
    out = run("eval.py", "--model", str(trained / "llada"), "--method", "baseline", "--thresholds", "0.5",
              "--limit", "1", "--samples", str(tmp_path / "b"), check=False)
    assert out.returncode != 0 and "use --steps, or --method threshold" in out.stderr
    out = run("eval.py", "--model", str(tmp_path / "missing"), "--method", "rcd", check=False)
    assert out.returncode != 0 and "no such folder" in out.stderr
    out = run("eval.py", "--method", "rcd", "--concentration", "2", check=False)  # would be silently unused
    assert out.returncode != 0 and "give it with --rcd-init dirichlet" in out.stderr


@pytest.mark.slow
def test_eval_elastic_folding_generates_past_the_maximum_length(trained, tmp_path):
    """--budget: a generation window longer than the checkpoint's maximum length (1,024) runs with every
    forward within the budget; the budget is part of the setting, so a log written with another is refused."""
    args = ["eval.py", "--json", "--model", str(trained / "llada"), "--method", "elastic", "--no-compare",
            "--limit", "2", "--gen-length", "1040", "--block-length", "16", "--steps", "65", "--r", "1",
            "--samples", str(tmp_path / "f")]
    res = last_json(run(*args, "--budget", "200"))
    assert res["rows"][0]["n"] == 2 and res["rows"][0]["nfe"] == 65
    out = run(*args, "--budget", "300", check=False)
    assert out.returncode != 0 and "written by another model, data or setting" in out.stderr
    plain_args = [("baseline" if a == "elastic" else a) for a in args]
    plain = run(*plain_args, "--samples", str(tmp_path / "p"), check=False)
    assert plain.returncode != 0 and "exceed the model's maximum of 1024 positions" in plain.stderr


def test_paired_difference_and_its_interval():
    import eval as E
    base = {"a": True, "b": False, "c": False, "d": True}
    new = {"a": True, "b": True, "c": False, "d": False, "e": True}  # e: not in the counterpart's run
    c = E.paired(base, new)  # differences 0, +1, 0, -1: mean 0, sample variance 2/3
    assert c["n"] == 4 and c["delta"] == 0.0 and c["only_method"] == 1 and c["only_counterpart"] == 1
    assert abs(c["ci95"] - 100 * 1.96 * (2 / 3 / 4) ** 0.5) < 1e-9
    assert E.paired({"a": False, "b": False}, {"a": True, "b": True}) == {
        "n": 2, "delta": 100.0, "ci95": 0.0, "only_method": 2, "only_counterpart": 0}


def test_dirichlet_concentration_is_part_of_the_rcd_setting_only():
    """A log is tied to the knobs its run used: the concentration for an rcd run with the Dirichlet start,
    nothing for its counterpart (whose SeqD log must stay reusable) or for the other starts."""
    import argparse
    import eval as E
    args = argparse.Namespace(seed=0, task="tiny", batch_size=16)
    s = dict(method="rcd", family="llada", gen_length=8, block_length=8, name="steps=8", temperature=0.0,
             cache=None, t_res=1.0, rcd_init="dirichlet", concentration=1.0)
    fp = lambda **kw: E.fingerprint([], {**s, **kw}, args, torch.float32)
    assert fp() != fp(concentration=0.5)
    assert fp(rcd_init="zero") == fp(rcd_init="zero", concentration=0.5)
    assert fp(method="threshold") == fp(method="threshold", concentration=0.5)
    assert fp(method="threshold") == fp(method="threshold", rcd_init="zero")
    # --alpha-scale likewise: in an rcd setting only when it is not the paper's 1
    assert fp() == fp(alpha_scale=1.0) != fp(alpha_scale=10.0)
    assert fp(method="threshold") == fp(method="threshold", alpha_scale=10.0)


def test_elastic_layout_knobs_are_part_of_the_setting_only_when_changed():
    """Logs of the paper's layout, written before --sampler / --no-terminal / --window existed, stay valid;
    a run with any of them changed gets a setting of its own."""
    import argparse
    import eval as E
    args = argparse.Namespace(seed=0, task="tiny", batch_size=16)
    s = dict(method="elastic", family="llada", gen_length=8, block_length=8, name="steps=8", temperature=0.0,
             cache=None, r=4, budget=None, positions="original", sampler="stride", terminal=True, window=0)
    fp = lambda **kw: E.fingerprint([], {**s, **kw}, args, torch.float32)
    without = {k: v for k, v in s.items() if k not in E.ELASTIC_LAYOUT}
    assert fp() == E.fingerprint([], without, args, torch.float32)  # as before the knobs existed
    assert len({fp(), fp(window=16), fp(sampler="random"), fp(terminal=False), fp(r=2)}) == 5


@pytest.mark.slow
def test_eval_rcd_reports_its_residual_weight(trained, tmp_path):
    res = eval_json("--model", str(trained / "llada"), "--method", "rcd", "--no-compare", "--limit", "2",
                    "--thresholds", "0.5", "--gen-length", "8", "--block-length", "8",
                    "--samples", str(tmp_path / "r.jsonl"))
    alphas = [json.loads(line)["alpha"] for line in open(tmp_path / "r.jsonl")]
    assert len(alphas) == 2 and 0 < res["rows"][0]["alpha_mean"] == sum(alphas) / 2 <= 1


RCD = ["eval.py", "--method", "rcd"]
BAD_RESIDUAL_FLAGS = [
    (RCD + ["--alpha-scale", "-1"], "--alpha-scale -1.0: must be >= 0"),
    (RCD + ["--t-res", "0"], "--t-res 0.0: must be > 0"),
    (RCD + ["--rcd-source", "reference"],
     "--rcd-source reference: give the reference model with --reference"),
    (RCD + ["--reference", "models/tiny-llada", "--rcd-init", "zero"],
     "--reference with --rcd-init zero: the reference model is for"),
    (["train_residual.py", "seqd", "--base", "models/tiny-llada", "--alpha-scale", "2", "--out", "unused"],
     "--alpha-scale 2.0: only for the rcd stage"),
]


@pytest.mark.parametrize("flags, message", BAD_RESIDUAL_FLAGS)
def test_residual_weight_flags_are_refused_in_one_line(flags, message):
    out = run(*flags, check=False)
    assert out.returncode != 0 and out.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in out.stderr


def test_table_speaks_plainly(capsys):
    """Whole model names, the counterpart named as such (RCD's: SeqD), no None knobs, a legend of the columns,
    the paired comparison in the same words, and a text chart with one letter per (model, method)."""
    import argparse
    import eval as E
    row = lambda model, method, setting, acc, tpf: dict(
        model=model, method=method, setting=setting, n=10, accuracy=acc, nfe=5.0, tokens=30.0,
        tokens_per_forward=tpf, ms_per_forward=2.0, seconds=1.0)
    rows = [row("tiny-llada-seqd-with-a-long-name", "threshold", "threshold=0.5", 80.0, 4.0),
            row("tiny-llada-seqd-with-a-long-name", "threshold", "threshold=0.9", 90.0, 3.0),
            row("tiny-llada-rcd", "rcd", "threshold=0.5", 70.0, 5.0),
            row("tiny-llada-rcd", "rcd", "threshold=0.9", 95.0, 3.5)]
    runs = [("seqd", "threshold"), ("rcd", "rcd")]
    name = E.counterpart_name(runs, rows, "rcd")
    labels = E.labels_for(rows, name)
    assert name == "SeqD" and labels == ["SeqD (counterpart)"] * 2 + ["rcd"] * 2
    header = dict(family="llada", device="CPU", dtype="float32", gen_length=56, block_length=56,
                  metric="gsm8k_hash", knobs={"r": 4, "budget": None, "window": 0, "sampler": "random"})
    E.print_table(rows, labels, header, argparse.Namespace(batch_size=50))
    correct = {runs[0]: {"threshold=0.5": {"a": True, "b": False}, "threshold=0.9": {"a": True, "b": True}},
               runs[1]: {"threshold=0.5": {"a": True, "b": True}, "threshold=0.9": {"a": True, "b": True}}}
    print("\n".join(E.compare(rows, name, correct)))
    E.chart(rows, labels)
    out = capsys.readouterr().out
    assert "tiny-llada-seqd-with-a-long-name  SeqD (counterpart)  threshold=0.5" in out
    assert "None" not in out and "window" not in out and ", r 4, sampler random)" in out  # changed knobs only
    for words in ("forwards  ", "tokens/forward  ", "ms/forward  ", "the number after '####'", "B = rcd",
                  "rcd - SeqD at threshold=0.5: +50.0", "only with SeqD: 0", "A = SeqD (counterpart)"):
        assert words in out
    chart = out[out.index("accuracy against tokens per forward"):].splitlines()
    assert chart[1].startswith("  95.0% |") and chart[1].endswith("B")  # the best point, top right...
    assert chart[10].startswith("  70.0% |") and chart[10].endswith("B")  # ... and the worst, bottom right


def test_help_describes_every_method_and_groups_the_flags(capsys):
    import eval as E
    with pytest.raises(SystemExit):
        E.parse_args(["--help"])
    out = capsys.readouterr().out
    for name, fn in E.METHODS.items():
        assert f"  {name}" in out and fn.__doc__.strip().splitlines()[0] in out
    beyond = re.findall(r"^  (--[a-z-]+)", out[out.index("beyond the paper:"):out.index("output:")], re.M)
    assert beyond == ["--rcd-init", "--concentration", "--rcd-source", "--alpha-scale", "--anatomy",
                      "--remask", "--delta", "--sampler", "--no-terminal", "--window",
                      "--positions"]  # not --t-res, --r, --budget
    assert "rcd: models/tiny-sdar-rcd" in out and "no --thresholds: 8,4,2" in out  # the per-method defaults
    with pytest.raises(SystemExit, match="--steps 8,x: expected comma-separated int values"):
        E.check_args(E.parse_args(["--steps", "8,x"]))


def test_rcd_default_is_the_fixed_quota_steps_sweep_on_the_sdar_pair():
    """python eval.py --method rcd: the SDAR-format pair in the blocks of 32 it was trained with, at 8, 4 and
    2 steps per block (a fixed quota, no threshold), against SeqD decoded the same way, on all 500
    problems."""
    import eval as E
    args = E.check_args(E.parse_args(["--method", "rcd"]))
    assert os.path.relpath(args.model, ROOT) == os.path.join("models", "tiny-sdar-rcd")
    assert args.sweep == ([8, 4, 2], [None]) and args.block_length is None  # SDAR: the checkpoint's 32
    assert args.limit is None and args.task == "tiny" and args.rcd_init is None and args.reference is None
    (seqd, counterpart), (rcd, method) = E.plan(args)
    assert (os.path.basename(seqd), counterpart) == ("tiny-sdar-seqd", "baseline")
    assert (rcd, method) == (args.model, "rcd")
    assert len(tasks.load_records("tiny")[0]) == 500
    # the threshold view keeps the settings RESULTS.md logged: no steps, SeqD by the same threshold rule
    args = E.check_args(E.parse_args(["--method", "rcd", "--thresholds", "0.3,0.5"]))
    assert args.sweep == ([None], [0.3, 0.5]) and E.plan(args)[0][1] == "threshold"
    # another checkpoint keeps the paper's decoding (one token per step) unless told otherwise
    args = E.check_args(E.parse_args(["--method", "rcd", "--model", "models/tiny-llada-rcd"]))
    assert args.sweep == ([None], [None]) and args.block_length is None


def test_anatomy_counts_a_hand_made_run():
    """Blocks of 2 after a 2-token prompt, gold answer [5, 6, 7, 8]: step 1 commits column 2 (right; the first
    forward of block 0), step 2 column 3 (wrong: the root error), step 3 columns 4 and 5 (the first forward of
    block 1; column 5 wrong). Alpha is read where a masked position of the block being decoded survives a
    step: column 3 after step 1 (a uniform prediction: alpha 1), not columns 4-5 (the next block)."""
    import eval as E
    M, V = 9, 16
    canvases = [[0, 0, M, M, M, M], [0, 0, 5, M, M, M], [0, 0, 5, 1, M, M], [0, 0, 5, 1, 7, 2]]
    sure = torch.full((V,), -1e4).index_fill(0, torch.tensor([0]), 0.0)  # one-hot: alpha 0
    uncertain = {3}

    def forward(model, ids, cache_start=0, **kw):
        return torch.stack([torch.zeros(V) if c in uncertain else sure for c in range(ids.shape[1])])[None]

    a = E.Anatomy([[5, 6, 7, 8]], "llada", 2, M)
    watched = a.wrap(forward)
    for before, after in zip(canvases, canvases[1:]):
        watched(None, torch.tensor([before]))
        a.on_step(torch.tensor([after]))
        uncertain.clear()
    c = a.counts[0]
    assert (c["tokens"], c["tokens_first"], c["errors"], c["errors_first"], c["root"], c["root_first"]) == \
        (4, 3, 2, 1, 1, 0)
    assert (c["survived"], c["alpha_high"]) == (1, 1) and c["alpha_sum"] == pytest.approx(1.0, abs=1e-5)
    line = E.anatomy_line("x", c)
    assert "committed 75.0 % of the 4 answer tokens, 50.0 % of the 2 errors and 0.0 % of the 1 root" in line


@pytest.mark.slow
def test_eval_anatomy_counts_every_committed_token_and_changes_no_answer(trained, tmp_path):
    """16 LLaDA tokens in blocks of 8 at one token per step: each block's first forward commits one of its 8
    answer tokens and leaves 7, 6, ..., 0 masks behind (28 survivors a block); the answers are those of the
    run without --anatomy, whose log a run with it completes with the counts."""
    args = ["eval.py", "--json", "--model", str(trained / "llada"), "--method", "rcd", "--compare", "same",
            "--limit", "3", "--gen-length", "16", "--block-length", "8",
            "--samples", str(tmp_path / "a.jsonl")]
    plain = last_json(run(*args))
    res = last_json(run(*args, "--anatomy"))
    for before, after in zip(plain["rows"], res["rows"]):
        a = after.pop("anatomy")
        assert (a["tokens"], a["tokens_first"], a["survived"]) == (3 * 16, 3 * 2, 3 * 2 * 28)
        assert a["errors_first"] <= a["errors"] <= a["tokens"] and a["root_first"] <= a["root"] <= a["errors"]
        assert 0 <= a["alpha_high"] <= a["survived"] and 0 <= a["alpha_sum"] <= a["survived"]
        same = ("accuracy", "nfe", "tokens")
        assert {k: before[k] for k in same} == {k: after[k] for k in same}
    out = run("eval.py", "--method", "elastic", "--anatomy", check=False)
    assert out.returncode != 0
    assert out.stderr.strip().startswith("--anatomy: for --method baseline, threshold, rcd")
