#!/usr/bin/env bash
# Create .venv and install discrete-vi into it (editable, with test extras).
# torch is installed first, pinned, so that no dependency pulls in another build:
# TORCH_SPEC defaults to torch==2.13.0, the version this project is tested with
# (its CI machines carry a local CPU build of it); any torch>=2.4 works, e.g.
# TORCH_SPEC="torch>=2.4" on a machine with a GPU.
# Nothing is installed again while pyproject.toml, TORCH_SPEC and the Python are unchanged
# (the package itself is installed editable: code changes need no install).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.discrete-vi-installed"
wanted="$(cat pyproject.toml; echo "$TORCH_SPEC"; .venv/bin/python --version)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "install.sh: .venv is up to date (nothing to install)"
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[dev]"
printf '%s' "$wanted" > "$stamp"
