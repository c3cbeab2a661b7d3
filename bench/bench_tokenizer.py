"""Tokenizer benchmark: picorag's byte-level BPE vs HF `tokenizers` trained on the same ~10 MB.

    .venv/bin/python bench/bench_tokenizer.py [--mb 10] [--vocab 8192]

Training text: the law corpus (民法典 and 宪法, one item per line) plus Wikipedia passages from the top of
passages.jsonl.gz until --mb megabytes. Held out for encoding: the next 2 MB of passages (en) and 刑法 (zh).
One thread everywhere (HF's rayon pool capped before import). Tokenizers compared:

  picorag      picorag.tokenizer.Tokenizer, PATTERN split, nanochat chat special tokens
  HF same      HF BpeTrainer fed picorag's chunks (ByteLevel(use_regex=False)): the exactness reference,
               must learn the same merges and produce the same tokens. Its encode speed is timed on raw
               text with Split(Regex(PATTERN)) in front, the way one would deploy it.
  HF GPT-2     HF's usual byte-level setup (ByteLevel with GPT-2's regex) on the raw text, for compression

Writes bench/out/tokenizer.md and the trained model bench/out/tokenizer.json, and prints the report.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import gzip
import json
import re

from common import limit_threads

limit_threads(1)  # RAYON_NUM_THREADS=1 before `tokenizers` starts its pool

from common import DATA, OUT, cpu_info, git_commit, md_table, timed2, versions, write_text
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from picorag.tokenizer import PATTERN, SPECIAL_TOKENS, Tokenizer


def load_texts(mb: float) -> tuple[list[str], dict[str, list[str]]]:
    train = []
    for name in ("minfadian.txt", "xianfa.txt"):
        train += (DATA / "law" / "corpus" / name).read_text(encoding="utf-8").splitlines(keepends=True)
    size, held, held_size = sum(len(t.encode()) for t in train), [], 0
    with gzip.open(DATA / "wiki" / "passages.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if size < mb * 1e6:
                train.append(text)
                size += len(text.encode())
            elif held_size < 2e6:
                held.append(text)
                held_size += len(text.encode())
            else:
                break
    zh = (DATA / "law" / "corpus" / "xingfa.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    return train, {"en": held, "zh": zh}


def hf_bpe(vocab_size: int, gpt2_regex: bool) -> tuple[HFTokenizer, trainers.BpeTrainer]:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=gpt2_regex)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return hf, trainer


def hf_token_bytes(hf: HFTokenizer) -> dict[int, bytes]:
    """HF id -> token bytes, undoing GPT-2's byte->char table (special tokens map to their UTF-8)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    char_to_byte = {chr(b): b for b in printable} | {chr(256 + k): b for k, b in enumerate(others)}
    return {i: s.encode() if s in SPECIAL_TOKENS else bytes(char_to_byte[c] for c in s)
            for s, i in hf.get_vocab().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=10.0, help="megabytes of training text")
    ap.add_argument("--vocab", type=int, default=8192, help="vocabulary size, special tokens included")
    args = ap.parse_args()

    train, held = load_texts(args.mb)
    split = re.compile(PATTERN)
    train_mb = sum(len(t.encode()) for t in train) / 1e6
    held_mb = {k: sum(len(t.encode()) for t in v) / 1e6 for k, v in held.items()}
    rows, tokens, raw_split_diff = [], {}, {}

    OUT.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer()
    wall, cpu, _ = timed2(lambda: tok.train(train, args.vocab))
    tok.save(OUT / "tokenizer.json")
    row = ["picorag", cpu, len(tok.merges)]
    for name, texts in held.items():
        fresh = Tokenizer.load(OUT / "tokenizer.json")  # cold chunk cache
        enc_wall, enc_cpu, ids = timed2(lambda t=fresh, x=texts: [t.encode(s) for s in x])
        tokens[("picorag", name)] = [tok.vocab[i] for seq in ids for i in seq]
        row += [held_mb[name] / enc_cpu, held_mb[name] * 1e6 / len(tokens[("picorag", name)])]
    rows.append(row)

    split_s, _, chunks = timed2(lambda: [c for t in train for c in split.findall(t)])
    hf, trainer = hf_bpe(args.vocab, gpt2_regex=False)
    _, hf_cpu, _ = timed2(lambda: hf.train_from_iterator(chunks, trainer))
    to_bytes = hf_token_bytes(hf)
    hf_merges = [tuple(to_bytes[hf.token_to_id(p)] for p in m) for m in json.loads(hf.to_str())["model"]["merges"]]
    same_merges = hf_merges == [(tok.vocab[a], tok.vocab[b]) for a, b in tok.merges]
    row = ["HF same chunks", hf_cpu + split_s, len(hf_merges)]
    for name, texts in held.items():
        encs = hf.encode_batch([c for t in texts for c in split.findall(t)])
        tokens[("hf", name)] = [to_bytes[i] for e in encs for i in e.ids]
    # Oniguruma reads \w differently from `re` (combining marks, '½'), so a few chunks differ on raw text
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    for name, texts in held.items():
        _, enc_cpu, encs = timed2(lambda x=texts: hf.encode_batch(x))
        raw_split_diff[name] = sum([to_bytes[i] for i in e.ids] != [tok.vocab[i] for i in tok.encode(t)]
                                   for e, t in zip(encs, texts))
        row += [held_mb[name] / enc_cpu, held_mb[name] * 1e6 / len(tokens[("hf", name)])]
    rows.append(row)
    same_tokens = all(tokens[("picorag", k)] == tokens[("hf", k)] for k in held)

    gpt2, trainer = hf_bpe(args.vocab, gpt2_regex=True)
    _, gpt2_cpu, _ = timed2(lambda: gpt2.train_from_iterator(train, trainer))
    row = ["HF GPT-2 regex", gpt2_cpu, len(json.loads(gpt2.to_str())["model"]["merges"])]
    for name, texts in held.items():
        _, enc_cpu, encs = timed2(lambda x=texts: gpt2.encode_batch(x))
        row += [held_mb[name] / enc_cpu, held_mb[name] * 1e6 / sum(len(e.ids) for e in encs)]
    rows.append(row)

    cpu_desc = cpu_info()
    report = "\n".join([
        "# Tokenizer benchmark",
        "",
        f"Training text {train_mb:.1f} MB ({len(train):,} items, {len(set(chunks)):,} distinct chunks), vocabulary "
        f"{args.vocab:,} with {len(SPECIAL_TOKENS)} special tokens. Held out: en {held_mb['en']:.2f} MB of Wikipedia "
        f"passages, zh {held_mb['zh']:.3f} MB (刑法). One thread; times are CPU seconds; HF \"same chunks\" "
        f"includes picorag's regex split ({split_s:.1f} s).",
        "",
        md_table(["tokenizer", "train s", "merges", "en MB/s", "en bytes/token", "zh MB/s", "zh bytes/token"], rows),
        "",
        f"Agreement with HF on the same chunks: merges identical: **{same_merges}**; held-out tokens identical: "
        f"**{same_tokens}**. HF splitting raw text itself with Split(Regex(PATTERN)) (Oniguruma) gives different "
        f"tokens for {raw_split_diff['en']} of {len(held['en']):,} en passages and {raw_split_diff['zh']} of "
        f"{len(held['zh']):,} zh lines (it can differ: Oniguruma's \\w also covers combining marks, and not '½').",
        "",
        f"Wall time of picorag training: {wall:.1f} s. Machine: {cpu_desc['model']}, Python {cpu_desc['python']}, "
        f"{', '.join(f'{k} {v}' for k, v in versions(['tokenizers']).items())}, commit {git_commit()}.",
    ])
    write_text(OUT / "tokenizer.md", report + "\n")
    print(report)


if __name__ == "__main__":
    main()
