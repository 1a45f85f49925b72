#!/usr/bin/env bash
# The overhead benchmark in one command, from a fresh clone: bench/run.sh [--vs] [--quick] [run.py options ...]
# Makes bench/.venv once (the project, uvloop and httptools), then runs bench/run.py in it; `--vs` also installs
# LiteLLM's proxy into bench/.venv-litellm. Needs wrk for the real numbers (`apt-get install wrk`); without it the
# Python load generator is used, which saturates long before the servers do. Linux only (taskset, /proc).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || echo "bench: wrk not found, using the Python load generator (apt-get install wrk)" >&2
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet --disable-pip-version-check -e . uvloop httptools
fi
exec bench/.venv/bin/python bench/run.py "$@"
