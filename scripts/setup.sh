#!/usr/bin/env bash
# Creates .venv with the locked dependency set and checks the tools the local cloud needs.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

emulators_installed() {
  need gcloud && need java || return 1
  local sdk; sdk=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null) || return 1
  [ -d "$sdk/platform/pubsub-emulator" ] && [ -d "$sdk/platform/cloud-firestore-emulator" ]
}
if ! emulators_installed; then
  echo "Installing the Google Cloud CLI emulators and Java (apt)..." >&2
  ./scripts/install_gcloud_emulators.sh
fi

if ! need chromium; then
  echo "Installing Chromium for the dashboard's browser tests (apt)..." >&2
  ./scripts/install_chromium.sh
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "bookcast needs Python 3.11 or newer; found $(python3 --version)" >&2; exit 1; }

[ -x .venv/bin/python ] || python3 -m venv .venv
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install --quiet --disable-pip-version-check 'uv==0.13.9'
# The lock is complete, so nothing is resolved here: every machine gets the same set.
.venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode -r requirements.lock
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
echo "bookcast environment ready in .venv" >&2
