"""python -m bench <benchmark> [options] | python -m bench report [results.json ...]"""

import glob
import importlib
import json
import os
import sys

from .common import RESULTS_DIR

# imported when run, so that one benchmark's optional dependencies (ray, DALI) don't stop the others
BENCHMARKS = ("audit", "cuda", "dedup", "distributed", "images", "loader", "reader", "serving", "storage", "transforms")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*BENCHMARKS, "report"):
        print(__doc__ + "\nbenchmarks: " + ", ".join(BENCHMARKS))
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    if argv[0] == "report":
        for path in argv[1:] or sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json"))):
            with open(path) as f:
                result = json.load(f)
            module = importlib.import_module(f".{result['benchmark']}", __package__)
            print(f"## {result['benchmark']} ({result['date']}, {result['commit'][:12]}, {result['machine']['cpu']})\n")
            print(module.report(result) + "\n")
        return
    importlib.import_module(f".{argv[0]}", __package__).main(argv[1:])


if __name__ == "__main__":
    main()
