"""tokenizer.py: the LLaDA and SDAR (Qwen3) tokenizers on tiktoken, and their chat templates.

Reads a Hugging Face folder (tokenizer.json with a byte-level BPE, tokenizer_config.json) and
encodes as Hugging Face `tokenizers` does with add_special_tokens=False:
- NFC first, like the file's normalizer and Qwen2Tokenizer (tiktoken never normalises);
- the file's pre-tokenizer regex, then byte-level BPE in merge order (GPT-2's bytes_to_unicode);
- added tokens (special or not, e.g. Qwen's <think>) are matched atomically anywhere in the text;
- decode: ids -> bytes -> UTF-8 with errors="replace"; added tokens decode to their text.
Chat templates: Qwen3's (SDAR-Chat), LLaDA-8B-Instruct's and Ling-2.0's (LLaDA2.0-mini) jinja templates,
as plain Python; a folder's format is recognised from its added tokens (and its template, if it has one).
Differences from Hugging Face:
- tiktoken uses its rank both as merge priority and as the id. When ids rise with merge order
  (Qwen3) rank = id; otherwise ranks are 256 + merge index and encode maps ranks to ids through
  a lookup array, so both cases are exact (`ranks_are_ids` says which one a file got).
- tiktoken joins any two adjacent parts whose concatenation has a rank, and emits a pre-token that
  is itself a token without merging; Hugging Face joins only listed pairs. Both agree exactly when
  BPE on every merge result ends in that result (true for all 151,387 Qwen3 merges): checked at
  load (merges_rebuild_themselves), and a file that fails it is refused.
- encode_chat encodes special-token text inside message content as plain text (Hugging Face would
  make it the special token, so a question could close its turn or inject [MASK]).
- a pre-token tiktoken's regex engine cannot match (1 MB of spaces overflows its backtracking
  stack) is found by the `regex` module instead: the same ids, no error.
- added-token flags lstrip / rstrip / single_word / normalized are not modelled; NFC runs on the
  whole text, added tokens included (they are ASCII in both families).
- the post-processor is ignored: encode never adds BOS / EOS (the LLaDA template writes its BOS);
  clean_up_tokenization_spaces is not applied (false for both families); no tool calling.
Run: python tokenizer.py FOLDER --text "Hello" --chat "What is 2+2?"
"""
import argparse
import json
import os
import time
import unicodedata

import numpy as np
import regex
import tiktoken

# what ByteLevel(use_regex=true) splits with when the file has no Split regex of its own
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
HIDE = "\ue000"  # encode_chat: marks special-token text inside content (a private-use character)
IM_START, IM_END, THINK, END_THINK = "<|im_start|>", "<|im_end|>", "<think>", "</think>"
BOS, EOT = "<|startoftext|>", "<|eot_id|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
ROLE_END, ROLE, END_ROLE = "<|role_end|>", "<role>", "</role>"
# a chat format needs all its markers among the added tokens: Qwen2.5 has no <think>, Llama 3 (same
# headers as LLaDA) has no <|startoftext|>, and LLaDA's Ling-1 tokenizer has <role> but no <|role_end|>
CHAT_FORMATS = {"qwen3": (IM_START, IM_END, THINK, END_THINK),
                "llada": (BOS, HEADER_START, HEADER_END, EOT),
                "ling2": (ROLE_END, ROLE, END_ROLE)}


