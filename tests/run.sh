#!/usr/bin/env bash
# Install everything the tests need, then run them. README.md's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt
python -m pytest -q "$@"
