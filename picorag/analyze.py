"""Text -> BM25 terms. One analyzer handles English, Chinese and text that mixes both.

Text is cut into runs of CJK and non-CJK characters. CJK runs give jieba's words *plus* every
character bigram: words reward exact terms, bigrams let 撞死 meet 致人死亡-style variants that a
word segmenter splits differently (Lucene's CJK analyzer indexes bigrams for the same reason).
On the law eval set this beat jieba's overlapping search-mode cut (hit@5 1.00 vs 0.98, MRR@5
0.983 vs 0.963; see docs/BENCHMARKS.md). Other runs are lowercased word tokens stemmed with
Snowball (PyStemmer). Stopwords are dropped in both languages. The analyzer's settings are stored
in the KB manifest so queries are always cut the way the index was.

>>> Analyzer().tokenize("The runners are running 刑法规定")
['runner', 'run', '刑法', '规定', '刑法', '法规', '规定']
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from .records import PicoragError

ANALYZER_VERSION = 1

# CJK Unified Ideographs (+ extension A and compatibility block): the scripts jieba segments.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUNS = re.compile(f"([{_CJK}]+)|([^{_CJK}]+)")
_WORD = re.compile(r"\w\w+")  # like bm25s/scikit-learn: single letters carry no signal in English
# Ordinal labels such as 第一百三十三条之一 or 第三章 name a unit of the document; jieba would cut them
# into 一百 / 百三 / 三条 fragments that match unrelated numbers, so they are kept whole.
_ORDINAL = re.compile(r"第[零一二三四五六七八九十百千万两〇0-9]+[编章节条款项](?:之[一二三四五六七八九十]+)?")
# Lucene's English stop set, the one bm25s uses by default.
STOPWORDS_EN = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)


@lru_cache(maxsize=1)
def stopwords_zh() -> frozenset[str]:
    text = resources.files("picorag").joinpath("data/stopwords_zh.txt").read_text(encoding="utf-8")
    return frozenset(w for w in text.split() if w)


@lru_cache(maxsize=1)
def _jieba():  # imported and initialised once per process: loading its dictionary takes ~0.5 s
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


@lru_cache(maxsize=4)
def _stemmer(language: str):
    import Stemmer

    return Stemmer.Stemmer(language)


def is_cjk_char(ch: str) -> bool:
    return bool(re.match(f"[{_CJK}]", ch))


def detect_language(text: str) -> str:
    """'zh' when CJK characters make up at least a fifth of the letters, else 'en'."""
    cjk = len(re.findall(f"[{_CJK}]", text))
    letters = cjk + len(re.findall(r"[A-Za-z]", text))
    return "zh" if letters and cjk / letters >= 0.2 else "en"


@dataclass(frozen=True)
class Analyzer:
    """Settings that decide how text becomes terms; saved in the manifest as a dict."""

    stemmer: str = "english"  # a Snowball language, or "none"
    stopwords: bool = True
    cjk_bigrams: bool = True
    version: int = ANALYZER_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Analyzer:
        if d.get("version", 0) > ANALYZER_VERSION:
            raise PicoragError(
                f"the knowledge base uses analyzer version {d['version']}; this picorag knows "
                f"{ANALYZER_VERSION} — upgrade picorag"
            )
        return cls(**{k: d[k] for k in ("stemmer", "stopwords", "cjk_bigrams", "version") if k in d})

    def tokenize(self, text: str) -> list[str]:
        # Ordinals are found in the whole text, not per CJK run: the digits of 第5条 are not CJK, so they
        # would split it into the runs 第 / 5 / 条 before an ordinal could be recognised.
        words: list[str] = []
        pos = 0
        for m in _ORDINAL.finditer(text):
            words.extend(self._cut_runs(text[pos : m.start()]))
            words.append(m.group())
            pos = m.end()
        words.extend(self._cut_runs(text[pos:]))
        return words

    def _cut_runs(self, text: str) -> list[str]:
        words: list[str] = []
        for cjk, other in _RUNS.findall(text):
            if cjk:
                words.extend(self._cut_words(cjk, stopwords_zh() if self.stopwords else frozenset()))
            else:
                words.extend(self._cut_other(other))
        return words

    def _cut_words(self, run: str, stop: frozenset[str]) -> list[str]:
        if not run:
            return []
        words = [w for w in _jieba().lcut(run) if w not in stop]
        if self.cjk_bigrams:
            words += [run[i : i + 2] for i in range(len(run) - 1)]
        return words

    def _cut_other(self, run: str) -> list[str]:
        words = [w for w in _WORD.findall(run.lower()) if not (self.stopwords and w in STOPWORDS_EN)]
        if self.stemmer != "none" and words:
            words = _stemmer(self.stemmer).stemWords(words)
        return words