def bytes_to_unicode():
    """GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves and the other
    68 bytes move to U+0100.., so no token string holds a space or a control character."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: cannot read JSON ({e})") from None


def is_id(i):
    return isinstance(i, int) and not isinstance(i, bool) and i >= 0


def is_kind(part, kind, **flags):
    return (isinstance(part, dict) and part.get("type") == kind
            and all(part.get(k) == v for k, v in flags.items()))


def pre_tokenizer_pattern(pre, path):
    """The regex of Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)], or GPT-2's for a
    lone ByteLevel(use_regex=true); anything else splits text differently, so it is refused."""
    parts = pre.get("pretokenizers") if is_kind(pre, "Sequence") else [pre]
    if len(parts) == 1 and is_kind(parts[0], "ByteLevel", use_regex=True, add_prefix_space=False):
        return GPT2_PATTERN
    if (len(parts) == 2 and is_kind(parts[0], "Split", behavior="Isolated", invert=False)
            and "Regex" in parts[0].get("pattern", {})
            and is_kind(parts[1], "ByteLevel", use_regex=False, add_prefix_space=False)):
        return parts[0]["pattern"]["Regex"]
    # name each part with its flags (not its long regex) so the message shows what is wrong
    found = " + ".join(f"{p.get('type')}{ {k: v for k, v in p.items() if k not in ('type', 'pattern')} }"
                       if isinstance(p, dict) else repr(p) for p in parts)
    raise ValueError(f"{path}: unsupported pre_tokenizer {found} (need Split(Regex, Isolated) + "
                     "ByteLevel(use_regex=false), or ByteLevel(use_regex=true), without add_prefix_space)")


def merges_rebuild_themselves(pieces, pairs):
    """Indices of the merges whose result Hugging Face's BPE does not build from the result's own bytes.
    tiktoken merges any two adjacent parts whose concatenation has a rank (at that rank), and emits a
    pre-token that is a token without merging at all; Hugging Face merges only the listed pairs. The two
    agree on every input exactly when BPE on each merge result ends in that result (necessary: a
    pre-token equal to the result; sufficient: checked exhaustively on small alphabets, see
    tests/test_reliability.py). Example: merges `a b`, `b c`, `a bc`: BPE on "abc" stops at [ab, c],
    tiktoken gives [abc]. pieces[k]: merge k's result as bytes; pairs[k]: its (left, right) as dense ids
    (byte b is b, merge j's result 256 + j, -1 for a token no merge makes). Results of similar length
    run in lockstep with numpy: each step merges, in every row, the lowest-ranked pair (leftmost first)."""
    n_ids = 256 + len(pairs)  # also the rank of "no merge", and the padding id
    pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    usable = (pairs >= 0).all(1)
    keys = pairs[usable, 0] * (n_ids + 1) + pairs[usable, 1]
    order = np.argsort(keys)
    keys, rank = keys[order], np.flatnonzero(usable)[order]

    def lookup(left, right):  # merge rank of each (left, right) pair, n_ids where there is none
        pair = left * (n_ids + 1) + right
        at = np.searchsorted(keys, pair).clip(max=max(len(keys) - 1, 0))
        return np.where(keys[at] == pair, rank[at], n_ids) if len(keys) else np.full_like(pair, n_ids)
    lengths, bad, lo = np.array([len(p) for p in pieces], dtype=np.int64), [], 3
    while lo <= lengths.max(initial=0):  # buckets of lengths [lo, 2 lo), padded to 2 lo - 1
        rows = np.flatnonzero((lengths >= lo) & (lengths < 2 * lo))
        n = lengths[rows]
        parts = np.full((len(rows), 2 * lo - 1), n_ids, dtype=np.int64)
        start = np.repeat(np.cumsum(n) - n, n)
        parts[np.repeat(np.arange(len(rows)), n), np.arange(n.sum()) - start] = \
            np.frombuffer(b"".join(pieces[k] for k in rows), dtype=np.uint8)
        r, lo = lookup(parts[:, :-1], parts[:, 1:]), 2 * lo  # r: rank of each adjacent pair
        while len(rows):
            done = n == 2  # two parts left: they must be the merge's own pair
            bad += rows[done][(parts[done, :2] != pairs[rows[done]]).any(1)].tolist()
            j = r.argmin(1)
            best = r[np.arange(len(rows)), j]
            keep = ~done & (best < n_ids)
            bad += rows[~done & ~keep].tolist()  # stuck before two parts
            rows, parts, r, j, best, n = rows[keep], parts[keep], r[keep], j[keep], best[keep], n[keep] - 1
            at, cols = np.arange(len(rows)), np.arange(parts.shape[1] - 1)
            parts = np.take_along_axis(parts, cols + (cols >= j[:, None]), 1)  # drop part j + 1 ...
            parts[at, j] = 256 + best                                          # ... part j is the merge
            r = np.take_along_axis(r, cols[:-1] + (cols[:-1] >= j[:, None]), 1)
            a, b = (j - 1).clip(min=0), j.clip(max=r.shape[1] - 1)  # the two pairs that changed
            r[at, a] = np.where(j > 0, lookup(parts[at, a], parts[at, a + 1]), r[at, a])
            r[at, b] = np.where(j < r.shape[1], lookup(parts[at, b], parts[at, b + 1]), r[at, b])
    return sorted(bad)


def read_merges(merges, vocab, id_bytes, b2u, path):
    """{merge result: merge index}, in merge order, for merges that tiktoken reproduces exactly."""
    made, split = {}, []  # merge result -> merge index, in merge order; each merge's (left, right)
    for i, m in enumerate(merges):  # "a b" strings in older files, [a, b] lists in newer ones
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise ValueError(f"{path}: merge {i} is {m!r}, not a pair of token strings")
        a, b = pair
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise ValueError(f"{path}: merge {i} {a!r} {b!r} uses or makes a token missing from the "
                             "vocabulary")
        if a + b in made:  # Hugging Face ranks pairs but tiktoken ranks strings: one rank per string
            raise ValueError(f"{path}: merges {made[a + b]} and {i} both make {a + b!r}")
        made[a + b] = i
        split.append((a, b))
    dense = {**{c: b for b, c in b2u.items()}, **{t: 256 + i for t, i in made.items()}}  # else -1: unmade
    bad = merges_rebuild_themselves([id_bytes[vocab[t]] for t in made],
                                    [(dense.get(a, -1), dense.get(b, -1)) for a, b in split])
    if bad:  # tiktoken would emit such a token for its own bytes (or join it from another split): HF never
        a, b = split[bad[0]]
        raise ValueError(f"{path}: merge {bad[0]} {a!r} {b!r}: Hugging Face's BPE on {a + b!r} does not end "
                         f"in that token, so tiktoken cannot reproduce these merges ({len(bad)} such merges)")
    return made


def bpe_tables(vocab, merges, added, path):
    """tiktoken's ranks and special tokens, the rank -> id array (None when rank = id) and the bytes
    of every id. Raises on anything that would make tiktoken disagree with Hugging Face's BPE."""
    b2u = bytes_to_unicode()
    if not isinstance(vocab, dict) or not isinstance(merges, list) or not isinstance(added, list):
        raise ValueError(f"{path}: model.vocab must be an object, model.merges and added_tokens lists")
    for what, items in (("model.vocab", vocab.items()), ("added_tokens", ((t.get("content"), t.get("id"))
                        if isinstance(t, dict) else (t, None) for t in added))):
        for text, i in items:
            if not isinstance(text, str) or not is_id(i):
                raise ValueError(f"{path}: {what} entry {text!r}: {i!r} is not a token string with an "
                                 "id >= 0")
    # str.translate undoes b2u; a byte's own character that b2u moved away becomes U+FFFF, so the
    # latin-1 encode fails on every character outside the byte-level alphabet
    undo = {**{ord(c): b for b, c in b2u.items()}, **{b: 0xFFFF for b, c in b2u.items() if c != chr(b)}}
    id_bytes = {}
    for s, i in vocab.items():
        try:
            id_bytes[i] = s.translate(undo).encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"{path}: token {s!r} is outside the byte-level alphabet") from None
    if len(id_bytes) != len(vocab):
        raise ValueError(f"{path}: two vocabulary tokens share an id")
    missing = [b for b in range(256) if b2u[b] not in vocab]
    if missing:  # tiktoken needs every single byte to fall back on
        raise ValueError(f"{path}: byte 0x{missing[0]:02x} ({b2u[missing[0]]!r}) has no token")
    made = read_merges(merges, vocab, id_bytes, b2u, path)
    made_ids, byte_ids = [vocab[t] for t in made], [vocab[b2u[b]] for b in range(256)]
    # only bytes and merge results get ranks: Hugging Face's BPE can never produce any other token,
    # but tiktoken would emit it on a whole-pre-token match; the others only get decode bytes
    if all(x < y for x, y in zip(made_ids, made_ids[1:])):
        ranks = {id_bytes[i]: i for i in byte_ids + made_ids}
        specials, rank_to_id = {t["content"]: t["id"] for t in added}, None
    else:
        rank_to_id = byte_ids + made_ids + [t["id"] for t in added]
        ranks = {id_bytes[i]: r for r, i in enumerate(rank_to_id[:256 + len(made)])}
        specials = {t["content"]: 256 + len(made) + k for k, t in enumerate(added)}
    for t in added:
        content = t["content"].encode("utf-8")
        if id_bytes.setdefault(t["id"], content) != content:
            raise ValueError(f"{path}: added token {t['content']!r} reuses the id {t['id']} of another token")
    # tiktoken matches added tokens with an alternation in arbitrary order, Hugging Face takes the
    # longest match: the two agree only when no added token is a prefix of another
    names = sorted(specials)
    clash = [a for a, b in zip(names, names[1:]) if b.startswith(a)]
    if clash or "" in specials:
        raise ValueError(f"{path}: added token {(clash or [''])[0]!r} is a prefix of another")
    return ranks, specials, rank_to_id, id_bytes


