"""picorag.analyze: English stemming and stopwords, Chinese words + bigrams, ordinals, settings, detect_language."""

from __future__ import annotations

import doctest

import jieba
import pytest
import Stemmer

from picorag import analyze
from picorag.analyze import ANALYZER_VERSION, STOPWORDS_EN, Analyzer, detect_language, is_cjk_char, stopwords_zh
from picorag.records import PicoragError

A = Analyzer()


def bigrams(run: str) -> list[str]:
    return [run[i : i + 2] for i in range(len(run) - 1)]


def test_module_example_runs():
    assert doctest.testmod(analyze).failed == 0


# -- English -------------------------------------------------------------------------------------


def test_english_lowercase_stopwords_and_snowball_stems():
    assert A.tokenize("The quick brown Foxes JUMPED over the lazy dogs.") == [
        "quick", "brown", "fox", "jump", "over", "lazi", "dog"
    ]


def test_english_stems_are_pystemmer_snowball_english():
    words = ["running", "runners", "generalization", "studies", "studying", "cats", "happily", "relational"]
    assert A.tokenize(" ".join(words)) == Stemmer.Stemmer("english").stemWords(words)


def test_lucene_english_stopwords():
    lucene = (
        "a an and are as at be but by for if in into is it no not of on or such that the their then there "
        "these they this to was will with"
    ).split()
    assert sorted(STOPWORDS_EN) == sorted(lucene)
    assert A.tokenize(" ".join(lucene).upper()) == []
    # words outside Lucene's set are kept, even common ones
    assert A.tokenize("he from what which") == ["he", "from", "what", "which"]


def test_english_word_rules():
    # single letters carry no signal; digits are words; punctuation separates words; underscores join them
    assert A.tokenize("x 3 42 e-mail COVID-19 foo_bar, end.") == ["42", "mail", "covid", "19", "foo_bar", "end"]
    assert A.tokenize("") == [] and A.tokenize("  \n\t ") == [] and A.tokenize("!!! ... ???") == []


def test_non_ascii_latin_words():
    assert A.tokenize("Café naïve") == ["café", "naïv"]


# -- Chinese -------------------------------------------------------------------------------------


def test_chinese_jieba_words_then_bigrams():
    assert A.tokenize("盗窃罪的构成要件") == ["盗窃罪", "构成", "要件", *bigrams("盗窃罪的构成要件")]


@pytest.mark.parametrize("text", ["我们的法律规定了什么", "中华人民共和国刑法", "合同编通则", "数据安全保护义务"])
def test_chinese_is_jieba_precise_mode_minus_stopwords_plus_bigrams(text):
    words = [w for w in jieba.lcut(text) if w not in stopwords_zh()]
    assert A.tokenize(text) == words + bigrams(text)


def test_chinese_stopwords_are_bundled_and_dropped_from_words():
    stop = stopwords_zh()
    assert {"的", "了", "是", "我们", "什么", "请问"} <= stop
    assert len(stop) > 100 and "法律" not in stop and "合同" not in stop
    words = Analyzer(cjk_bigrams=False).tokenize("请问我们的法律规定了什么")
    assert words == ["法律", "规定"]


def test_chinese_single_characters_are_kept():
    assert A.tokenize("法") == ["法"]
    assert A.tokenize("人") == ["人"]


def test_punctuation_splits_chinese_runs_and_bigrams_never_cross_it():
    terms = A.tokenize("合同，无效。")
    assert terms == ["合同", "合同", "无效", "无效"]
    assert "同无" not in terms


@pytest.mark.parametrize(
    "label",
    ["第一百三十三条之一", "第一条", "第二十条", "第三编", "第二章", "第一节", "第二款", "第三项", "第一千二百六十条",
     "第〇条", "第两条"],
)
def test_ordinal_labels_are_kept_whole(label):
    assert A.tokenize(label) == [label]
    assert A.tokenize(f"依照{label}的规定") == ["依照", *bigrams("依照"), label, "规定", *bigrams("的规定")]


