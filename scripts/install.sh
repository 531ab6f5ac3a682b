#!/usr/bin/env bash
# Installs pushsync into a venv (.venv unless VENV says otherwise), pinned by constraints.txt:
#   scripts/install.sh runtime       what running pushsync needs (the demo)
#   scripts/install.sh test          plus the test tools (make test, make check)
#   scripts/install.sh test,docs     and so on: the extras of pyproject.toml, comma-separated
# It says what it is doing, and pip's "Collecting ..." lines show the progress of a first install.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
extras=${1:-test}
spec="."
[ "$extras" = runtime ] || spec=".[$extras]"
if [ ! -x "$VENV/bin/python" ]; then
  echo "install: creating the virtual environment $VENV"
  "${PYTHON:-python3}" -m venv "$VENV" || exit 1
fi
echo "install: pushsync ($extras) into $VENV, versions pinned by constraints.txt (a minute or two the first time)"
"$VENV/bin/pip" install --disable-pip-version-check -c constraints.txt -e "$spec" 2>&1 \
  | grep --line-buffered -E '^(Collecting|Successfully installed|ERROR|error)' | sed -u 's/^/  /'
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "install: pip failed (exit $rc); run it again without the filter to see everything:" >&2
  echo "  $VENV/bin/pip install -c constraints.txt -e '$spec'" >&2
fi
exit "$rc"
