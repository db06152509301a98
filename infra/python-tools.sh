#!/usr/bin/env bash
# A virtualenv in .cache/venv with the Python tools the tests use: the official openai client (the
# compatibility test) and gguf (to make a template-less copy of the model). Idempotent; prints
# the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venv
packages=("openai==2.*" "gguf==0.*")
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c 'import openai, gguf' 2>/dev/null; then
  echo "installing ${packages[*]} into $venv…" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
fi
echo "$venv/bin/python"