class Tokenizer:
    """A Hugging Face byte-level BPE tokenizer running on tiktoken; build it with load_tokenizer."""

    def __init__(self, folder):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: tokenizer folder not found")
        path = os.path.join(folder, "tokenizer.json")  # vocab.json + merges.txt alone is not supported
        spec = read_json(path)
        config_path = os.path.join(folder, "tokenizer_config.json")
        config = read_json(config_path) if os.path.exists(config_path) else {}
        if not isinstance(config, dict) or not isinstance(spec, dict):
            raise ValueError(f"{config_path if isinstance(spec, dict) else path}: expected a JSON object")
        try:  # a file that is JSON but not shaped like tokenizer.json lands in the except below
            model, added = spec["model"], spec.get("added_tokens") or []
            if (model.get("type") != "BPE" or model.get("byte_fallback") or model.get("dropout")
                    or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")):
                flags = {k: v for k, v in model.items() if k not in ("vocab", "merges")}
                raise ValueError(f"{path}: model must be a BPE without byte_fallback, dropout or affixes, "
                                 f"got {flags}")
            norm = spec.get("normalizer")
            if is_kind(norm, "Sequence"):
                steps = norm.get("normalizers")
            else:
                steps = [norm] if norm else []
            if not all(is_kind(s, "NFC") for s in steps):
                raise ValueError(f"{path}: unsupported normalizer {json.dumps(norm)} "
                                 "(only NFC is implemented)")
            if not is_kind(spec.get("decoder"), "ByteLevel"):
                raise ValueError(f"{path}: unsupported decoder {json.dumps(spec.get('decoder'))} "
                                 "(need ByteLevel)")
            pattern = pre_tokenizer_pattern(spec.get("pre_tokenizer"), path)
            ranks, specials, self._rank_to_id, self._id_bytes = bpe_tables(model["vocab"], model["merges"],
                                                                            added, path)
            if model.get("ignore_merges") and len(ranks) < len(model["vocab"]):
                # with ignore_merges Hugging Face emits any whole-word token, even the unreachable ones
                raise ValueError(f"{path}: ignore_merges=true with tokens that no merge makes is not "
                                 "supported")
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: unexpected tokenizer.json structure "
                             f"({type(e).__name__}: {e})") from None
        try:
            self._enc = tiktoken.Encoding(os.path.basename(os.path.abspath(folder)), pat_str=pattern,
                                          mergeable_ranks=ranks, special_tokens=specials)
        except ValueError as e:  # e.g. a regex that tiktoken's fancy-regex cannot compile
            raise ValueError(f"{path}: tiktoken rejected the tokenizer: {str(e).splitlines()[0]}") from None
        self.nfc, self.ranks_are_ids = bool(steps), self._rank_to_id is None
        self._pattern, self._ranks, self._pieces = pattern, ranks, None  # for _encode_long
        self.special_ids = {t["content"]: t["id"] for t in added}
        self._special = {t["id"] for t in added if t.get("special")}  # what skip_special_tokens drops
        self.vocab_size = max(self._id_bytes) + 1
        self._read_special_tokens(config, config_path)
        # a chat template, when the folder has one (newer folders keep it in chat_template.jinja),
        # must carry the markers too; the LLaDA template writes its BOS as the bos_token variable
        jinja = os.path.join(folder, "chat_template.jinja")
        template = (config.get("chat_template")
                    or os.path.exists(jinja) and open(jinja, encoding="utf-8").read())
        self.chat_format = next((f for f, marks in CHAT_FORMATS.items()
                                 if all(m in self.special_ids for m in marks)
                                 and all(m in str(template) for m in marks[1:] if template)), None)

    def _read_special_tokens(self, config, config_path):
        """bos_token_id, eos_token_id, pad_token_id, mask_token_id from tokenizer_config.json (None where
        it names none); each must be a single token."""
        for key in ("bos_token", "eos_token", "pad_token", "mask_token"):
            name = config.get(key)  # a string, or a dict with a "content" key
            if not (name is None or isinstance(name, str) or isinstance(name, dict) and isinstance(
                    name.get("content"), str)):
                raise ValueError(f"{config_path}: {key} must be a token string, got {name!r}")
            text = name.get("content") if isinstance(name, dict) else name
            ids = self.encode(text) if name else None
            if ids is not None and len(ids) != 1:
                raise ValueError(f"{config_path}: {key} {name!r} is not a single token")
            setattr(self, key + "_id", ids[0] if ids else None)

    def encode(self, text, specials=True):
        """Text -> ids, no BOS / EOS added. specials=True: added-token text becomes the added token (a
        rendered template); False: it is plain text (what a user wrote: see encode_chat)."""
        text = unicodedata.normalize("NFC", text) if self.nfc else text
        try:
            ranks = self._enc.encode(text, allowed_special="all" if specials else set(),
                                     disallowed_special=())
        except ValueError as e:  # fancy-regex's backtracking stack overflows, e.g. on 1 MB of spaces
            if "regex" not in str(e).lower():
                raise
            ranks = self._encode_long(text, specials)
        return ranks if self._rank_to_id is None else [self._rank_to_id[r] for r in ranks]

    def _encode_long(self, text, specials):
        """encode for text tiktoken's regex engine gives up on: the same pre-tokens, found by the `regex`
        module (tiktoken's own dependency, no backtracking limit), each through tiktoken's BPE alone (an
        encoding whose pattern takes the whole piece), so the ids are exactly those of the regex path."""
        if self._pieces is None:
            self._pieces = tiktoken.Encoding(self._enc.name + "-pieces", pat_str=r"[\s\S]+",
                                             mergeable_ranks=self._ranks, special_tokens={})
        names = sorted(self._enc._special_tokens, key=len, reverse=True) if specials else []
        parts = regex.split(f"({'|'.join(map(regex.escape, names))})", text) if names else [text]
        ranks = []
        for k, part in enumerate(parts):  # odd parts are added tokens
            if k % 2:
                ranks.append(self._enc._special_tokens[part])
            else:
                for piece in regex.finditer(self._pattern, part):
                    ranks += self._pieces.encode_ordinary(piece.group())
        return ranks

    def encode_chat(self, messages, **template_args):
        """The ids of a chat prompt, with the content kept in its place: the template's own markers are
        special tokens, but special-token text inside a message (a question holding "<|im_end|>" or
        "<|mdm_mask|>") is encoded as plain text, so no content can forge a turn or inject a [MASK].
        This deliberately differs from Hugging Face, which renders the template and encodes the whole
        string, content included, with its special tokens. Qwen3's <think> and </think> inside an
        assistant turn stay markers: the template itself parses them out of the content. How: special
        text in the content is swapped for private-use characters, the template rendered, the result cut
        at the (now only real) markers, and the text between them encoded with the swap undone."""
        names = sorted(self.special_ids, key=len, reverse=True) + [HIDE]
        find = regex.compile("|".join(map(regex.escape, names)))

        def hide(text, keep=()):
            if not isinstance(text, str):
                return text  # apply_chat_template says what is wrong with it
            return find.sub(lambda m: m.group() if m.group() in keep else HIDE + chr(0xF0000 + names.index(
                m.group())), text)
        safe = []
        for m in messages:
            keep = (THINK, END_THINK) if isinstance(m, dict) and m.get("role") == "assistant" else ()
            safe.append({**m, **{k: hide(m[k], keep) for k in ("content", "reasoning_content") if k in m}}
                        if isinstance(m, dict) else m)
        text = self.apply_chat_template(safe, **template_args)
        parts = regex.split(f"({'|'.join(map(regex.escape, names[:-1]))})", text) if names[:-1] else [text]
        ids = []
        for k, part in enumerate(parts):  # odd parts are the template's markers
            ids += [self.special_ids[part]] if k % 2 else self.encode(regex.sub(
                HIDE + "(.)", lambda m: names[ord(m.group(1)) - 0xF0000], part), specials=False)
        return ids

    def decode_bytes(self, ids, skip_special_tokens=False):
        """Ids -> raw bytes, for streaming, where one character can straddle two tokens."""
        ids = [int(i) for i in ids]  # accepts tensors and numpy arrays too
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special]
        try:
            return b"".join([self._id_bytes[i] for i in ids])
        except KeyError as e:
            raise ValueError(f"unknown token id {e.args[0]} (vocab_size {self.vocab_size})") from None

    def decode(self, ids, skip_special_tokens=False):
        """Ids -> text; skip_special_tokens drops the added tokens flagged special (not <think>)."""
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt=True, enable_thinking=True, tools=None):
        """The prompt string the official jinja template renders (tokenize=False)."""
        if self.chat_format is None:
            raise ValueError("this tokenizer has no chat format we know (Qwen3 / SDAR-Chat, LLaDA-Instruct "
                             "or Ling-2.0 / LLaDA2.0)")
        for m in messages:  # multimodal content lists are out of scope
            if not (isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise TypeError(f"each message needs a string role and content, got {m!r}")
        if self.chat_format == "llada":
            # as the official template: BOS before the first turn, content stripped, and the
            # assistant header ALWAYS appended (it ignores add_generation_prompt)
            turns = [f"{HEADER_START}{m['role']}{HEADER_END}\n\n{m['content'].strip()}{EOT}"
                     for m in messages]
            return (BOS if messages else "") + "".join(turns) + f"{HEADER_START}assistant{HEADER_END}\n\n"
        if tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
            raise NotImplementedError("tool calls and tool results are not supported by this chat template "
                                      "port")
        if self.chat_format == "ling2":
            return ling2_chat(messages, add_generation_prompt)
        last_query = last_query_index(messages)
        out = []
        for i, m in enumerate(messages):
            role, content = m["role"], m["content"]
            if role in ("system", "user"):  # a first system turn renders the same way as a later one
                out.append(f"{IM_START}{role}\n{content}{IM_END}\n")
            elif role == "assistant":
                reasoning, content = split_reasoning(m)
                if i > last_query and (i == len(messages) - 1 or reasoning):
                    reasoning, content = reasoning.strip("\n"), content.lstrip("\n")
                    out.append(f"{IM_START}assistant\n{THINK}\n{reasoning}\n{END_THINK}\n\n"
                               f"{content}{IM_END}\n")
                else:
                    out.append(f"{IM_START}assistant\n{content}{IM_END}\n")
            else:  # the official template silently drops unknown roles; we would rather say so
                raise ValueError(f"role {role!r} is not supported by the Qwen3 chat template")
        if add_generation_prompt:
            out.append(f"{IM_START}assistant\n")
            if enable_thinking is False:  # jinja's `is false`: only the literal False counts
                out.append(f"{THINK}\n\n{END_THINK}\n\n")
        return "".join(out)


def last_query_index(messages):
    """Qwen3's and Ling-2.0's templates find the last real user query (a user turn that only wraps a tool
    response does not count); assistant turns after it may show their reasoning, earlier ones never do."""
    tool_response = lambda text: text.startswith("<tool_response>") and text.endswith("</tool_response>")
    users = [i for i, m in enumerate(messages) if m["role"] == "user" and not tool_response(m["content"])]
    return users[-1] if users else len(messages) - 1


def split_reasoning(message):
    """(reasoning, content) of an assistant turn: its reasoning_content, or the <think> part of its
    content (then taken out of it)."""
    content, reasoning = message["content"], message.get("reasoning_content")
    if not isinstance(reasoning, str):  # then the reasoning hides in the content
        reasoning = ""
        if END_THINK in content:
            reasoning = content.split(END_THINK)[0].rstrip("\n").split(THINK)[-1].lstrip("\n")
            content = content.split(END_THINK)[-1].lstrip("\n")
    return reasoning, content


def ling2_chat(messages, add_generation_prompt):
    """Ling-2.0's template (LLaDA2.0-mini): a system turn always opens, holding the first message's text if
    that message is a system one and the template's fixed "detailed thinking off" (no switch turns it on);
    every turn is <role>ROLE</role>text<|role_end|> with roles SYSTEM, HUMAN and ASSISTANT."""
    first_system = messages[0]["content"] + "\n" if messages and messages[0]["role"] == "system" else ""
    out = [f"{ROLE}SYSTEM{END_ROLE}{first_system}detailed thinking off{ROLE_END}"]
    last_query = last_query_index(messages)
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system" and i == 0:
            continue  # already in the opening turn
        if role in ("system", "user"):
            out.append(f"{ROLE}{'HUMAN' if role == 'user' else 'SYSTEM'}{END_ROLE}{m['content']}{ROLE_END}")
        elif role == "assistant":
            reasoning, content = split_reasoning(m)
            if i > last_query and reasoning:
                reasoning, content = reasoning.strip("\n"), content.lstrip("\n")
                content = f"\n{THINK}\n{reasoning}\n{END_THINK}\n\n{content}"
            out.append(f"{ROLE}ASSISTANT{END_ROLE}{content}{ROLE_END}")
        else:  # the official template silently drops unknown roles; we would rather say so
            raise ValueError(f"role {role!r} is not supported by the Ling-2.0 chat template")
    return "".join(out) + (f"{ROLE}ASSISTANT{END_ROLE}" if add_generation_prompt else "")


def load_tokenizer(folder):
    """Load a Hugging Face tokenizer folder (tokenizer.json and, if present, tokenizer_config.json)."""
    return Tokenizer(folder)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Encode, decode and render chat prompts with a tokenizer "
                                             "folder.")
    ap.add_argument("folder", help="folder holding tokenizer.json and (optionally) tokenizer_config.json")
    ap.add_argument("--text", help="text to encode; prints the ids and the decoded round trip")
    ap.add_argument("--chat", help="one user message; prints the rendered chat prompt and its ids")
    ap.add_argument("--no-thinking", action="store_true",
                    help="Qwen3 only: render with enable_thinking=False")
    args = ap.parse_args()
    t0 = time.time()
    tok = load_tokenizer(args.folder)
    print(f"loaded in {time.time() - t0:.2f}s: vocab_size {tok.vocab_size}, chat format {tok.chat_format}, "
          f"bos {tok.bos_token_id}, eos {tok.eos_token_id}, pad {tok.pad_token_id}, "
          f"ranks are ids {tok.ranks_are_ids}")
    if args.text is not None:
        ids = tok.encode(args.text)
        want = unicodedata.normalize("NFC", args.text) if tok.nfc else args.text
        back = tok.decode(ids)
        print(f"ids ({len(ids)}): {ids}\ndecoded: {back!r}\nround trip exact (after NFC): {back == want}")
    if args.chat is not None:
        prompt = tok.apply_chat_template([{"role": "user", "content": args.chat}],
                                         enable_thinking=not args.no_thinking)
        print(f"prompt: {prompt!r}\nids: {tok.encode(prompt)}")
