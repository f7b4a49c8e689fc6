"""python -m bench <benchmark> [options] | python -m bench report [results.json ...]"""

import glob
import json
import os
import sys

from . import audit, cuda, dedup, distributed, images, loader, reader, serving, storage, transforms
from .common import RESULTS_DIR

BENCHMARKS = {"audit": audit, "cuda": cuda, "dedup": dedup, "distributed": distributed, "images": images, "loader": loader, "reader": reader, "serving": serving, "storage": storage, "transforms": transforms}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*BENCHMARKS, "report"):
        print(__doc__ + "\nbenchmarks: " + ", ".join(BENCHMARKS))
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    if argv[0] == "report":
        for path in argv[1:] or sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json"))):
            with open(path) as f:
                result = json.load(f)
            module = BENCHMARKS[result["benchmark"]]
            print(f"## {result['benchmark']} ({result['date']}, {result['commit'][:12]}, {result['machine']['cpu']})\n")
            print(module.report(result) + "\n")
        return
    BENCHMARKS[argv[0]].main(argv[1:])


if __name__ == "__main__":
    main()
