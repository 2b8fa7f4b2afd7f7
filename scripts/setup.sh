#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with torch, torchvision,
# this project (with its dev, bench and search extras) and learn2learn. Safe to re-run; it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
"$PY" -m pip install -q --upgrade pip
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
# Editable, and path-based (pyproject.toml's package-dir): the repository root goes on sys.path through a .pth,
# so an `episodes/` folder in the working directory cannot shadow the package. Re-running switches an older
# finder-based install of an existing .venv over (pip reinstalls a local project every time).
"$PY" -m pip install -q -e ".[dev,bench,search]"  # search: faiss-cpu, so the faiss tests run
PYTHON="$PY" bash scripts/install_learn2learn.sh
