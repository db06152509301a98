#!/usr/bin/env bash
# Runs the AWS backends locally, in the foreground, until Ctrl-C: redis-server on 127.0.0.1:6379
# and DynamoDB Local on 127.0.0.1:8000, both keeping their data under data/ across restarts. For
#   STORE=dynamodb DYNAMODB_ENDPOINT=http://127.0.0.1:8000 SESSIONS=redis REDIS_URL=redis://127.0.0.1:6379 make run
set -euo pipefail
cd "$(dirname "$0")/.."

infra/install-dynamodb-local.sh
mkdir -p data/redis data/dynamodb-local
redis-server --port 6379 --bind 127.0.0.1 --dir "$PWD/data/redis" --appendonly yes --save '' &
redis=$!
trap 'kill $redis 2>/dev/null' EXIT
echo "redis-server on redis://127.0.0.1:6379, DynamoDB Local on http://127.0.0.1:8000 (Ctrl-C stops both)"
cd .cache/dynamodb-local
java -Djava.library.path=DynamoDBLocal_lib -jar DynamoDBLocal.jar -sharedDb -dbPath "$OLDPWD/data/dynamodb-local" -port 8000
