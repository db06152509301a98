#!/usr/bin/env python3
"""Time to first token of a dialogue replayed turn by turn, through the streaming endpoint.

Starts, on free loopback ports with the same GGUF and threads: our `agent` with its default prompt
cache (AGENT_PROMPT_CACHE_REUSE=auto) asked greedily and asked with sampling (temperature 1, no
seed), our `agent` without a cache (AGENT_PROMPT_CACHE=0), our `agent` reusing everything
(AGENT_PROMPT_CACHE_REUSE=all), and llama.cpp's `llama-server` (which keeps its prompt cache by
default). All replay the same fixed 10-turn transcript, each turn timed on every server in turn:
turn k sends the system message, the first k-1 exchanges (fixed texts, so every server sees the
same prompts) and the k-th question, streamed, and the clock stops at the first content chunk.
Prints a Markdown table, one row per turn, and each column's ratio to llama-server per turn.

  bench_ttft.py AGENT_BINARY LLAMA_SERVER MODEL THREADS [ROUNDS]
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

SYSTEM = "You are a warm, careful guide. Answer in a few sentences."
# Each exchange is long enough that the history, not the question, dominates the prompt.
TOPICS = [
    "my job", "my sister", "moving to a new city", "learning the piano", "a friend who stopped calling",
    "my garden", "sleeping badly", "a promotion I did not get", "my old dog", "starting to paint",
]


def question(topic):
    return (f"I keep thinking about {topic}. Part of me is worried and part of me is curious, and the two "
            f"parts argue about it most evenings. What could I ask each of them about {topic}?")


def answer(topic):
    return (f"It sounds like {topic} matters to you in more than one way. You could ask the worried part "
            f"what it is afraid would happen, and what it wants for you. You could ask the curious part "
            f"what it hopes to find. Listening to both, without taking sides, often softens the argument.")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"{url}: the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url}: not ready after {timeout} s")


def start_server(command, env, port, health):
    """Starts a server on `port`, waits until `health` answers and has it answer once (its weights
    paged in); stops it if it never gets there."""
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}{health}", process)
        first_token_ms(f"http://127.0.0.1:{port}", [{"role": "user", "content": "Hello."}], 0)
    except BaseException:
        process.terminate()
        raise
    return process


def first_token_ms(base, messages, temperature):
    body = json.dumps({"messages": messages, "max_tokens": 32, "temperature": temperature,
                       "stream": True}).encode()
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    started = time.perf_counter()
    first = None
    with urllib.request.urlopen(request, timeout=300) as response:
        for line in response:
            line = line.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            delta = (chunk.get("choices") or [{}])[0].get("delta", {})
            if first is None and delta.get("content"):
                first = (time.perf_counter() - started) * 1000
    if first is None:
        sys.exit(f"{base}: a stream without content")
    return first


def main():
    agent, llama_server, model, threads = sys.argv[1:5]
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    common = {"AGENT_MODEL_PATH": model, "AGENT_THREADS": threads, "AGENT_CTX": "4096",
              "AGENT_MAX_TOKENS_LIMIT": "1024", "RUST_LOG": "warn"}
    # name: (command, environment, temperature); the port and health path are added below.
    servers = {
        "ifs-agent default, greedy": ([agent], {**common, "AGENT_PROMPT_CACHE_REUSE": "auto"}, 0),
        "ifs-agent default, sampled": ([agent], {**common, "AGENT_PROMPT_CACHE_REUSE": "auto"}, 1),
        "ifs-agent, no cache": ([agent], {**common, "AGENT_PROMPT_CACHE": "0"}, 0),
        "ifs-agent, reuse all": ([agent], {**common, "AGENT_PROMPT_CACHE_REUSE": "all"}, 0),
        "llama-server (cache_prompt)": ([llama_server, "-m", model, "-t", threads, "-c", "4096",
                                         "--host", "127.0.0.1", "-np", "1"], {}, 0),
    }
    processes, bases = [], {}
    try:
        # Every server runs from the start and each turn is timed on all of them in turn, so a
        # slow minute of this shared machine falls on every column alike.
        for name, (command, env, _) in servers.items():
            port = free_port()
            if command[0] == agent:
                env = {**env, "BIND_ADDR": f"127.0.0.1:{port}"}
                health = "/api/v1/agent"
            else:
                command = [*command, "--port", str(port)]
                health = "/health"
            processes.append(start_server(command, env, port, health))
            bases[name] = f"http://127.0.0.1:{port}"
        times = {name: [[] for _ in TOPICS] for name in servers}
        for round_number in range(rounds):
            # A system message of its own per round: no round reuses another's cached prompt.
            messages = [{"role": "system", "content": f"{SYSTEM} (Session {round_number}.)"}]
            for turn, topic in enumerate(TOPICS):
                messages.append({"role": "user", "content": question(topic)})
                for name, (_, _, temperature) in servers.items():
                    times[name][turn].append(first_token_ms(bases[name], messages, temperature))
                messages.append({"role": "assistant", "content": answer(topic)})
            print(f"round {round_number + 1} of {rounds}: done", file=sys.stderr)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    columns = {name: [statistics.median(turn) for turn in times[name]] for name in servers}
    names = list(columns)
    server = names[-1]
    print(f"time to first token, ms, {threads} threads, median of {rounds} round(s)\n")
    print("| turn | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for turn in range(len(TOPICS)):
        print(f"| {turn + 1} | " + " | ".join(f"{columns[n][turn]:.0f}" for n in names) + " |")
    print(f"\nturn 10 without the cache / with it: {columns[names[2]][-1] / columns[names[0]][-1]:.1f}×")
    for name in names[:-1]:
        ratios = [columns[name][t] / columns[server][t] for t in range(len(TOPICS))]
        print(f"{name} / llama-server: " + " ".join(f"{r:.2f}" for r in ratios)
              + f" (worst {max(ratios):.2f}×)")


if __name__ == "__main__":
    main()
