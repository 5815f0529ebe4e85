"""eval.py as a careless or unlucky user meets it (issue 20, sections 3 and 4): no stale result, bad input as
one line, and one bad question never stops a run.

- stale results: a log is resumed only by a run that would give the same answers; an edited config.json,
  generation config, tokenizer file, weight, data record or any flag that changes tokens makes the same
  command refuse the log in one line (and leave it as it was); a cut-off last line (a killed writer) is
  dropped with a note, a torn line elsewhere is one line naming the file and the line;
- the command line: impossible numbers, path typos, a missing embedded model, the Hub out of reach, bad
  checkpoints and Ctrl-C, each one line (Ctrl-C: exit 130), checked before any model loads where possible;
- bad questions: a prompt that cannot be encoded or is too long for the model gets an error record, the
  others are scored, and the summary counts the errors.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import model as M
import tasks
from conftest import ROOT
from test_reliability import BAD_CHECKPOINTS, bad_checkpoint, cli

TINY = os.path.join(ROOT, "models", "tiny-llada")
SHORT = ["--gen-length", "8", "--block-length", "8"]


def eval_cli(*argv):
    return cli("eval.py", *argv)


def data_file(path, n=2, edit=None):
    """n built-in problems in GSM8K's JSONL format (a --data file for --task tiny); edit(rows) edits them."""
    rng = random.Random(0)
    rows = [dict(zip(("question", "answer"), tasks.tiny_problem(rng))) for _ in range(n)]
    (edit or (lambda r: None))(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def answers(text):
    """A log's rows without their timings."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text.splitlines()]

# ---------------------------------------------------------------------------------------------------
# the command line: one line each, before any model loads


BAD_FLAGS = [
    (["--thresholds", "abc"], "--thresholds abc: expected comma-separated float values"),
    (["--steps", "abc"], "--steps abc: expected comma-separated int values"),
    (["--steps", "8,0"], "--steps 8,0: each must be a positive integer"),
    (["--thresholds", "0.5,nan"], "--thresholds 0.5,nan: each must be in (0, 1]"),
    (["--thresholds", "1.5"], "--thresholds 1.5: each must be in (0, 1]"),
    (["--batch-size", "0"], "--batch-size 0: must be a positive integer"),
    (["--batch-size", "-3"], "--batch-size -3: must be a positive integer"),
    (["--limit", "0"], "--limit 0: must be a positive integer"),
    (["--limit", "-5"], "--limit -5: must be a positive integer"),
    (["--gen-length", "0"], "--gen-length 0: must be a positive integer"),
    (["--gen-length", "-8"], "--gen-length -8: must be a positive integer"),
    (["--block-length", "0"], "--block-length 0: must be a positive integer"),
    (["--method", "mrp-spec", "--mrp-steps", "0"], "--mrp-steps 0: must be a positive integer"),
    (["--method", "elastic", "--budget", "0"], "--budget 0: must be a positive integer"),
    (["--code-timeout", "-1"], "--code-timeout -1.0: must be a positive number of seconds"),
    (["--code-timeout", "nan"], "--code-timeout nan: must be a positive number of seconds"),
    (["--temperature", "nan"], "--temperature nan: must be a finite number >= 0"),
    (["--temperature", "-1"], "--temperature -1.0: must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature inf: must be a finite number >= 0"),
    (["--method", "mrp-remask", "--delta", "nan"], "--delta nan: must be a finite number"),
    (["--device", "gpu"], "--device gpu: expected cuda, cuda:N, cpu or mps"),
    (["--samples", ROOT], f"--samples {ROOT}: is a folder"),
    (["--out", "no/such/folder/r.json"], "--out no/such/folder/r.json: no such folder no/such/folder"),
    (["--model", "./nope/model"], "./nope/model: no such folder"),
    (["--model", "models/nope"], "models/nope: no such folder"),
    (["--model", "nope/model/x"], "nope/model/x: no such folder"),
    (["--method", "rcd", "--reference", "./nope"], "./nope: no such folder"),
    (["--data", "no-such-file.jsonl"], "no-such-file.jsonl: no such file"),
]


@pytest.mark.parametrize("argv, words", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_are_one_line_before_any_model_loads(argv, words, monkeypatch):
    monkeypatch.chdir(ROOT)  # where models/ exists, as for a user in the repository

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(M, "from_pretrained", no_load)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # a hub call would raise ImportError
    code, line = eval_cli(*argv)
    assert isinstance(code, str) and words in line and "\n" not in line, (code, line)


def test_tasks_refuse_a_limit_that_is_not_a_count():
    """load_records([:limit]) would take -5 as 'all but the last 5'."""
    for limit in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match=f"limit {limit}: must be a positive number of problems"):
            tasks.load_records("tiny", limit=limit)
    assert len(tasks.load_records("tiny", limit=3)[0]) == 3


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "unreachable"])
@pytest.mark.parametrize("argv, words", [(["--model", "owner/name"], "give a folder holding the checkpoint"),
                                         (["--task", "gsm8k"], "pass --data PATH with a local copy of")])
def test_the_hub_out_of_reach_is_one_line_with_a_hint(tmp_path, env, argv, words):
    """Offline for real: HF_HUB_OFFLINE, or an endpoint that refuses connections (this machine has no
    network; the hub's own retries took 26 s here, with a 38-line traceback)."""
    t0 = time.time()
    out = subprocess.run([sys.executable, "eval.py", *argv], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HOME": str(tmp_path / "hf"), **env}, timeout=120)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(err) == 1 and words in err[0], out.stderr
    assert time.time() - t0 < 20


def test_a_missing_embedded_model_says_how_to_make_it(tmp_path, monkeypatch):
    import eval as E
    (tmp_path / "models").mkdir()
    monkeypatch.setattr(E, "HERE", str(tmp_path))
    for name, method in (("tiny-sdar-mrp", "mrp-spec"), ("tiny-llada", "baseline")):
        args = E.check_args(E.parse_args(["--method", method, "--model", str(tmp_path / "models" / name),
                                          "--no-compare"]))
        with pytest.raises(SystemExit) as e:
            E.plan(args)
        assert f"git checkout -- models/{name}" in str(e.value) and E.EMBEDDED[name] in str(e.value)
    assert E.EMBEDDED["tiny-sdar-mrp"].startswith("python train_mrp.py train ")  # no longer mrp.py's


def test_every_embedded_recipe_is_a_command_its_script_takes(monkeypatch):
    """The hints name real commands: each step of each EMBEDDED recipe parses with its script's own argparse
    (stopped right after parsing, so nothing trains)."""
    import argparse
    import runpy
    import eval as E

    class Parsed(Exception):
        pass
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **k):
        raise Parsed(parse(self, *a, **k))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    steps = [step.split() for recipe in E.EMBEDDED.values() for step in recipe.split(", then ")]
    assert len(steps) == len(E.EMBEDDED) + 2
    for python, script, *argv in steps:
        monkeypatch.setattr(sys, "argv", [script, *argv])
        with pytest.raises(Parsed) as e:
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        assert e.value.args[0].out.startswith(("models/", "runs/")), (script, argv)


@pytest.mark.parametrize("name", ["zero rope_theta", "missing key", "nan weight"])
def test_eval_py_names_a_bad_checkpoint_in_one_line(tmp_path, name):
    folder = str(tmp_path / "bad")
    bad_checkpoint(folder, name)
    code, line = eval_cli("--model", folder, "--limit", "1", *SHORT, "--samples", str(tmp_path / "s.jsonl"))
    assert isinstance(code, str) and BAD_CHECKPOINTS[name][2] in line and folder in line and "\n" not in line


def test_eval_py_names_a_bad_tokenizer_in_one_line(tmp_path):
    folder = str(tmp_path / "tok")
    shutil.copytree(TINY, folder)
    json.dump(["not", "an", "object"], open(os.path.join(folder, "tokenizer_config.json"), "w"))
    code, line = eval_cli("--model", folder, "--limit", "1", *SHORT, "--samples", str(tmp_path / "s.jsonl"))
    assert isinstance(code, str) and "tokenizer_config.json: expected a JSON object" in line


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path):
    """A real SIGINT after the first sample is logged: one line, exit 130; the same command then finishes
    with exactly the samples an uninterrupted run writes."""
    log, whole = tmp_path / "log.jsonl", tmp_path / "whole.jsonl"
    argv = [sys.executable, "eval.py", "--limit", "3", "--batch-size", "1", *SHORT]
    p = subprocess.Popen([*argv, "--samples", str(log)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    while not (log.exists() and log.read_text().count("\n")) and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err.splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert "Traceback" not in err and 1 <= log.read_text().count("\n") < 3
    subprocess.run([*argv, "--samples", str(log)], cwd=ROOT, check=True, capture_output=True)
    subprocess.run([*argv, "--samples", str(whole)], cwd=ROOT, check=True, capture_output=True)
    assert answers(log.read_text()) == answers(whole.read_text())

# ---------------------------------------------------------------------------------------------------
# stale results: a log is resumed only by a run that would give the same answers


def flip_a_middle_weight(folder):
    path = os.path.join(folder, "model.safetensors")
    sd = load_file(path)
    key = sorted(sd)[len(sd) // 2]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[sd[key].numel() // 2] += 1e-3  # same size, same header, one value changed
    save_file(sd, path)


def edit_json(path, edit):
    data = json.load(open(path))
    edit(data)
    json.dump(data, open(path, "w"), indent=1)


FILE_EDITS = {  # what a user may change in a checkpoint folder between two runs of the same command
    "config.json rope_theta": lambda f: edit_json(f + "/config.json", lambda d: d.update(rope_theta=10.0)),
    "generation_config.json": lambda f: edit_json(f + "/generation_config.json", lambda d: d.update(steps=8)),
    "tokenizer_config.json": lambda f: edit_json(f + "/tokenizer_config.json",
                                                 lambda d: d.update(chat_template=d["chat_template"] + " ")),
    "tokenizer.json rewritten": lambda f: edit_json(f + "/tokenizer.json", lambda d: None),
    "a weight": flip_a_middle_weight,
}
FLAG_CHANGES = [["--batch-size", "1"], ["--seed", "1"], ["--temperature", "0.5"], ["--dtype", "bfloat16"],
                ["--gen-length", "16", "--steps", "8"], ["--block-length", "4"]]  # the same setting name


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A run of the same command on a copy of tiny-llada: (folder, data file, its log's text, argv)."""
    root = tmp_path_factory.mktemp("logged")
    folder = str(root / "model")
    shutil.copytree(TINY, folder)
    data = data_file(root / "data.jsonl")
    argv = ["--data", data, *SHORT, "--json"]
    code, line = eval_cli("--model", folder, *argv, "--samples", str(root / "log.jsonl"))
    assert code in (0, None), line
    return folder, data, (root / "log.jsonl").read_text(), argv


def rerun(tmp_path, logged, folder=None, extra=(), data=None):
    """The logged command again (on `folder`, with `extra` flags), resuming a copy of its log."""
    original, data_path, text, argv = logged
    log = tmp_path / "log.jsonl"
    log.write_text(text)
    argv = [(data if data and a == data_path else a) for a in argv]
    return (*eval_cli("--model", folder or original, *argv, *extra, "--samples", str(log)), log)


def test_the_same_command_on_an_identical_copy_resumes(tmp_path, logged, capsys):
    copy = str(tmp_path / "copy")
    shutil.copytree(logged[0], copy)  # another path, the same files: the same answers
    code, _, log = rerun(tmp_path, logged, copy)
    assert code in (0, None) and log.read_text() == logged[2]
    assert last_json(capsys)["rows"][0]["n"] == 2


@pytest.mark.parametrize("edit", list(FILE_EDITS))
def test_an_edited_checkpoint_file_refuses_the_old_log(tmp_path, logged, edit):
    copy = str(tmp_path / "copy")
    shutil.copytree(logged[0], copy)
    FILE_EDITS[edit](copy)
    code, line, log = rerun(tmp_path, logged, copy)
    assert isinstance(code, str) and "written by another model, data or setting" in line and "\n" not in line
    assert log.read_text() == logged[2]  # left as it was


@pytest.mark.parametrize("extra", FLAG_CHANGES, ids=[" ".join(f) for f in FLAG_CHANGES])
def test_a_flag_that_changes_tokens_refuses_the_old_log(tmp_path, logged, extra):
    code, line, log = rerun(tmp_path, logged, extra=extra)
    assert isinstance(code, str) and "written by another model, data or setting" in line, line
    assert log.read_text() == logged[2]


def test_an_edited_data_record_refuses_the_old_log(tmp_path, logged):
    def other_answer(rows):
        rows[1]["answer"] = rows[1]["answer"].replace("####", "#### 1")
    data = data_file(tmp_path / "data.jsonl", edit=other_answer)
    code, line, log = rerun(tmp_path, logged, data=data)
    assert isinstance(code, str) and "line 2: written by another model, data or setting" in line, line
    assert log.read_text() == logged[2]


def test_a_cut_off_last_line_is_dropped_with_a_note_and_run_again(tmp_path, logged, capsys):
    original, _, text, argv = logged
    log = tmp_path / "log.jsonl"
    log.write_text(text[:len(text) - 40])  # the writer killed in the middle of the last line
    code, _ = eval_cli("--model", original, *argv, "--samples", str(log))
    assert code in (0, None)
    assert "the last line was cut off (an interrupted write); dropped" in capsys.readouterr().out
    assert answers(log.read_text()) == answers(text)  # cut away before appending, then run again whole


@pytest.mark.parametrize("garbage", ['{"setting": "steps=8", "id"', "not json", '["a", "list"]',
                                     '{"no": "id"}'])
def test_a_torn_line_in_the_middle_is_one_line_naming_file_and_line(tmp_path, logged, garbage):
    original, _, text, argv = logged
    log = tmp_path / "log.jsonl"
    lines = text.splitlines(keepends=True)
    log.write_text(garbage + "\n" + "".join(lines[1:]))
    code, line = eval_cli("--model", original, *argv, "--samples", str(log))
    assert line == (f"{log}, line 1: not a sample record (a torn or edited line); move the file away or "
                    "name another with --samples")
    assert log.read_text() == garbage + "\n" + "".join(lines[1:])


@pytest.mark.slow
def test_rope_theta_edited_no_longer_reports_the_old_accuracy(tmp_path, capsys):
    """The issue's case: after rope_theta is edited, the same command used to report the old accuracy from
    the log; it now refuses the log, and a fresh run shows what the edited model really does."""
    folder = str(tmp_path / "model")
    shutil.copytree(TINY, folder)
    argv = ["--model", folder, "--limit", "2", "--json", "--samples", str(tmp_path / "log.jsonl")]
    assert eval_cli(*argv)[0] in (0, None)
    before = last_json(capsys)["rows"][0]["accuracy"]
    edit_json(folder + "/config.json", lambda d: d.update(rope_theta=10.0))
    code, line = eval_cli(*argv)
    assert isinstance(code, str) and "written by another model, data or setting" in line
    assert eval_cli(*argv[:-1], str(tmp_path / "fresh.jsonl"))[0] in (0, None)
    assert before == 100.0 and last_json(capsys)["rows"][0]["accuracy"] < before


def test_fingerprint_covers_the_flags_that_change_answers():
    import argparse
    import eval as E
    s = dict(method="baseline", family="llada", gen_length=8, block_length=8, name="steps=8", temperature=0.0,
             cache=None)
    args = lambda **kw: argparse.Namespace(**{"seed": 0, "task": "humaneval", "batch_size": 16,
                                               "allow_code_exec": True, "code_timeout": 3.0, **kw})
    fp = lambda digests=("a",), dtype=torch.float32, device="cpu", world=1, **kw: E.fingerprint(
        digests, s, args(**kw), dtype, device, world)
    variants = [fp(), fp(digests=("b",)), fp(dtype=torch.bfloat16), fp(device="cuda:0"), fp(world=2),
                fp(seed=1),
                fp(batch_size=8), fp(code_timeout=10.0), fp(allow_code_exec=False), fp(task="mbpp")]
    assert len(set(variants)) == len(variants)
    assert fp(device="cuda:0") == fp(device="cuda:1")  # the device type, not its number
    tiny = lambda **kw: fp(task="tiny", **kw)  # the code flags mean nothing to a task without code
    assert tiny() == tiny(code_timeout=10.0) == tiny(allow_code_exec=False)


def test_big_weight_files_are_fingerprinted_by_the_documented_rule(tmp_path, monkeypatch):
    """Files over FULL_HASH_BYTES: the hub's own sha256 for a hub-cache blob; else size, safetensors header
    and 16 one-MiB samples (an edit between two samples goes unseen: the rule's documented limit). Files up
    to FULL_HASH_BYTES: every byte."""
    import eval as E
    path = str(tmp_path / "model.safetensors")
    tensors = {"a": torch.zeros(4 << 20), "b": torch.zeros(4 << 20)}  # 32 MiB
    save_file(tensors, path)
    size, mib = os.path.getsize(path), 1 << 20

    def digests():  # (by the rule, in full)
        monkeypatch.setattr(E, "FULL_HASH_BYTES", mib)
        rule = E.file_digest(path)
        monkeypatch.setattr(E, "FULL_HASH_BYTES", 1 << 30)
        return rule, E.file_digest(path)
    before = digests()

    def seen(edit):
        shutil.copy(path, path + ".bak")
        edit()
        after = digests()
        shutil.move(path + ".bak", path)
        return [a != b for a, b in zip(after, before)]
    assert seen(lambda: save_file({"a": tensors["a"], "c": tensors["b"]}, path)) == [True, True]  # header

    def poke(offset):
        def edit():
            with open(path, "r+b") as f:
                f.seek(offset)
                f.write(b"\x01")
        return edit
    sample_7 = (size - mib) * 7 // 15
    gap = (size - mib) // 15 + mib + 1000  # after the second sample, before the third
    for offset, by_rule in ((size - 1, True), (sample_7 + mib // 3, True), (gap, False)):
        assert seen(poke(offset)) == [by_rule, True], offset
    blobs = tmp_path / "hub" / "blobs"
    blobs.mkdir(parents=True)
    shutil.copy(path, blobs / ("ab" * 32))
    os.symlink(blobs / ("ab" * 32), tmp_path / "hub" / "model.safetensors")
    monkeypatch.setattr(E, "FULL_HASH_BYTES", mib)
    assert E.file_digest(str(tmp_path / "hub" / "model.safetensors")) == "ab" * 32  # the hub's sha256

# ---------------------------------------------------------------------------------------------------
# one bad question never stops a run


def bad_questions(rows):
    rows[1]["question"] = "apples " * 3000  # 3,000 tokens: past tiny-llada's 1,024 positions
    rows[2]["question"] = 12345  # not text: the prompt template cannot take it


@pytest.mark.parametrize("batch_size", ["16", "1"])
def test_a_bad_question_gets_an_error_record_and_the_others_are_scored(tmp_path, capsys, batch_size):
    data = data_file(tmp_path / "data.jsonl", n=4, edit=bad_questions)
    log = tmp_path / "log.jsonl"
    code, line = eval_cli("--data", data, *SHORT, "--batch-size", batch_size, "--json", "--samples", str(log))
    out = capsys.readouterr().out
    assert code in (0, None), line
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"tiny/{i}" for i in range(4)]
    assert "exceed the model's maximum of 1024 positions" in rows[1]["error"]
    assert rows[2]["error"].startswith("prompt: cannot be encoded (TypeError")
    assert all(not r["correct"] and r["rule"] == "error" for r in rows[1:3])
    assert all("error" not in r and r["nfe"] == 8 and r["output"] for r in (rows[0], rows[3]))
    summary = json.loads(out.strip().splitlines()[-1])["rows"][0]
    assert summary["n"] == 4 and summary["errors"] == 2 and summary["first_error"] == rows[1]["error"]
    assert "2 of 4 problems could not be run and count as wrong" in out
    # the good questions get the answers they get without the bad ones around them (batch 1: exactly)
    clean = tmp_path / "clean.jsonl"
    eval_cli("--data", data_file(tmp_path / "clean_data.jsonl", n=4), *SHORT, "--batch-size", "1",
             "--samples", str(clean))
    alone = [json.loads(x) for x in clean.read_text().splitlines()]
    assert [rows[i]["output"] for i in (0, 3)] == [alone[i]["output"] for i in (0, 3)]


@pytest.mark.parametrize("argv, words", [
    (["--thresholds", "0.5"], "use --steps, or --method threshold"),
    (["--gen-length", "1024"], "gen_length 1024 and any prompt exceed the model's maximum of 1024")])
def test_a_refused_setting_still_stops_the_run_in_one_line(tmp_path, argv, words):
    """Only a decoder's refusal of a prompt ("prompt: ...") is the record's; one of the setting (a generation
    no prompt fits beside) is the run's, not an error record for every problem."""
    code, line = eval_cli("--limit", "2", *SHORT, *argv, "--samples", str(tmp_path / "s.jsonl"))
    assert isinstance(code, str) and words in line and "\n" not in line, line
    assert not (tmp_path / "s.jsonl").read_text()
