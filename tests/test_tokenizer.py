"""tokenizer.py against ids recorded from Hugging Face (Qwen3 / SDAR-Chat) and against small
hand-built tokenizer.json files whose encodings can be worked out by hand.

The real Qwen3 tokenizer.json is stored gzipped (2 MB instead of 11 MB) and unpacked once per run.
"""
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import tokenizer  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
CASES = json.load(open(os.path.join(FIXTURES, "cases.json"), encoding="utf-8"))
B2U = tokenizer.bytes_to_unicode()
SIMPLE = r"\S+|\s+"  # pre-tokenizer regex of the small tokenizers: easy to replay with `re`
LLADA_PATTERN = (r"""(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
LLADA_SPECIALS = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
                  "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3")
    with gzip.open(os.path.join(FIXTURES, "qwen3", "tokenizer.json.gz")) as f, \
            open(folder / "tokenizer.json", "wb") as g:
        shutil.copyfileobj(f, g)
    shutil.copy(os.path.join(FIXTURES, "qwen3", "tokenizer_config.json"), folder)
    return tokenizer.load_tokenizer(str(folder))


def bl(text):
    """Raw text -> its byte-level token string (GPT-2 alphabet)."""
    return "".join(B2U[b] for b in text.encode("utf-8"))


def write_tokenizer(folder, merges=(), ids=None, extra=None, added=None, config=None, edit=None):
    """A small tokenizer.json: byte tokens at their byte values, merge n at ids[n] (default 256 + n),
    `extra` vocabulary tokens {text: id}, added tokens {content: id} (all special unless listed in
    config["_plain"]); `edit(spec)` mutates the spec before it is written."""
    vocab = {B2U[b]: b for b in range(256)}
    for n, (a, b) in enumerate(merges):
        vocab[bl(a + b)] = ids[n] if ids else 256 + n
    vocab.update({bl(t): i for t, i in (extra or {}).items()})
    config = dict(config or {})
    plain = config.pop("_plain", ())
    spec = {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": c not in plain}
                             for c, i in (added or {}).items()],
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SIMPLE}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": [[bl(a), bl(b)] for a, b in merges]}}
    if edit:
        edit(spec)
    os.makedirs(folder, exist_ok=True)
    json.dump(spec, open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8"))
    if config:
        json.dump(config, open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8"))
    return str(folder)


def reference_bpe(word, merge_rank):
    """Hugging Face's BPE on one pre-token: repeatedly merge the adjacent pair with the lowest merge index."""
    parts = list(word)
    while len(parts) > 1:
        found = [(merge_rank[p], j) for j, p in enumerate(zip(parts, parts[1:])) if p in merge_rank]
        if not found:
            break
        _, j = min(found)
        parts[j:j + 2] = [parts[j] + parts[j + 1]]
    return parts


# ---- exactness against Hugging Face on the real Qwen3 tokenizer

@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: repr(c["text"])[:30])
def test_qwen_fixture_texts(qwen, case):
    assert qwen.encode(case["text"]) == case["ids"]
    assert qwen.decode(case["ids"]) == case["decoded"]


@pytest.mark.parametrize("case", CASES["chat"], ids=lambda c: str(len(c["messages"])))
def test_qwen_fixture_chats(qwen, case):
    text = qwen.apply_chat_template(case["messages"], add_generation_prompt=True)
    assert text == case["text"]
    assert qwen.encode(text) == case["ids"]


def test_qwen_nfc_matters(qwen):
    # the decomposed form has its own encoding; only NFC turns it into the single token for é
    assert qwen.decode([68, 53839]) == "e\u0301"
    assert qwen.encode("e\u0301") == [963] == qwen.encode("\u00e9")


def test_qwen_attributes(qwen):
    assert qwen.ranks_are_ids and qwen.chat_format == "qwen3"
    assert qwen.vocab_size == 151670
    ids = (qwen.bos_token_id, qwen.eos_token_id, qwen.pad_token_id, qwen.mask_token_id)
    assert ids == (None, 151643, 151643, 151669)
    assert qwen.special_ids["<|im_end|>"] == 151645 and qwen.special_ids["<think>"] == 151667
    assert qwen.encode("<|im_start|>user\nhi<|im_end|>") == [151644, 872, 198, 6023, 151645]


