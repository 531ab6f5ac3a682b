#!/usr/bin/env bash
# Refreshes constraints.txt, the versions every install (CI, the demo, the Dockerfile) is pinned to:
# a fresh venv takes the newest versions pyproject.toml's ranges allow, with every extra, and its
# list becomes the file. Run it (`make lock`) after changing a dependency; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
extras=$(python3 -c "import tomllib; print(','.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']))")
echo "lock: resolving pushsync[$extras] in a fresh venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check -e ".[$extras]"
{
  echo "# The versions every install is pinned to (pip install -c constraints.txt ...)."
  echo "# Made by scripts/lock.sh (make lock) on $(date -u +%Y-%m-%d) with $("$tmp/venv/bin/python" -V); do not edit by hand."
  "$tmp/venv/bin/pip" freeze --exclude-editable --disable-pip-version-check | LC_ALL=C sort -f
} > constraints.txt
echo "lock: constraints.txt has $(grep -vc '^#' constraints.txt) packages"
