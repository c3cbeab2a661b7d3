"""Embed the first N wiki passages with MiniLM once, in resumable pieces (bench/out/scale/base-*.npy).

The scale benchmark derives every other vector from these (see bench_scale.py). Run in the background:
    nice .venv/bin/python bench/scale_embed.py 10000
"""

from __future__ import annotations

import itertools
import json
import sys
import time

import numpy as np
from common import DATA, OUT

from picorag.chunk import chunk_record
from picorag.encoders import embed, load_encoder
from picorag.ingest import read_paths

PIECE = 1000


def main(n: int) -> None:
    out = OUT / "scale"
    out.mkdir(parents=True, exist_ok=True)
    enc = load_encoder("minilm")
    recs = itertools.islice(read_paths([DATA / "wiki" / "passages.jsonl.gz"]), n)
    texts = [c.index_text for r in recs for c in chunk_record(r)[:1]]  # 100-word passages are one chunk
    for p in range(0, len(texts), PIECE):
        f = out / f"base-{p // PIECE:04d}.npy"
        if f.exists():
            continue
        c0, t0 = time.process_time(), time.perf_counter()
        v = embed(enc, texts[p : p + PIECE])
        np.save(out / f"tmp-{f.name}", v)
        (out / f"tmp-{f.name}").rename(f)
        with open(out / "embed_log.jsonl", "a") as log:
            log.write(json.dumps({"piece": p // PIECE, "n": len(v), "wall_s": time.perf_counter() - t0,
                                  "cpu_s": time.process_time() - c0}) + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]))
