#!/usr/bin/env bash
# Makes the Ed25519 key pair that signs access tokens and stores it in SSM Parameter Store for the
# deployed stack: the private key as a SecureString that only the login function may read, the
# public key as a String that template.yaml hands the other functions. Needs the AWS CLI with
# credentials for the target account and region, and openssl. Leaves an existing pair alone unless
# run with --rotate (which signs everyone out once the stack is redeployed with the new public key).
set -euo pipefail
private=${JWT_PRIVATE_KEY_PARAMETER:-/ifs-guide/jwt-private-key}
public=${JWT_PUBLIC_KEY_PARAMETER:-/ifs-guide/jwt-public-key}

if [ "${1:-}" != "--rotate" ] && aws ssm get-parameter --name "$private" >/dev/null 2>&1; then
  echo "$private exists; run with --rotate to replace the key pair"
  exit 0
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
umask 077
openssl genpkey -algorithm ed25519 -out "$dir/private.pem"
openssl pkey -in "$dir/private.pem" -pubout -out "$dir/public.pem"
aws ssm put-parameter --name "$private" --type SecureString --overwrite --value "file://$dir/private.pem" >/dev/null
aws ssm put-parameter --name "$public" --type String --overwrite --value "file://$dir/public.pem" >/dev/null
echo "stored $private (SecureString) and $public"
