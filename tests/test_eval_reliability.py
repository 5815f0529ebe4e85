"""eval.py as a careless or unlucky user meets it (issue 20, section 4): bad input as one line.

- the command line: impossible numbers, path typos, a missing embedded model, the Hub out of reach, bad
  checkpoints and Ctrl-C, each one line (Ctrl-C: exit 130), checked before any model loads where possible.
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

import model as M
import tasks
from conftest import ROOT
from test_reliability import BAD_CHECKPOINTS, bad_checkpoint, cli

TINY = os.path.join(ROOT, "models", "tiny-llada")
SHORT = ["--gen-length", "8", "--block-length", "8"]


def eval_cli(*argv):
    return cli("eval.py", *argv)


def data_file(path, n=2, edit=None):
    """n built-in problems in GSM8K's JSONL format (a --data file for --task tiny); edit(rows) changes them."""
    rng = random.Random(0)
    rows = [dict(zip(("question", "answer"), tasks.tiny_problem(rng))) for _ in range(n)]
    (edit or (lambda r: None))(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


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
