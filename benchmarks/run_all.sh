#!/usr/bin/env bash
# Runs every benchmark in sequence (one heavy job at a time on 2 cores); each resumes if interrupted.
# Progress: benchmarks/results/run_all.log
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
log=benchmarks/results/run_all.log
for script in "$@"; do
  echo "=== $(date -u +%FT%TZ) $script" >> "$log"
  python "benchmarks/$script" >> "$log" 2>&1
done
echo "=== $(date -u +%FT%TZ) done" >> "$log"
