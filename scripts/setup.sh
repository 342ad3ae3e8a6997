#!/usr/bin/env bash
# Set up lowloss in ./.venv.  Usage: bash scripts/setup.sh [--test]
#  * torch: kept if the python you run this with already has one (the venv then sees it through
#    --system-site-packages); otherwise torch==2.13.0 is installed (a CPU build here; on a GPU machine
#    install your own CUDA torch first).
#  * --test also installs pytest, ruff and hypothesis, and (as root, with apt-get) Debian's `chromium` for
#    the report's browser test when /usr/bin/chromium is missing (without it that test is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: using the torch that $PY already has" >&2
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".${extras}"
if [ -n "$extras" ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing chromium for the report's browser test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup: no /usr/bin/chromium (install Debian's chromium package); the browser test will be skipped" >&2
  fi
fi
.venv/bin/python -c "import lowloss, torch; print(f'setup: lowloss {lowloss.__version__} with torch {torch.__version__}')" >&2
