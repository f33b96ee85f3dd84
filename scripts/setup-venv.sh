#!/usr/bin/env bash
# Create .venv with Debian's python3 and install atoll (editable) with its
# development tools. Re-run by make only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
python=/usr/bin/python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
