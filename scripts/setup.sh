#!/usr/bin/env bash
# Sets PartCam up on a fresh machine: the venv, the pinned Python packages and the npm assets.
#   scripts/setup.sh          runtime only (the demo)
#   scripts/setup.sh --dev    plus training, test and lint tools, and Debian's chromium for browser tests
# Each step is skipped when it is already up to date, so running it again is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
python=${PYTHON:-python3}
requirements=requirements.txt
((dev)) && requirements=requirements-dev.txt

if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv"
  "$python" -m venv .venv
fi

stamp=.venv/.partcam-$(basename "$requirements" .txt)
wanted=$(cat requirements*.txt | sha256sum | cut -c1-16)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
  echo "[setup] installing $requirements"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$requirements"
  echo "$wanted" >"$stamp"
fi

lock_hash=$(sha256sum package-lock.json | cut -c1-16)
if [[ ! -f node_modules/.partcam-lock || "$(cat node_modules/.partcam-lock)" != "$lock_hash" ]]; then
  if command -v npm >/dev/null; then
    echo "[setup] fetching npm assets (socket.io client, MediaPipe selfie model)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$lock_hash" >node_modules/.partcam-lock
  else
    echo "[setup] warning: npm not found; the phone page needs node_modules/socket.io-client (install Node.js)" >&2
  fi
fi

if ((dev)) && [[ ! -x /usr/bin/chromium ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] note: /usr/bin/chromium missing; browser tests will be skipped (apt-get install chromium)" >&2
  fi
fi
