"""train_mrp.py: the KL objective trains the head and leaves the frozen backbone alone; reveals write one
(or a drawn number of) ground-truth tokens per block; the kl diagnostic's zero-residual number is KL(B || A)
recomputed by hand; the command line's bad arguments are one-line errors and --init goes on from a head."""
import argparse
import os
import re

import pytest
import torch

import mrp as R
import train
import train_mrp as T
from conftest import ROOT
from test_mrp import pair  # noqa: F401  (the tiny official-layout MRP checkpoint, loaded once per module)

REVEAL = T.reveal


def masked_batch(n, T_len=16, prompt=4):
    ids = torch.randint(0, 75, (n, T_len))
    pm = torch.zeros_like(ids, dtype=torch.bool)
    pm[:, :prompt] = True
    return ids, pm


@pytest.mark.slow
def test_training_loss_learns_and_does_not_touch_the_backbone(pair):  # noqa: F811
    backbone, _ = pair
    torch.manual_seed(0)
    head = R.MRP(backbone.config, 1)
    head.init_weights()
    before = [p.clone() for p in backbone.parameters()]
    ids, pm = masked_batch(4)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        g = torch.Generator().manual_seed(step % 3)  # three fixed noise draws, so the loss can go down
        loss = T.mrp_loss(backbone, head, ids, pm, g, 4, mrp_steps=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters()))


def test_reveal_one_masked_token_per_block():
    ids = torch.arange(16).repeat(2, 1)
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[0, [1, 2, 9]] = masked[1, [12, 13, 14, 15]] = True
    x = torch.where(masked, 99, ids)
    new, still = T.reveal(x, ids, masked, 4, torch.Generator().manual_seed(0))
    assert (masked & ~still).sum(1).tolist() == [2, 1]  # blocks {1,2} and {9}; block {12..15}
    assert torch.equal(new[~still], ids[~still])
    new, still = T.reveal(x, ids, masked, 4, torch.Generator().manual_seed(0), reveals=(3,))  # gt_topk = 3
    assert (masked & ~still).sum(1).tolist() == [3, 3] and torch.equal(new[~still], ids[~still])
    ids, masked = torch.arange(64).repeat(8, 1), torch.ones(8, 64, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    _, still = T.reveal(torch.full_like(ids, 99), ids, masked, 8, g, reveals=(1, 4))
    assert set((~still).view(8, 8, 8).sum(-1).flatten().tolist()) == {1, 4}  # gt_random: a count per block


def test_train_init_goes_on_from_a_trained_head(tmp_path, monkeypatch):
    """--init: the head starts from the given checkpoint (one step at a negligible learning rate leaves the
    committed weights), and a checkpoint that is no MRP head, or a head of another depth, is one line."""
    models = os.path.join(ROOT, "models")
    base = ["train_mrp.py", "train", "--out", str(tmp_path / "out"), "--steps", "1", "--batch-size", "2",
            "--device", "cpu"]
    head = os.path.join(models, "tiny-sdar-mrp")
    for extra, message in ((["--init", os.path.join(models, "tiny-sdar")], "no mrp_modules"),
                           (["--init", head, "--layers", "2"], "not --layers 2")):
        monkeypatch.setattr("sys.argv", base + extra)
        with pytest.raises(SystemExit, match=message):
            T.main()
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr("sys.argv", base + ["--init", head, "--lr", "1e-12"])
    T.main()
    (_, before), (_, after) = (R.load_mrp(p, "cpu", torch.float32) for p in (head, str(tmp_path / "out")))
    for a, b in zip(before.parameters(), after.parameters()):
        assert torch.equal(a, b)  # both bf16 on disk: the step moved nothing a bf16 weight can hold


def test_training_never_writes_over_a_committed_or_another_model(tmp_path, monkeypatch):
    """The default --out is under runs/; a committed embedded model, another model's folder or the backbone
    itself is refused in one line before anything loads, and nothing there changes."""
    committed = os.path.join(ROOT, "models", "tiny-sdar-mrp")
    before = {n: os.path.getmtime(os.path.join(committed, n)) for n in os.listdir(committed)}
    for out, message in ((committed, "committed embedded models"),
                         (os.path.join(ROOT, "models", "tiny-sdar"), "is also --backbone")):
        monkeypatch.setattr("sys.argv", ["train_mrp.py", "train", "--out", out, "--steps", "1"])
        with pytest.raises(SystemExit, match=message) as e:
            T.main()
        assert "\n" not in str(e.value)
    assert {n: os.path.getmtime(os.path.join(committed, n)) for n in os.listdir(committed)} == before
    monkeypatch.setattr("sys.argv", ["train_mrp.py", "train", "--help"])
    with pytest.raises(SystemExit):
        T.main()
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "llada"}')
    monkeypatch.setattr("sys.argv", ["train_mrp.py", "train", "--out", str(other), "--steps", "1"])
    with pytest.raises(SystemExit, match="holds a llada model; pass --overwrite"):
        T.main()


