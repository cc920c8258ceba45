#!/usr/bin/env bash
# Create .venv and install discrete-vi into it (editable, with test extras).
# torch is installed first so that pip does not pick a CUDA build by itself:
# TORCH_SPEC defaults to the CPU build this project is tested with; on a
# machine with a GPU set e.g. TORCH_SPEC="torch>=2.4".
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[dev]"
