"""Shared helpers for the scripts in bench/: thread limits, timing, memory, machine info, report writing.

Import this module *before* numpy (or anything that imports it) and call `limit_threads()` first, so
BLAS/OpenMP pools start with one thread. Nothing here imports numpy or matplotlib at module level.

>>> md_table(["a", "b"], [["x", 1.5]], align="lr")
'| a | b |\\n|:--|--:|\\n| x | 1.5 |'
>>> fmt(1234.5), fmt(0.012345), fmt(None)
('1,234', '0.0123', '–')
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
IMG = ROOT / "docs" / "img"
DATA = Path(os.environ.get("PICORAG_DATA", "/work/shared/data"))

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")


def limit_threads(n: int = 1) -> bool:
    """Cap every native thread pool we know of at `n`. Effective only before numpy/torch are imported;
    returns False (and warns) when numpy was already loaded, since its pools may have started."""
    for var in THREAD_VARS:
        os.environ[var] = "false" if var == "TOKENIZERS_PARALLELISM" else str(n)
    if "numpy" in sys.modules:
        warnings.warn("limit_threads() called after numpy was imported; thread pools may be larger", stacklevel=2)
        return False
    return True


# -- timing --------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def timed2(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of one call.

    For single-threaded code CPU time is what the work costs even on a busy machine, where wall time
    also counts the moments the scheduler gave the core to someone else (it misses I/O waits, though)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def repeat_time(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1, min_time: float = 0.0,
                max_repeat: int = 1000) -> dict[str, float]:
    """Call `fn` `warmup` times, then at least `repeat` timed times and, if `min_time` is set, until the
    timed calls add up to `min_time` seconds (at most `max_repeat` calls). Returns the best (min) and
    median of wall time (`best_s`, `median_s`) and of CPU time (`best_cpu_s`, `median_cpu_s`).

    The best of many runs is the usual estimate of what the code costs on a shared machine: noise from
    other processes only ever adds time, and short calls need many tries to see a quiet moment."""
    for _ in range(warmup):
        fn()
    wall: list[float] = []
    cpu: list[float] = []
    while len(wall) < repeat or (sum(wall) < min_time and len(wall) < max_repeat):
        w, c, _ = timed2(fn)
        wall.append(w)
        cpu.append(c)
    return {"best_s": min(wall), "median_s": statistics.median(wall), "best_cpu_s": min(cpu),
            "median_cpu_s": statistics.median(cpu), "repeat": len(wall)}


def per_second(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default).

    >>> percentile([1, 2, 3, 4], 50), percentile([1, 2, 3, 4], 95)
    (2.5, 3.85)
    """
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean / min of per-call times, in milliseconds, and the number of calls."""
    ms = [s * 1e3 for s in seconds]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "mean_ms": sum(ms) / len(ms) if ms else float("nan"), "min_ms": min(ms) if ms else float("nan")}


def loadavg() -> list[float]:
    """1-, 5- and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# -- memory and machine --------------------------------------------------------------------------


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux), or the peak where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def cpu_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": affinity, "cpu_count": os.cpu_count(), "model": model, "machine": platform.machine(),
            "python": platform.python_version(), "platform": platform.platform()}


def versions(packages: Iterable[str]) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_commit() -> str:
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (ROOT / ".git" / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return "unknown"


# -- reports -------------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for tables: thousands separators for big ones, `digits` significant figures for small."""
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, int) or abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.{max(digits - 1, 0)}f}".rstrip("0").rstrip(".") if digits > 1 else f"{x:.0f}"
    return f"{x:.{digits + 1}f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A GitHub markdown table; `align` has one of l/r/c per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_panel(ax: Any, labels: Sequence[str], values: Sequence[float], *, title: str, log: bool = False,
              colors: Sequence[str] | None = None, value_fmt: Callable[[float], str] = fmt,
              lines: Sequence[tuple[float, str]] = ()) -> None:
    """Horizontal bars with their values written at the end; optional reference lines (value, label)."""
    y = list(range(len(labels)))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_xscale("log")
    for yi, v in zip(y, values):
        ax.text(v, yi, " " + value_fmt(v), va="center", fontsize=8)
    for value, label in lines:
        ax.axvline(value, color="grey", linestyle="--", linewidth=1)
        ax.text(value, len(labels) - 0.4, " " + label, fontsize=7, color="dimgrey", va="bottom")
    lo, hi = ax.get_xlim()
    if log:  # start a decade below the smallest bar so that it stays visible
        lo = 10 ** math.floor(math.log10(max(min(values), 1e-12)) - 0.5)
    ax.set_xlim(lo, hi * (3 if log else 1.2))  # room for the value labels
    ax.tick_params(labelsize=8)