def test_qwen_merge_results_encode_to_themselves():
    # tiktoken emits a pre-token that is a whole token without merging; that equals Hugging Face's
    # BPE only if BPE on every merge result ends in that result
    with gzip.open(os.path.join(FIXTURES, "qwen3", "tokenizer.json.gz")) as f:
        merges = [tuple(m) for m in json.load(f)["model"]["merges"]]
    rank = {m: i for i, m in enumerate(merges)}
    bad = [a + b for a, b in merges if reference_bpe(a + b, rank) != [a + b]]
    assert bad == []


def test_skip_special_tokens(qwen):
    ids = [151644, 872, 198, 6023, 151645, 151667, 151669]
    assert qwen.decode(ids) == "<|im_start|>user\nhi<|im_end|><think><|MASK|>"
    assert qwen.decode(ids, skip_special_tokens=True) == "user\nhi<think>"  # <think> is not flagged special


def test_unknown_id(qwen):
    with pytest.raises(ValueError, match="unknown token id 151670"):
        qwen.decode([1, 151670])
    with pytest.raises(ValueError, match="unknown token id -1"):
        qwen.decode([-1])


def test_partial_utf8_decodes_with_replacement(qwen):
    ids = qwen.encode("𝔘")  # one 4-byte character split over two tokens
    assert len(ids) == 2 and qwen.decode_bytes(ids) == "𝔘".encode()
    assert qwen.decode(ids[:1]) == "\ufffd" and qwen.decode(ids) == "𝔘"


# ---- the Qwen3 chat template's assistant / thinking rules

U, A = "user", "assistant"


def qwen_chat(qwen, *msgs, **kw):
    msgs = [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in msgs]
    return qwen.apply_chat_template(msgs, **kw)


def test_qwen_trailing_assistant_gets_think_block(qwen):
    got = qwen_chat(qwen, (U, "Hi"), (A, "<think>\nplan\n</think>\n\nHello"), add_generation_prompt=False)
    assert got == ("<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\n<think>\nplan\n</think>\n\nHello<|im_end|>\n")
    got = qwen_chat(qwen, (U, "Hi"), (A, "Hello"), add_generation_prompt=False)
    assert got == ("<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n")


def test_qwen_earlier_assistant_loses_reasoning(qwen):
    got = qwen_chat(qwen, (U, "a"), (A, "<think>r</think>\n\nans"), (U, "b"))
    assert got == ("<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nans<|im_end|>\n"
                   "<|im_start|>user\nb<|im_end|>\n<|im_start|>assistant\n")


def test_qwen_reasoning_content_and_multi_step(qwen):
    # both assistant turns follow the last user query: the first shows its reasoning because it has
    # one; the second has none and is not the last message, so it renders plain; a later system
    # turn renders like the first
    got = qwen_chat(qwen, ("system", "S"), (U, "q"),
                    {"role": A, "content": "\nstep", "reasoning_content": "\nr1\n"},
                    (A, "final"), ("system", "S2"), add_generation_prompt=False)
    assert got == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
                   "<|im_start|>assistant\n<think>\nr1\n</think>\n\nstep<|im_end|>\n"
                   "<|im_start|>assistant\nfinal<|im_end|>\n<|im_start|>system\nS2<|im_end|>\n")


def test_qwen_enable_thinking_false(qwen):
    got = qwen_chat(qwen, (U, "q"), enable_thinking=False)
    assert got == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert qwen_chat(qwen, (U, "q"), add_generation_prompt=False) == "<|im_start|>user\nq<|im_end|>\n"
    # jinja's `is false`: only False counts
    assert qwen_chat(qwen, (U, "q"), enable_thinking=None).endswith("assistant\n")


def test_qwen_tools_refused(qwen):
    with pytest.raises(NotImplementedError, match="tool"):
        qwen_chat(qwen, (U, "q"), ("tool", "42"))
    with pytest.raises(NotImplementedError, match="tool"):
        qwen_chat(qwen, (U, "q"), tools=[{"name": "f"}])
    with pytest.raises(ValueError, match="role 'narrator'"):
        qwen_chat(qwen, (U, "q"), ("narrator", "x"))


# ---- LLaDA chat format on a small tokenizer with LLaDA's special-token ids

