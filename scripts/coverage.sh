#!/usr/bin/env bash
# The test suite under coverage.py, every Python process it starts (daemon, broker, persist-cli,
# indexer, agents) measured too ([tool.coverage.run] patch = ["subprocess"] in pyproject.toml).
# Arguments go to pytest. Data and the HTML report land in build/coverage/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=build/coverage
rm -rf "$out" && mkdir -p "$out"
export COVERAGE_FILE="$PWD/$out/.coverage"
.venv/bin/python -m coverage run -m pytest "$@"
status=$?
.venv/bin/python -m coverage combine -q "$out"
.venv/bin/python -m coverage report --skip-covered --sort=cover
.venv/bin/python -m coverage html -q -d "$out/html"
exit $status
