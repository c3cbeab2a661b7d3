"""Byte-level BPE tokenizer, minbpe-style, that learns the same merges and tokens as HF `tokenizers`' BPE.

Text is cut into chunks by PATTERN (GPT-4's split pattern, rewritten for the stdlib `re`); each chunk's UTF-8
bytes start out as ids 0..255 and training repeatedly merges the most frequent adjacent pair into a new id.
Chunks are never merged across, so training only has to look at each distinct chunk once, weighted by its count.
Special tokens (BOS and start/end markers for the chat roles system, retrieval, user, assistant) get the ids
after the merges. The model is saved as JSON: the pattern, the merges in order, and the special tokens.

>>> tok = Tokenizer()
>>> tok.train(["aaabdaaabac"], vocab_size=256 + 3, special_tokens=[])
>>> tok.encode("aaabdaaabac")  # the Wikipedia example: X=ZY, Y=ab, Z=aa
[258, 100, 258, 97, 99]
>>> tok.decode([258, 100])
'aaabd'
"""

from __future__ import annotations

import heapq
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Literal

from tqdm import tqdm

FORMAT_VERSION = 1

# GPT-4's pattern with \p{L} -> [^\W\d_] (letters: word chars minus digits and underscore) and \p{N} -> \d,
# because stdlib `re` has no Unicode property classes. The underscore is spelled out where GPT-4 has
# "not a letter or number". Every character is matched by some branch, so the chunks concatenate to the text.
PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|(?:[^\r\n\w]|_)?+[^\W\d_]+|\d{1,3}| ?(?:[^\s\w]|_)++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

ROLES = ("system", "retrieval", "user", "assistant")
SPECIAL_TOKENS = ["<|bos|>"] + [f"<|{role}_{edge}|>" for role in ROLES for edge in ("start", "end")]

# HF's trainer breaks ties between equally frequent pairs by the smaller (id, id), and its 256 base ids are
# GPT-2's byte->char table sorted by char: the printable bytes first, then the others, each in byte order.
# _TIE_KEY[b] is that id for byte b; merged tokens sort after all bytes, by creation order (as in HF).
_PRINTABLE = [*range(33, 127), *range(161, 173), *range(174, 256)]
_HF_ORDER = _PRINTABLE + [b for b in range(256) if b not in set(_PRINTABLE)]
_TIE_KEY = [0] * 256
for _rank, _byte in enumerate(_HF_ORDER):
    _TIE_KEY[_byte] = _rank