@pytest.fixture
def llada(tmp_path):
    config = {"bos_token": "<|startoftext|>", "eos_token": {"content": "<|endoftext|>"},
              "pad_token": "<|endoftext|>"}
    edit = lambda s: s["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=LLADA_PATTERN)
    return tokenizer.load_tokenizer(write_tokenizer(tmp_path, added=LLADA_SPECIALS, config=config, edit=edit))


def test_llada_documented_example(llada):
    text = llada.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # no merges: every ordinary byte is its own token, at its byte value
    assert llada.encode(text) == ([126080, 126346, *b"user", 126347, *b"\n\nWhat is 2+2?", 126348,
                                   126346, *b"assistant", 126347, *b"\n\n"])
    ids = (llada.bos_token_id, llada.eos_token_id, llada.pad_token_id, llada.mask_token_id)
    assert ids == (126080, 126081, 126081, None)
    assert llada.vocab_size == 126349 and llada.chat_format == "llada"


def test_llada_strips_and_always_appends_header(llada):
    msgs = [{"role": "system", "content": " Be brief.\n"}, {"role": "user", "content": "\nHi "}]
    want = ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert llada.apply_chat_template(msgs, add_generation_prompt=False) == want


# ---- Ling-2.0 (LLaDA2.0-mini) chat format on a small tokenizer in its format: Ling's pre-tokenizer regex
# (possessive quantifiers, single digits), its role markers as added tokens, a chat template naming them

LING_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
LING_SPECIALS = {"<|endoftext|>": 300, "<|mask|>": 301, "<role>": 302, "</role>": 303, "<|role_end|>": 304,
                 "<think>": 305, "</think>": 306}
LING_TEMPLATE = ("{{- '<role>SYSTEM</role>' }}...{{- '<role>HUMAN</role>' + message.content + "
                 "'<|role_end|>' }}...{{- '<role>ASSISTANT</role>' }}")  # an excerpt: only its markers count


@pytest.fixture
def ling(tmp_path):
    config = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mask|>",
              "chat_template": LING_TEMPLATE, "_plain": ["<think>", "</think>"]}
    edit = lambda s: s["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=LING_PATTERN)
    merges = [(" ", "t"), (" t", "h"), (" th", "e"), ("l", "l"), ("'", "ll")]
    folder = write_tokenizer(tmp_path, merges, added=LING_SPECIALS, config=config, edit=edit)
    return tokenizer.load_tokenizer(folder)


def test_ling2_documented_prompt(ling):
    text = ling.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    assert text == ("<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>What is 2+2?"
                    "<|role_end|><role>ASSISTANT</role>")
    assert ling.encode(text) == [302, *b"SYSTEM", 303, *b"detailed", 257, *b"inking off", 304, 302, *b"HUMAN",
                                 303, *b"What is 2+2?", 304, 302, *b"ASSISTANT", 303]  # " th": merge 1
    assert ling.chat_format == "ling2" and (ling.eos_token_id, ling.mask_token_id) == (300, 301)


def test_ling2_pre_tokenizer_splits_digits_and_contractions(ling):
    # single digits (cl100k groups up to 3); "'ll" is one piece; " the" merges (no word before it)
    assert ling.encode("2024") == [*b"2024"]
    assert ling.encode("we'll the") == [*b"we", 260, 258]


def test_ling2_system_turns_and_history(ling):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\nA"},
            {"role": "system", "content": "S2"}, {"role": "user", "content": "b"}]
    assert ling.apply_chat_template(msgs) == (
        "<role>SYSTEM</role>Be brief.\ndetailed thinking off<|role_end|><role>HUMAN</role>a<|role_end|>"
        "<role>ASSISTANT</role>A<|role_end|><role>SYSTEM</role>S2<|role_end|><role>HUMAN</role>b<|role_end|>"
        "<role>ASSISTANT</role>")  # an earlier turn's reasoning is dropped; a later system turn is a turn
    last = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "x", "reasoning_content": "\nr\n"}]
    assert ling.apply_chat_template(last, add_generation_prompt=False) == (
        "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>q<|role_end|>"
        "<role>ASSISTANT</role>\n<think>\nr\n</think>\n\nx<|role_end|>")  # after the last query: shown
    with pytest.raises(NotImplementedError, match="tool"):
        ling.apply_chat_template([{"role": "user", "content": "q"}, {"role": "tool", "content": "1"}])
    with pytest.raises(ValueError, match="role 'narrator' is not supported by the Ling-2.0"):
        ling.apply_chat_template([{"role": "narrator", "content": "q"}])


