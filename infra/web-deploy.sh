#!/usr/bin/env bash
# Uploads the chat page to the stack's private bucket and refreshes CloudFront: the files are
# exactly what `ifs-guide serve` serves (`ifs-guide web-export`), each with its content type and
# cache policy; the versioned assets go first and index.html last, so that no visitor gets a page
# naming assets that are not there yet. Needs the AWS CLI and credentials for the stack's account.
#   infra/web-deploy.sh IFS_GUIDE_BINARY [STACK_NAME]
set -euo pipefail
ifs_guide="$1"
stack="${2:-${STACK_NAME:-ifs-guide}}"
command -v aws >/dev/null || { echo "make web-deploy needs the AWS CLI (aws) on PATH" >&2; exit 1; }

output() {
  aws cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}
bucket="$(output WebBucketName)"
distribution="$(output WebDistributionId)"
[ -n "$bucket" ] && [ "$bucket" != "None" ] || { echo "stack $stack has no WebBucketName output: sam deploy first" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$ifs_guide" web-export "$work" > "$work/files.tsv"
upload() {
  aws s3 cp --only-show-errors "$work/$1" "s3://$bucket/$1" --content-type "$2" --cache-control "$3"
}
grep -v '^index.html' "$work/files.tsv" | while IFS=$'\t' read -r path type cache; do upload "$path" "$type" "$cache"; done
grep '^index.html' "$work/files.tsv" | while IFS=$'\t' read -r path type cache; do upload "$path" "$type" "$cache"; done
aws cloudfront create-invalidation --distribution-id "$distribution" --paths / /index.html --query Invalidation.Id --output text >/dev/null
echo "the page is at $(output WebUrl)"