@pytest.mark.parametrize("argv, message", [
    (["kl", "--model", os.path.join(ROOT, "models", "tiny-sdar")], "no mrp_modules"),
    (["kl", "--reveals", "1,x"], "expected comma-separated integers"),
    (["kl", "--reveals", "0,2"], "counts must lie in 1..32"),
    (["kl", "--length", "100"], "multiple of the block size 32")])
def test_cli_bad_arguments_are_one_line_errors(argv, message, monkeypatch):
    monkeypatch.setattr("sys.argv", ["train_mrp.py"] + argv)
    with pytest.raises(SystemExit, match=message):
        T.main()


def test_the_old_mrp_py_spelling_reaches_train_mrp(monkeypatch):
    """`python mrp.py train|kl ...` (the commands' old home) runs train_mrp.py's."""
    monkeypatch.setattr("sys.argv", ["mrp.py", "kl", "--reveals", "1,x"])
    with pytest.raises(SystemExit, match="expected comma-separated integers"):
        R.main()


# ---- Beyond the paper: revealing the backbone's predictions, the kl diagnostic ----


@pytest.mark.parametrize("reveal_from", ["gt", "backbone"])
def test_training_reveals_the_ground_truth_or_the_backbones_predictions(pair, reveal_from,  # noqa: F811
                                                                         monkeypatch):
    backbone, head = pair
    ids, pm = masked_batch(3)
    seen = []
    monkeypatch.setattr(T, "reveal", lambda x, source, *a: seen.append((x, source)) or REVEAL(x, source, *a))
    T.mrp_loss(backbone, head, ids, pm, torch.Generator().manual_seed(0), 4, reveals=(1, 2),
               reveal_from=reveal_from)
    x_t, source = seen[0]
    with torch.no_grad():  # the first pass sees [x_t | ids] under the training mask; greedy on the noisy half
        layout = dict(position_ids=torch.arange(16).repeat(2),
                      attn_mask=train.block_diff_mask(16, 4)[None, None])
        greedy = backbone(torch.cat([x_t, ids], 1), **layout)[:, :16].argmax(-1)
    assert torch.equal(source, ids if reveal_from == "gt" else greedy)


def test_kl_command_compares_the_head_with_a_zero_residual(capsys):
    """`python train_mrp.py kl` on the embedded head: its zero-residual number is KL(B || A) with A the
    backbone's own logits before the reveal, recomputed here from the same noise and reveals."""
    from tokenizer import load_tokenizer
    folder = os.path.join(ROOT, "models", "tiny-sdar-mrp")
    args = argparse.Namespace(model=folder, reveals="1,2", reveal_from="gt", mrp_steps=1, batches=1,
                              batch_size=4, length=96, seed=7, device="cpu")
    T.main_kl(args, *R.load_mrp(folder, "cpu", torch.float32))
    head, zero = [float(v) for v in re.findall(r"(?:head|residual) ([0-9.]+)", capsys.readouterr().out)]
    backbone, _ = R.load_mrp(folder, "cpu", torch.float32)
    ids, pm, _ = train.make_batch(load_tokenizer(folder), "sdar", 1_000_000, 7, 4, 96, set())
    g = torch.Generator().manual_seed(0)
    x_t, masked, p = train.add_noise(ids, pm, backbone.config.mask_token_id, g)
    x_1, still = T.reveal(x_t, ids, masked, 32, g, (1, 2))
    layout = dict(position_ids=torch.arange(96).repeat(2),
                  attn_mask=train.block_diff_mask(96, 32)[None, None])
    with torch.no_grad():
        A, B = (backbone(torch.cat([x, ids], 1), **layout)[:, :96][still] for x in (x_t, x_1))
    kl = (B.softmax(-1) * (B.log_softmax(-1) - A.log_softmax(-1))).sum(-1)
    assert abs(zero - ((kl / p[still]).sum() / (~pm).sum()).item()) < 1e-4 and head != zero