def test_ling2_is_not_mistaken_for_ling1(tmp_path):
    # LLaDA's Ling-1 tokenizer has <role> and </role> but no <|role_end|>; nor is a template without them
    ling1 = {**LLADA_SPECIALS, "<role>": 126340, "</role>": 126341}
    assert tokenizer.load_tokenizer(write_tokenizer(tmp_path / "a", added=ling1)).chat_format == "llada"
    folder = write_tokenizer(tmp_path / "b", added=LING_SPECIALS, config={"chat_template": "{{ messages }}"})
    assert tokenizer.load_tokenizer(folder).chat_format is None


def test_no_known_chat_format(tmp_path):
    tok = tokenizer.load_tokenizer(write_tokenizer(tmp_path / "a", added={"<|endoftext|>": 300}))
    with pytest.raises(ValueError, match="no chat format we know"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    # Qwen3's marker tokens, but a chat template without </think> (as Qwen2.5's): not ours
    qwen_marks = {t: 300 + k for k, t in enumerate(["<|im_start|>", "<|im_end|>", "<think>", "</think>"])}
    folder = write_tokenizer(tmp_path / "b", added=qwen_marks,
                             config={"chat_template": "<|im_start|><|im_end|>"})
    assert tokenizer.load_tokenizer(folder).chat_format is None


# ---- merge order, unreachable tokens, pre-tokenizer variants on small tokenizers

MERGES = [("b", "c"), ("a", "b"), ("a", "bc"), ("c", "c")]


@pytest.mark.parametrize("ids", [None, [259, 257, 300, 256]], ids=["ids-in-merge-order", "ids-out-of-order"])
def test_merge_order_is_honoured(tmp_path, ids):
    folder = write_tokenizer(tmp_path, MERGES, ids=ids, added={"<|x|>": 400})
    tok = tokenizer.load_tokenizer(folder)
    bc, ab, abc, cc = ids or [256, 257, 258, 259]
    assert tok.ranks_are_ids == (ids is None)
    # "abcc": b+c (merge 0) beats a+b (merge 1) and c+c (merge 3), then a+bc (merge 2)
    assert tok.encode("abcc") == [abc, ord("c")]
    # "abb": only a+b applies; "cab": c+c absent, a+b -> c, ab
    assert tok.encode("abb cab<|x|>ccc") == [ab, ord("b"), ord(" "), ord("c"), ab, 400, cc, ord("c")]
    assert tok.decode(tok.encode("abb cab<|x|>ccc")) == "abb cab<|x|>ccc"
    # and against a replay of Hugging Face's BPE on random strings
    vocab_id = {**{B2U[b]: b for b in range(256)},
                **{a + b: i for (a, b), i in zip(MERGES, [bc, ab, abc, cc])}}
    rank = {m: i for i, m in enumerate(MERGES)}
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        want = [vocab_id[t] for piece in re.findall(SIMPLE, text) for t in reference_bpe(bl(piece), rank)]
        assert tok.encode(text) == want, text


def test_unreachable_vocab_token_is_only_decoded(tmp_path):
    # "abc" sits in the vocabulary but no merge makes it: Hugging Face's BPE can never emit it
    tok = tokenizer.load_tokenizer(write_tokenizer(tmp_path, [("a", "b")], extra={"abc": 300}))
    assert tok.encode("abc") == [256, ord("c")]
    assert tok.decode([300]) == "abc"


def test_gpt2_regex_when_bytelevel_splits(tmp_path):
    def edit(spec):
        spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                 "use_regex": True}
    tok = tokenizer.load_tokenizer(write_tokenizer(tmp_path, [(" ", "c")], edit=edit))
    assert tok.encode("ab cd") == [ord("a"), ord("b"), 256, ord("d")]  # GPT-2 keeps " c" in one piece


def test_non_special_added_token_is_atomic_but_kept_by_skip(tmp_path):
    folder = write_tokenizer(tmp_path, added={"<s>": 300, "<think>": 301}, config={"_plain": ["<think>"]})
    tok = tokenizer.load_tokenizer(folder)
    assert tok.encode("a<think>b<s>") == [ord("a"), 301, ord("b"), 300]
    assert tok.decode([300, 301, ord("x")], skip_special_tokens=True) == "<think>x"