class Tokenizer:
    """Byte-level BPE with special tokens; `vocab[id]` is the token's bytes, `special_tokens[str]` its id.

    >>> tok = Tokenizer()
    >>> tok.train(["the cat sat on the mat"] * 3, vocab_size=256 + 5 + len(SPECIAL_TOKENS))
    >>> tok.decode(tok.encode_chat([{"role": "user", "content": "the mat"}]))
    '<|bos|><|user_start|>the mat<|user_end|>'
    """

    def __init__(self, pattern: str = PATTERN, special_tokens: list[str] | None = None):
        self._set_model(pattern, [], list(SPECIAL_TOKENS if special_tokens is None else special_tokens))

    def _set_model(self, pattern: str, merges: list[tuple[int, int]], specials: list[str]) -> None:
        # HF gives a merge whose bytes already name a token that token's id instead of a new one (we have not
        # seen it happen, but follow suit). Replaying the merges in order rebuilds the ids, so JSON needs no vocab.
        self.pattern = pattern
        self._split = re.compile(pattern)
        self.merges = list(merges)
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        id_of = {b: i for i, b in self.vocab.items()}
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}  # pair -> (rank, new id); later ranks win
        for rank, (a, b) in enumerate(self.merges):
            new = id_of.setdefault(self.vocab[a] + self.vocab[b], len(self.vocab))
            self.vocab[new] = self.vocab[a] + self.vocab[b]
            self._ranks[(a, b)] = (rank, new)
        self.special_tokens = {s: len(id_of) + k for k, s in enumerate(specials)}
        self.vocab.update((i, s.encode("utf-8")) for s, i in self.special_tokens.items())
        self._special_split = re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len)[::-1])) + ")")
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------------ training

    def train(
        self,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: list[str] | None = None,
        min_frequency: int = 0,
        progress: bool = False,
    ) -> None:
        """Learn merges until the vocabulary (special tokens included) has `vocab_size` entries.

        Same result as HF `BpeTrainer(vocab_size, min_frequency, initial_alphabet=ByteLevel.alphabet())` fed
        the same chunks: the most frequent pair wins, ties go to the smaller pair in HF's id order.
        `special_tokens` defaults to the tokenizer's own (SPECIAL_TOKENS unless given to the constructor).
        """
        specials = list(self.special_tokens if special_tokens is None else special_tokens)
        if vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size must be at least {256 + len(specials)} (bytes + special tokens)")
        counts = Counter(chunk for text in texts for chunk in self._split.findall(text))
        words = [list(chunk.encode("utf-8")) for chunk in counts]
        freqs = list(counts.values())

        # Pair counts over distinct chunks, and for each pair the chunks it occurs in. After a merge only the
        # chunks that contained the pair are rewritten, and only the pairs around each merge site change.
        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for i, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                where[pair].add(i)

        # Max-heap of (count, HF tie key) with lazy updates: an entry whose count is stale is re-pushed with the
        # current count when it surfaces. Each entry carries the chunks to rewrite (HF's `Merge.pos`).
        tie_key = list(_TIE_KEY)
        heap: list = []
        seq = 0

        def push(pair: tuple[int, int], count: int, chunks: set[int]) -> None:
            nonlocal seq
            heapq.heappush(heap, (-count, tie_key[pair[0]], tie_key[pair[1]], seq, pair, chunks))
            seq += 1

        for pair, chunks in where.items():
            push(pair, pair_counts[pair], chunks)

        byte_strings = [bytes([i]) for i in range(256)]
        id_of = {b: i for i, b in enumerate(byte_strings)}
        merges: list[tuple[int, int]] = []
        bar = tqdm(total=vocab_size - len(specials), initial=256, desc="bpe merges", disable=not progress)
        while len(byte_strings) + len(specials) < vocab_size and heap:
            neg_count, _, _, _, pair, chunks = heapq.heappop(heap)
            if -neg_count != pair_counts[pair]:
                push(pair, pair_counts[pair], chunks)
                continue
            if -neg_count < 1 or -neg_count < min_frequency:
                break
            a, b = pair
            new_bytes = byte_strings[a] + byte_strings[b]
            new = id_of.setdefault(new_bytes, len(byte_strings))
            if new == len(byte_strings):
                byte_strings.append(new_bytes)
                tie_key.append(new)
                bar.update(1)
            merges.append(pair)
            formed: dict[tuple[int, int], set[int]] = defaultdict(set)
            for i in chunks:
                _merge_in_word(words[i], a, b, new, freqs[i], i, pair_counts, formed)
            for p, where_formed in formed.items():
                if pair_counts[p] > 0:
                    push(p, pair_counts[p], where_formed)
        bar.close()
        self._set_model(self.pattern, merges, specials)

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, allowed_special: Literal["all", "none"] = "none") -> list[int]:
        """Token ids of `text`. With "none" (the default) special-token strings in the text are plain text, so
        retrieved documents or user input cannot forge a role marker; "all" turns them into their ids.

        >>> tok = Tokenizer()
        >>> tok.encode("<|bos|>hi", allowed_special="all") == [tok.special_tokens["<|bos|>"], 104, 105]
        True
        """
        if allowed_special == "none" or not self.special_tokens:
            return self._encode_ordinary(text)
        if allowed_special != "all":
            raise ValueError(f'allowed_special must be "all" or "none", not {allowed_special!r}')
        ids: list[int] = []
        for k, part in enumerate(self._special_split.split(text)):
            # re.split with one capture group alternates text, special, text, ...
            if k % 2:
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self._encode_ordinary(part))
        return ids

    def encode_chat(self, messages: Iterable[dict], add_assistant_start: bool = False) -> list[int]:
        """`<|bos|>` then `<|role_start|>content<|role_end|>` per message; roles are system, retrieval, user,
        assistant. With `add_assistant_start` the ids end with `<|assistant_start|>`, ready for generation."""
        special = self.special_tokens
        ids = [special["<|bos|>"]]
        for message in messages:
            role = message["role"]
            if role not in ROLES:
                raise ValueError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
            ids.append(special[f"<|{role}_start|>"])
            ids.extend(self.encode(message["content"]))
            ids.append(special[f"<|{role}_end|>"])
        if add_assistant_start:
            ids.append(special["<|assistant_start|>"])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`. A valid text round-trips exactly; a cut through a multi-byte character (a partial
        decode while streaming) shows U+FFFD, and `b"".join(tok.vocab[i] for i in ids)` gives the raw bytes."""
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in self._split.findall(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                if len(cache) >= 200_000:  # bound memory on long streams of distinct chunks
                    cache.clear()
                chunk_ids = cache[chunk] = self._merge_chunk(list(chunk.encode("utf-8")))
            ids.extend(chunk_ids)
        return ids

    def _merge_chunk(self, ids: list[int]) -> list[int]:
        # HF's Word::merge_all: a heap of (rank, position) over a linked list of live symbols, so the lowest-rank
        # pair merges first (leftmost among equals). Same tokens as minbpe's "find the best pair, merge it
        # everywhere, repeat", but O(n log n): 6x faster on long Chinese chunks.
        ranks = self._ranks
        n = len(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        heap = [(r[0], i, r[1]) for i in range(n - 1) if (r := ranks.get((ids[i], ids[i + 1])))]
        heapq.heapify(heap)
        while heap:
            _, i, new = heapq.heappop(heap)
            j = nxt[i]
            if ids[i] < 0 or j >= n or ranks.get((ids[i], ids[j]), (0, -1))[1] != new:
                continue  # the symbol was merged away, or the pair at i changed since this entry was pushed
            ids[i], ids[j] = new, -1
            k = nxt[i] = nxt[j]
            if k < n:
                prv[k] = i
                if r := ranks.get((new, ids[k])):
                    heapq.heappush(heap, (r[0], i, r[1]))
            if prv[i] >= 0 and (r := ranks.get((ids[prv[i]], new))):
                heapq.heappush(heap, (r[0], prv[i], r[1]))
        return [t for t in ids if t >= 0]

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as JSON (merges as id pairs in order; ids are rebuilt on load)."""
        model = {
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": list(self.special_tokens),
            "merges": [list(pair) for pair in self.merges],
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(model, f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a model written by `save`."""
        with open(path, encoding="utf-8") as f:
            model = json.load(f)
        if model.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: tokenizer format version {model.get('version')}, expected {FORMAT_VERSION}")
        tok = cls()
        tok._set_model(model["pattern"], [tuple(pair) for pair in model["merges"]], model["special_tokens"])
        return tok


def _merge_in_word(word, a, b, new, freq, i, pair_counts, formed) -> None:
    """Replace (a, b) by `new` left to right in `word`, updating the neighbours' pair counts like HF's
    Word::merge (the merged pair's own count is left as is), and note where new pairs were formed."""
    j = 0
    while True:
        try:
            j = word.index(a, j)
        except ValueError:
            return
        if j + 1 >= len(word):
            return
        if word[j + 1] != b:
            j += 1
            continue
        if j > 0:
            left = word[j - 1]
            pair_counts[(left, a)] -= freq
            pair_counts[(left, new)] += freq
            formed[(left, new)].add(i)
        word[j : j + 2] = [new]
        if j + 1 < len(word):
            right = word[j + 1]
            pair_counts[(b, right)] -= freq
            pair_counts[(new, right)] += freq
            formed[(new, right)].add(i)
        j += 1

