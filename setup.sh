#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with PyTorch, this project and a Jupyter
# kernel named "python3" (the one papermill runs the notebooks with).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test,export]"
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (classifier)" >/dev/null
echo "ready: source .venv/bin/activate"
