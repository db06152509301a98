# ifs-guide: `make run` starts the whole service locally, `make test` runs every test.
# Both install what they need first (`make deps`), so they work on a fresh clone.

CARGO ?= cargo

.PHONY: help run test lint deps

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

run: deps ## Build in release and serve every endpoint on http://127.0.0.1:3000
	$(CARGO) run --release --locked -p ifs-guide -- serve

test: deps ## Unit, router, store-conformance, Lambda-event and API tests
	$(CARGO) test --workspace --locked

lint: ## rustfmt and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

deps: ## Check the toolchain (the Rust toolchain is the only prerequisite today)
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
