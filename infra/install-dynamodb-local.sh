#!/usr/bin/env bash
# Installs DynamoDB Local (AWS's official emulator, a Java 17 jar) into .cache/dynamodb-local, from
# the npm package that ships it, if it is not there yet. The tests start it on their own ports;
# `make services` starts it for a person.
set -euo pipefail

package="amplify-dynamodb-simulator@2.9.30"
target="${1:-.cache/dynamodb-local}"

[ -f "$target/DynamoDBLocal.jar" ] && exit 0
command -v java >/dev/null || { echo "DynamoDB Local needs Java 17 or newer (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
command -v npm >/dev/null || { echo "fetching DynamoDB Local needs npm (apt-get install npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetching DynamoDB Local ($package from npm, ~57 MB)…"
# npm checks the tarball against the registry's integrity hash.
(cd "$work" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz)
mkdir -p "$target"
cp -R "$work/package/emulator/." "$target/"
echo "DynamoDB Local ready: $target"
