#!/usr/bin/env bash
# Create ./.venv (if missing) and install persist with its test tools and the web viewer's extra into it.
# Idempotent: run it again after a pull. Needs only python3 (3.11+) with venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: persist needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,web]'
# An editable install runs from these sources: their bytecode, compiled once here, is what every start reads
# (where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile them again on each start: +15 ms).
.venv/bin/python -m compileall -q daemon cli >/dev/null
echo "setup: persist installed in .venv ($(.venv/bin/python --version))" >&2
