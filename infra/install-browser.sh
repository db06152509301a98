#!/usr/bin/env bash
# What the browser tests need, each only if missing: Debian's headless Chromium, Playwright for
# Python (pinned, into the project venv; it drives the system Chromium through executable_path and
# never downloads a browser), pytest, and axe-core from npm (injected into pages for the
# accessibility checks). Idempotent; prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
chromium=/usr/bin/chromium-headless-shell
axe_version=4.14.1
axe=.cache/axe-core/axe.min.js

if [ ! -x "$chromium" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing chromium-headless-shell (~300 MB)…" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null
fi

python="$(infra/python-tools.sh)"
if ! "$python" -c 'import playwright, pytest' 2>/dev/null; then
  echo "installing playwright==1.65.2 and pytest into the venv…" >&2
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the wheel alone; the browser is Debian's.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$python" -m pip install --quiet --disable-pip-version-check \
    "playwright==1.65.2" "pytest==8.*" >&2
fi

if [ "$(cat .cache/axe-core/VERSION 2>/dev/null)" != "$axe_version" ] || [ ! -f "$axe" ]; then
  command -v npm >/dev/null || { echo "fetching axe-core needs npm (apt-get install npm)" >&2; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "fetching axe-core@$axe_version from npm…" >&2
  # npm checks the tarball against the registry's integrity hash.
  (cd "$work" && npm pack --silent "axe-core@$axe_version" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$(dirname "$axe")"
  cp "$work/package/axe.min.js" "$axe"
  echo "$axe_version" > .cache/axe-core/VERSION
fi
echo "$python"
