"""Times `gisp demo` (the README's main command) and records its table: python benchmarks/demo.py"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from common import Recorder, environment, write_results


def main() -> None:
    rec = Recorder(Path("runs/demo_bench"))
    out = rec.work / "demo"
    shutil.rmtree(out, ignore_errors=True)  # time a fresh run, not a resumed one
    start = time.time()
    rec.run(["gisp", "demo", "--out", out])
    seconds = time.time() - start
    results = json.loads((out / "results.json").read_text())
    write_results("demo.json", {"environment": environment(), "seconds": round(seconds, 1), "table": (out / "results.md").read_text(),
                                "demo": results, "commands": rec.commands})


if __name__ == "__main__":
    main()