# ---- errors: one line, naming the file and the problem

def set_in(path, value):
    def edit(spec):
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


BAD = {
    "normalizer": (set_in(["normalizer"], {"type": "Lowercase"}), "unsupported normalizer"),
    "normalizer-sequence": (set_in(["normalizer"], {"type": "Sequence",
                                                    "normalizers": [{"type": "NFC"}, {"type": "NFKC"}]}),
                            "NFKC"),
    "metaspace": (set_in(["pre_tokenizer"], {"type": "Metaspace", "replacement": "▁"}),
                  "unsupported pre_tokenizer Metaspace"),
    "prefix-space": (set_in(["pre_tokenizer"], {"type": "ByteLevel", "add_prefix_space": True,
                                                "use_regex": True}), "'add_prefix_space': True"),
    "digits": (set_in(["pre_tokenizer", "pretokenizers", 1], {"type": "Digits", "individual_digits": True}),
               "Digits"),
    "whitespace-split": (set_in(["pre_tokenizer"], {"type": "WhitespaceSplit"}), "WhitespaceSplit"),
    "byte-fallback": (set_in(["model", "byte_fallback"], True), "byte_fallback"),
    "wordpiece": (set_in(["model", "type"], "WordPiece"), "WordPiece"),
    "decoder": (set_in(["decoder"], {"type": "Metaspace"}), "unsupported decoder"),
    "missing-byte": (lambda s: s["model"]["vocab"].pop("A"), "byte 0x41"),
    "bad-alphabet": (set_in(["model", "vocab", "a b"], 500), "outside the byte-level alphabet"),
    "merge-missing": (set_in(["model", "merges"], [["x", "yz"]]), "merge 0"),
    "merge-twice": (lambda s: s["model"]["merges"].append(["a", "bc"]), "both make"),
    "added-prefix": (set_in(["added_tokens"], [{"id": 300, "content": "<a>"},
                                               {"id": 301, "content": "<a>b"}]), "prefix"),
    "added-reuses-id": (set_in(["added_tokens"], [{"id": 97, "content": "<a>"}]), "reuses the id 97"),
    "bad-regex": (set_in(["pre_tokenizer", "pretokenizers", 0, "pattern", "Regex"], "(unclosed"),
                  "tiktoken rejected"),
    "no-model": (lambda s: s.pop("model"), "unexpected tokenizer.json structure"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_unsupported_files_are_refused(tmp_path, name):
    edit, message = BAD[name]
    merges = [("a", "b"), ("b", "c"), ("ab", "c")] if name == "merge-twice" else [("a", "b")]
    folder = write_tokenizer(tmp_path, merges, edit=edit)
    with pytest.raises(ValueError) as e:
        tokenizer.load_tokenizer(folder)
    assert message in str(e.value) and "tokenizer.json" in str(e.value) and "\n" not in str(e.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        tokenizer.load_tokenizer(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json: file not found"):
        tokenizer.load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: cannot read JSON"):
        tokenizer.load_tokenizer(str(tmp_path))
    folder = write_tokenizer(tmp_path / "ok")
    (tmp_path / "ok" / "tokenizer_config.json").write_text("[1,")
    with pytest.raises(ValueError, match="tokenizer_config.json: cannot read JSON"):
        tokenizer.load_tokenizer(folder)
    folder = write_tokenizer(tmp_path / "eos", config={"eos_token": "<|nope|>"})
    with pytest.raises(ValueError, match=re.escape("eos_token '<|nope|>' is not a single token")):
        tokenizer.load_tokenizer(folder)


def test_cli(tmp_path):
    folder = write_tokenizer(tmp_path, added=LLADA_SPECIALS)
    run = lambda *a: subprocess.run([sys.executable, os.path.join(ROOT, "tokenizer.py"), *a],
                                    capture_output=True, text=True, check=True).stdout
    assert "--chat" in run("--help")
    out = run(folder, "--text", "ab", "--chat", "Hi")
    assert "[97, 98]" in out and "round trip exact (after NFC): True" in out and "[126080, 126346," in out
