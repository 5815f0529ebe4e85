"""experiments/: the one-off experiments behind RESULTS.md. rcd_levers.py's first-forward rule must leave
eval.py's decoding alone when off, commit exactly K tokens in the first forward of every block when on
(both decoders), and restore decode.py's commit rules; its loss probe must feed the residual."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import rcd_levers  # noqa: E402

import decode  # noqa: E402
import eval as E  # noqa: E402
import model as model_lib  # noqa: E402
import tasks  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

MODELS = os.path.join(ROOT, "models")
LLADA_PAIR = ["--model", os.path.join(MODELS, "tiny-llada-rcd"), "--compare",
              os.path.join(MODELS, "tiny-llada-seqd"), "--block-length", "56"]


def read_outputs(path):
    return {(r["setting"], r["id"]): r["output"] for r in map(json.loads, open(path))}


def test_schedule_off_gives_eval_answers(tmp_path, capsys):
    """--first-k 0 is eval.py --method rcd with the same flags: the same outputs, problem by problem."""
    flags = LLADA_PAIR + ["--thresholds", "0.5,0.9", "--limit", "6", "--batch-size", "3"]
    rows, correct, outputs = rcd_levers.main(["schedule", "--first-k", "0"] + flags)
    samples = str(tmp_path / "rcd.jsonl")
    args = E.check_args(E.parse_args(["--method", "rcd"] + flags + ["--samples", samples]))
    E.run(args, E.plan(args))
    logged = {"rcd": read_outputs(samples),
              "threshold": read_outputs(str(tmp_path / "rcd-threshold-tiny-llada-seqd.jsonl"))}
    ours = {"rcd": {}, "threshold": {}}  # method -> {(setting, id): output}
    for (_, method, name), by_id in outputs.items():
        ours[method].update({(name, i): text for i, text in by_id.items()})
    assert len(ours["rcd"]) == len(ours["threshold"]) == 2 * 6
    assert ours == logged
    assert [r["setting"] for r in rows] == ["threshold=0.5", "threshold=0.9"] * 2
    assert "rcd - SeqD at threshold=0.5: " in capsys.readouterr().out
    # and the rule on does change the decoding: a first forward of one token costs forwards
    ruled, _, _ = rcd_levers.main(["schedule", "--first-k", "1"] + flags)
    assert [r["setting"] for r in ruled] == ["threshold=0.5,first_k=1", "threshold=0.9,first_k=1"] * 2
    assert all(new["nfe"] > old["nfe"] for new, old in zip(ruled, rows))


def prompts(tok, n=3):
    return [tok.encode_chat(tasks.prompt_messages("tiny", r)) for r in tasks.tiny_records("test")[:n]]


def first_forward_counts(decoder, mask_id, origin, block_length, k):
    """Tokens each (row, block) got in the first step that committed anything in it, decoded under the rule
    with K = k. decoder(forward, on_step) runs a decode; origin: the column where blocks are counted from."""
    fed, seen, counts = [], set(), []

    def forward(model, ids, cache_start=0, **kw):  # what each forward saw: the canvas before its step
        fed.append((cache_start, ids.clone()))
        return decode.model_forward(model, ids, cache_start=cache_start, **kw)

    def on_step(x):
        start, ids = fed[-1]  # the step's forward (store passes come after a step, never between)
        cols = torch.arange(start, start + ids.shape[1])
        new = (ids == mask_id) & (x[:, cols] != mask_id)
        for r in range(x.shape[0]):
            blocks = set(((cols[new[r]] - origin) // block_length).tolist())
            assert len(blocks) <= 1, "a step commits in one block"
            if blocks and (r, *blocks) not in seen:
                seen.add((r, *blocks))
                counts.append(int(new[r].sum()))
    with rcd_levers.first_forward_commits(k):
        decoder(forward, on_step)
    return counts


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_first_forward_commits_exactly_k(family):
    """Under the rule the first forward of every block of every row commits K tokens, in both decoders
    (SDAR's first block holds the end of the prompt); without it (K = 0) the threshold commits more there,
    so the count is the rule's doing. decode.py's own rules are back afterwards."""
    folder = os.path.join(MODELS, f"tiny-{family}-seqd")
    net = model_lib.from_pretrained(folder, "cpu", torch.float32)
    rows = prompts(load_tokenizer(folder))
    plain = decode.commit, decode.commit_dynamic
    L, origin = 8, max(len(p) for p in rows)  # LLaDA: blocks counted from the first generated column
    if family == "sdar":
        L, origin = net.config.block_size, 0  # SDAR: the canvas's block grid

    def decoder(forward, on_step):
        if family == "llada":
            return decode.generate(net, rows, gen_length=16, block_length=L, threshold=0.5, forward=forward,
                                   on_step=on_step)
        return decode.block_generate(net, rows, gen_length=56, block_length=L, denoising_steps=L,
                                     threshold=0.5, forward=forward, on_step=on_step)
    counts = {k: first_forward_counts(decoder, net.config.mask_token_id, origin, L, k) for k in (0, 2)}
    assert len(counts[2]) >= 2 * len(rows)  # every row, at least two blocks
    assert counts[2] == [2] * len(counts[2])
    assert max(counts[0]) > 2
    assert (decode.commit, decode.commit_dynamic) == plain


def test_rule_is_restored_after_an_error():
    plain = decode.commit, decode.commit_dynamic
    with pytest.raises(RuntimeError), rcd_levers.first_forward_commits(1):
        assert decode.commit is not plain[0] and decode.commit_dynamic is not plain[1]
        raise RuntimeError("a decode that fails")
    assert (decode.commit, decode.commit_dynamic) == plain


def test_probe_feeds_the_residual(capsys):
    """The probe's three rows see the same masked tokens; the residual changes the RCD target's loss; the
    table is printed. A reference of another family is refused in one line."""
    llada = ["--model", os.path.join(MODELS, "tiny-llada-rcd"), "--compare",
             os.path.join(MODELS, "tiny-llada-seqd")]
    sums = rcd_levers.main(["probe", *llada, "--reference", os.path.join(MODELS, "tiny-llada"), "--batches",
                            "1", "--batch-size", "4"])
    seqd, on, off = sums.values()
    assert torch.equal(seqd[:, 1], on[:, 1]) and torch.equal(on[:, 1], off[:, 1]) and on[:, 1].sum() > 0
    assert not torch.equal(on[:, 0], off[:, 0]) and not torch.equal(seqd[:, 0], off[:, 0])
    assert torch.isfinite(on).all()
    assert "RCD, residual off" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="must share a family"):
        rcd_levers.main(["probe", *llada, "--reference", os.path.join(MODELS, "tiny-sdar")])
    with pytest.raises(SystemExit, match="--first-k -1"):
        rcd_levers.main(["schedule", "--first-k", "-1"])


def test_runs_as_a_script_from_anywhere(tmp_path):
    """The file finds the repository's scripts by its own location, not the working folder."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "rcd_levers.py"), "schedule",
                          "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "--first-k" in out.stdout and "RESULTS.md" in out.stdout