def test_ordinal_label_is_not_cut_into_number_fragments():
    terms = A.tokenize("刑法第一百三十三条之一规定了危险驾驶罪")
    assert "第一百三十三条之一" in terms
    assert not {"一百", "百三", "三十", "十三", "三条", "条之", "之一", "一百三十"} & set(terms)


@pytest.mark.parametrize(("text", "label"), [("第5条", "第5条"), ("第133条之一", "第133条之一"), ("第12章", "第12章")])
def test_ordinal_labels_with_arabic_digits_are_kept_whole(text, label):
    assert A.tokenize(text) == [label]
    assert label in A.tokenize(f"根据{text}规定")


def test_consecutive_ordinals():
    assert A.tokenize("第十五条第二款第三项") == ["第十五条", "第二款", "第三项"]


def test_ordinal_needs_a_unit():
    # no 编/章/节/条/款/项 after the number: not an ordinal label, jieba and bigrams decide
    assert A.tokenize("第一名") == [w for w in jieba.lcut("第一名") if w not in stopwords_zh()] + bigrams("第一名")


# -- mixed text and settings ---------------------------------------------------------------------


def test_mixed_chinese_and_english():
    assert A.tokenize("BM25检索算法ranking functions") == [
        "bm25", "检索", "算法", *bigrams("检索算法"), "rank", "function"
    ]
    assert A.tokenize("用Python写RAG系统") == ["用", "python", "写", "rag", "系统", "系统"]


def test_settings_change_the_terms():
    assert Analyzer(stopwords=False).tokenize("我们的法律 the laws") == [
        "我们", "的", "法律", *bigrams("我们的法律"), "the", "law"
    ]
    assert Analyzer(cjk_bigrams=False).tokenize("我们的法律规定") == ["法律", "规定"]
    assert Analyzer(stemmer="none").tokenize("Running Runners") == ["running", "runners"]
    assert Analyzer(stemmer="porter").tokenize("generalization") == ["gener"]


def test_tokenize_is_deterministic_across_instances():
    text = "《中华人民共和国民法典》第一千零七十九条规定了诉讼离婚。Divorce proceedings, article 1079."
    assert Analyzer().tokenize(text) == Analyzer().tokenize(text) == A.tokenize(text)


def test_settings_round_trip_through_a_dict():
    for analyzer in [Analyzer(), Analyzer(stemmer="none", stopwords=False, cjk_bigrams=False)]:
        d = analyzer.to_dict()
        assert d == {"stemmer": analyzer.stemmer, "stopwords": analyzer.stopwords,
                     "cjk_bigrams": analyzer.cjk_bigrams, "version": ANALYZER_VERSION}
        assert Analyzer.from_dict(d) == analyzer
    assert Analyzer.from_dict({}) == Analyzer()
    assert Analyzer.from_dict({"stemmer": "none", "future_option": 1}) == Analyzer(stemmer="none")


def test_newer_analyzer_version_is_a_clear_error():
    with pytest.raises(PicoragError, match=f"analyzer version {ANALYZER_VERSION + 1}.*upgrade picorag") as info:
        Analyzer.from_dict({"version": ANALYZER_VERSION + 1})
    assert "\n" not in str(info.value)


# -- language detection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hello world", "en"),
        ("中华人民共和国", "zh"),
        ("", "en"),
        ("12345 !!!", "en"),
        ("。，！", "en"),
        ("abcd 中", "zh"),  # 1 CJK of 5 letters: exactly a fifth
        ("abcde 中", "en"),  # 1 of 6: below a fifth
        ("用Python写RAG系统", "zh"),
        ("The court cited 刑法 in its judgment on the appeal", "en"),
    ],
)
def test_detect_language(text, language):
    assert detect_language(text) == language


@pytest.mark.parametrize(("ch", "cjk"), [("中", True), ("㐀", True), ("豈", True), ("a", False), ("。", False),
                                          ("，", False), ("あ", False), ("1", False)])
def test_is_cjk_char(ch, cjk):
    assert is_cjk_char(ch) is cjk
