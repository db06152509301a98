#!/usr/bin/env bash
# Benchmarks the agent engine side by side with llama.cpp's own llama-bench: same model, same
# threads, same prompt length (pp) and generation length (tg, at the depth of that prompt),
# alternating the two tools so both see the same machine state. Then time to first token through
# the streaming endpoint over a 10-turn dialogue, with and without the prompt cache, beside
# llama-server's (infra/bench_ttft.py), and concurrent dialogues beside llama-server's continuous
# batching (infra/bench_concurrency.py), after llama.cpp's own llama-batched-bench, which says what
# batching several sequences can gain on this machine at all. Prints Markdown tables.
#
#   infra/bench-agent.sh                 # our build as configured in .cargo/config.toml (native)
#   BENCH_VARIANTS="x86-64 x86-64-v3 native" infra/bench-agent.sh
#                                        # compare CPU targets: the default, the Lambda build, native
#
# llama-bench is built from the complete llama.cpp tree vendored in the llama-cpp-python sdist
# (PyPI), once, into .cache/llama.cpp/.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
THREADS="${THREADS:-$(nproc)}"
PROMPT="${PROMPT:-512}"
GEN="${GEN:-128}"
REPS="${REPS:-5}"
ROUNDS="${ROUNDS:-2}"
VARIANTS="${BENCH_VARIANTS:-native}"
CACHE=.cache/llama.cpp
LLAMA_CPP_PYTHON=0.3.36

infra/fetch-model.sh "$MODEL"

# llama.cpp's own tools, built with its defaults (GGML_NATIVE=ON: tuned to this CPU).
if [ ! -x "$CACHE/build/bin/llama-bench" ]; then
  mkdir -p "$CACHE"
  if [ ! -d "$CACHE/src" ]; then
    work="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$LLAMA_CPP_PYTHON"
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    mv "$work"/llama_cpp_python-*/vendor/llama.cpp "$CACHE/src"
    rm -rf "$work"
  fi
  cmake -S "$CACHE/src" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF >/dev/null
fi
if ! [ -x "$CACHE/build/bin/llama-bench" ] || ! [ -x "$CACHE/build/bin/llama-server" ] || ! [ -x "$CACHE/build/bin/llama-batched-bench" ]; then
  cmake --build "$CACHE/build" --target llama-bench llama-server llama-batched-bench -j "$(nproc)" >/dev/null
fi

# Our engine's bench, once per CPU target, each in its own target directory; `native` is what
# .cargo/config.toml gives local builds, so it shares the main target directory (which
# CARGO_TARGET_DIR may move).
TARGET="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
declare -A BIN
for variant in $VARIANTS; do
  if [ "$variant" = native ]; then
    cargo build --release --locked -q -p ifs-agent --example bench
    BIN[$variant]="$TARGET/release/examples/bench"
  else
    RUSTFLAGS="-C target-cpu=$variant" CARGO_TARGET_DIR="target/bench-$variant" \
      cargo build --release --locked -q -p ifs-agent --example bench
    BIN[$variant]="target/bench-$variant/release/examples/bench"
  fi
done

ours() {
  "${BIN[$1]}" --model "$MODEL" --threads "$THREADS" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --reps "$REPS" 2>/dev/null
}
theirs() {
  for shape in "-p $PROMPT -n 0" "-p 0 -n $GEN -d $PROMPT"; do
    # shellcheck disable=SC2086 # $shape is several arguments on purpose
    "$CACHE/build/bin/llama-bench" -m "$MODEL" -t "$THREADS" $shape -r "$REPS" -o json 2>/dev/null |
      python3 -c 'import json,sys; [print(json.dumps({"tool":"llama-bench", **r})) for r in json.load(sys.stdin)]'
  done
}

results="$(mktemp)"
for round in $(seq "$ROUNDS"); do
  theirs >> "$results"
  for variant in $VARIANTS; do
    ours "$variant" | python3 -c 'import json,sys; print(json.dumps({"tool":"ifs-agent", "variant":sys.argv[1], **json.load(sys.stdin)}))' "$variant" >> "$results"
  done
done

python3 - "$results" "$THREADS" "$PROMPT" "$GEN" <<'PY'
import json, statistics, sys
path, threads, prompt, gen = sys.argv[1], *map(int, sys.argv[2:])
rows = [json.loads(line) for line in open(path)]
def avg(values): return statistics.mean(values) if values else float("nan")
lb_pp = avg([r["avg_ts"] for r in rows if r["tool"] == "llama-bench" and r["n_prompt"] > 0])
lb_tg = avg([r["avg_ts"] for r in rows if r["tool"] == "llama-bench" and r["n_gen"] > 0])
commit = next((r.get("build_commit") for r in rows if r["tool"] == "llama-bench"), "?")
print(f"model {rows[-1].get('model', '')}, {threads} threads, pp{prompt}, tg{gen} at depth {prompt}\n")
print("| engine | build | prompt t/s | generation t/s | gen. vs llama-bench | time to first token |")
print("|---|---|---:|---:|---:|---:|")
print(f"| llama-bench (llama.cpp {commit}) | GGML_NATIVE | {lb_pp:.0f} | {lb_tg:.1f} | 1.00× | – |")
for variant in dict.fromkeys(r["variant"] for r in rows if r["tool"] == "ifs-agent"):
    mine = [r for r in rows if r["tool"] == "ifs-agent" and r["variant"] == variant]
    pp = avg([r["prompt_tokens_per_second"]["mean"] for r in mine])
    tg = avg([r["generation_tokens_per_second"]["mean"] for r in mine])
    ttft = avg([r["time_to_first_token_ms"]["mean"] for r in mine])
    print(f"| ifs-agent (llama-cpp-2 0.1.160) | {variant} | {pp:.0f} | {tg:.1f} | {tg / lb_tg:.2f}× | {ttft:.0f} ms |")
PY
rm -f "$results"

# Time to first token through the streaming endpoint, turn by turn through a 10-turn dialogue:
# our agent with and without its prompt cache, and llama-server with its own.
echo
cargo build --release --locked -q -p ifs-agent-container --bin agent
python3 infra/bench_ttft.py "$TARGET/release/agent" "$CACHE/build/bin/llama-server" "$MODEL" "$THREADS" "${TTFT_ROUNDS:-3}"
echo
echo "## What batching gains here: llama.cpp's llama-batched-bench, 1, 2 and 4 sequences at once"
echo
# The concurrency rows' shape (~330-token prompts, 256 tokens each, a KV cache per sequence as
# llama-server -np has): S_TG is the generation tokens/s of all sequences together, the ceiling
# of what one batch per step can make of several streams on this CPU.
"$CACHE/build/bin/llama-batched-bench" -m "$MODEL" -t "$THREADS" -c $((2048 * ${PARALLEL:-4})) -b 2048 -ub 512 \
  -npp 330 -ntg 256 -npl "1,2,${PARALLEL:-4}" -no-kvu 2>/dev/null | grep '^|'
echo
echo "## Concurrent dialogues: ifs-agent (AGENT_PARALLEL) beside llama-server -np (continuous batching)"
echo
python3 infra/bench_concurrency.py "$TARGET/release/agent" "$CACHE/build/bin/llama-server" "$MODEL" "$THREADS" "${PARALLEL:-4}"
