# Sourced by scripts/test and scripts/demo: make .venv with everything the pack, its tests and a
# local ComfyUI need. Idempotent; a second run installs nothing new.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CONTROLNET_SUITE_VENV:-$ROOT/.venv}
# torch/torchvision pair that runs on a CPU and that ComfyUI imports (the CPU-only wheel of torch
# has no working torchvision); on a GPU machine with ComfyUI installed, use ComfyUI's own env.
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"

find_comfyui() {
  for candidate in "${COMFYUI_PATH:-}" "$ROOT/../.." "$HOME/comfy/ComfyUI"; do
    if [ -n "$candidate" ] && [ -f "$candidate/comfy/controlnet.py" ] && [ -f "$candidate/nodes.py" ]; then
      (cd "$candidate" && pwd); return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

stamp="$VENV/.installed"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/requirements-oracles.txt"; echo "$TORCH_PIN")"
COMFYUI_DIR=$(find_comfyui || true)
if [ -n "$COMFYUI_DIR" ]; then want="$want$(cat "$COMFYUI_DIR/requirements.txt")"; fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "== installing into $VENV" >&2
  # shellcheck disable=SC2086
  pip_install $TORCH_PIN
  pip_install -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  pip_install --no-deps -r "$ROOT/requirements-oracles.txt"
  if [ -n "$COMFYUI_DIR" ]; then
    echo "== ComfyUI found at $COMFYUI_DIR: installing its requirements (its torch lines skipped)" >&2
    grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=~!;].*)?$' "$COMFYUI_DIR/requirements.txt" > "$VENV/comfyui-requirements.txt"
    pip_install -r "$VENV/comfyui-requirements.txt" requests
  fi
  echo "$want" > "$stamp"
fi
export COMFYUI_PATH="${COMFYUI_DIR:-}"

# The browser tests (tests/workflows/test_ui_workflows.py) open the workflows in ComfyUI's front end
# in headless Chromium: Debian's chromium + chromium-driver, installed for the test command only
# (not for the demo), when running as root with apt-get; otherwise those tests skip, saying why.
if [ "$(basename "$0")" = "test" ] && [ -n "$COMFYUI_DIR" ] && ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian's chromium and chromium-driver for the browser tests" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null \
      || echo "== could not install chromium: the browser tests will be skipped" >&2
  else
    echo "== chromium/chromedriver not found (needs root and apt-get to install): the browser tests will be skipped" >&2
  fi
fi
