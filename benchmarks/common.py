"""Shared by the benchmark scripts: run a real command (logged, resumable) and record the environment."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from typing import NoReturn
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SHARED = "../shared/data"


def git_commit() -> str:
    """Short hash of HEAD, the commit every results file records."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def write_json(path: Path, payload: object, indent: int = 2) -> Path:
    """Write ``payload`` atomically (a temporary name, then rename): a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=indent) + "\n")
    tmp.replace(path)
    return path


def run_measured(cmd: list[str], check: bool = True) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd`` under ``/usr/bin/time``: the finished process, wall seconds, and the peak resident
    set in MiB (the largest of the processes it waited for). Exits with the command's stderr on failure."""
    cmd = [str(c) for c in cmd]
    start = time.time()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *cmd], capture_output=True, text=True)
    seconds = time.time() - start
    if check and proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
    rss = re.findall(r"MAXRSS_KB=(\d+)", proc.stderr)
    return proc, seconds, int(rss[-1]) / 1024 if rss else float("nan")


def environment() -> dict:
    """Machine, versions, date and commit, stored beside every figure."""
    import torch
    import transformers

    commit = git_commit()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(), "git_commit": commit, "cpu": cpu_model(),
    }


def cpu_model() -> str:
    """The processor's name and widest vector units (``/proc/cpuinfo``): CPU float kernels, and so the
    last bits of a result, differ between processors."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    units = [u for u in ("avx512f", "avx512_bf16", "amx_tile", "avx2") if u in flags]
    return f"{name} ({', '.join(units) or 'no AVX'})"


class Recorder:
    """Runs commands, appends their output to a log, and keeps the list of commands with timings."""

    def __init__(self, work: Path) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.log = work / "log.txt"
        self.commands: list[dict] = []

    def run(self, cmd: list[str]) -> str:
        cmd = [str(c) for c in cmd]
        print("$", shlex.join(cmd), flush=True)
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        with self.log.open("a") as f:
            f.write(f"$ {shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr[-4000:]}\n")
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        self.commands.append({"cmd": shlex.join(cmd), "seconds": round(time.time() - start, 1)})
        return proc.stdout

    def json(self, cmd: list[str]) -> dict:
        """Run a command that prints JSON on its last line."""
        return json.loads(self.run(cmd).strip().splitlines()[-1])

    def once(self, marker: Path, cmd: list[str]) -> None:
        """Run ``cmd`` unless ``marker`` exists (resuming an interrupted benchmark)."""
        if not marker.exists():
            self.run(cmd)


def write_results(name: str, payload: dict) -> Path:
    path = write_json(RESULTS / name, payload)
    print(f"wrote {path}")
    return path


def bad_input(message: str) -> NoReturn:
    """Stop a benchmark on bad input the way gisp does: one line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
