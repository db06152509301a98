#!/usr/bin/env bash
# Installs the system packages the build and the tests need, only if something is missing:
# cmake and a C/C++ toolchain for llama.cpp, clang/libclang for its Rust bindings, lld (the
# linker .cargo/config.toml names), and
# redis-server, which the tests start on their own ports (`SESSIONS=redis`), and openssl, which
# makes the certificates of the TLS one. Commands named as arguments are installed too, as
# packages of the same name (the benchmarks ask for `wrk`).
set -euo pipefail

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v clang >/dev/null || missing+=(clang)
command -v ld.lld >/dev/null || missing+=(lld)
command -v c++ >/dev/null || missing+=(g++)
ldconfig -p 2>/dev/null | grep -q 'libclang' || missing+=(libclang-dev)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
for extra in "$@"; do
  command -v "$extra" >/dev/null || missing+=("$extra")
done

[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "missing: ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${missing[*]}…"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
