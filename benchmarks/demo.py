"""Times `gisp demo` (the README's main command) and records its table and peak resident memory
(`/usr/bin/time`, the whole process): python benchmarks/demo.py"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from common import Recorder, environment, write_results


def main() -> None:
    import sys

    resume = "--resume" in sys.argv[1:]  # finish an interrupted run: its time is then not the demo's
    rec = Recorder(Path("runs/demo_bench"))
    out = rec.work / "demo"
    if not resume:
        shutil.rmtree(out, ignore_errors=True)  # time a fresh run, not a resumed one
    start = time.time()
    printed = rec.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", "gisp", "demo", "--out", out])
    seconds = time.time() - start
    peak = int(re.findall(r"MAXRSS_KB=(\d+)", (rec.work / "log.txt").read_text())[-1]) / 1024
    results = json.loads((out / "results.json").read_text())
    write_results("demo.json", {"environment": environment(), "resumed": resume, "seconds": round(seconds, 1),
                                "peak_rss_mb": round(peak, 1),
                                "table": (out / "results.md").read_text(), "demo": results, "printed": printed,
                                "commands": rec.commands})


if __name__ == "__main__":
    main()
