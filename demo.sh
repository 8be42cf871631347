#!/usr/bin/env bash
# Starts the PartCam demo on the best shipped model: sets up on first run, then serves HTTPS
# on every LAN address and prints the URL and a QR code for the phone.
# Extra arguments go to the server, e.g. ./demo.sh --port 8443 --engine cpu
set -euo pipefail
cd "$(dirname "$0")"
if [[ " $* " == *" --workers"* ]]; then
  scripts/setup.sh --scale-out  # several processes need Debian's redis-server and haproxy
else
  scripts/setup.sh
fi
exec .venv/bin/python -m server "$@"
