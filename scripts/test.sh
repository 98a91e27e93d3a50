#!/usr/bin/env bash
# Set up a virtual environment and run the whole test suite.
# The README's second command and CI (.ci/run) both run this file, so they cannot drift apart.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q -c constraints.txt -e ".[test,ray]"
python -m pytest "$@"
