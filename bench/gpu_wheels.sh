#!/usr/bin/env bash
# The wheels bench/gpu.sh needs on a GPU machine that has torch and transformers but not the config schema's
# pydantic: downloaded here into .whl/ (ignored by git) for Python 3.12 on x86-64, this checkout's versions.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
grep -qx "/.whl/" "$(git rev-parse --git-path info/exclude)" || echo "/.whl/" >> "$(git rev-parse --git-path info/exclude)"
version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" "annotated-types==$(version annotated-types)" \
  "typing-inspection==$(version typing-inspection)" "typing-extensions==$(version typing-extensions)"
ls .whl
