"""What every benchmark shares: the machine, timing, results files and tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def describe_machine() -> dict:
    """The machine a result was measured on."""
    import numba
    import numpy
    import pyarrow
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
    }


def git_commit() -> str:
    """HEAD (with -dirty for uncommitted changes to the code: results files not yet committed do not
    count), or $BENCH_COMMIT where the copy has no usable git metadata."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=root, text=True).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
                                        cwd=root, text=True)  # fmt: skip
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measure(fn, repeats: int) -> dict:
    """Time `fn()`: the first call on its own, then the median of `repeats` more calls."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"first_s": first, "median_s": statistics.median(times), "times_s": times}


def alternate(fns: dict, repeats: int, blocks: int = 3) -> dict:
    """Seconds of each contender, which take turns a block at a time: one untimed call (the memory
    the previous contender freed and dirtied falls on it), then repeats / blocks timed ones. The
    timed calls run back to back, as in a training loop, and `blocks` turns spread the machine's
    drift over every contender. {name: {"median_s", "times_s", "block_medians_s"}}."""
    per = max(1, -(-repeats // blocks))
    times = {name: [] for name in fns}
    medians = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            fn()
            block = []
            for _ in range(per):
                start = time.perf_counter()
                fn()
                block.append(time.perf_counter() - start)
            times[name] += block
            medians[name].append(statistics.median(block))
    return {name: {"median_s": statistics.median(times[name]), "times_s": times[name], "block_medians_s": medians[name]}
            for name in fns}  # fmt: skip


def save(name: str, result: dict, results_dir: str = RESULTS_DIR, filename: str | None = None) -> str:
    """Write `result` with the machine, date and commit to results_dir/<filename or name>.json."""
    result = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": describe_machine(),
        **result,
    }
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{filename or name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return path


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of `rows` with (key, heading) columns; floats get 3 significant digits."""

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, list):  # a range
            return "-".join(fmt(x) for x in v)
        return str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def targets_table(targets: list[dict]) -> str:
    return markdown_table(
        targets, [("name", "target"), ("value", "measured"), ("goal", "goal"), ("met", "met")]
    )


def repeats_main(name: str, doc: str, run, report, argv=None, repeats: int = 3) -> None:
    """The command line of a benchmark whose only option is --repeats: run, print, save."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=doc)
    parser.add_argument("--repeats", type=int, default=repeats)
    result = run(repeats=parser.parse_args(argv).repeats)
    print(report(result))
    print(f"\nsaved {result['path']}")
