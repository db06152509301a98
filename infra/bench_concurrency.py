#!/usr/bin/env python3
"""The agent under concurrent dialogues, beside llama-server with continuous batching.

Starts, on free loopback ports with the same GGUF, threads and context per sequence, our `agent`
with AGENT_PARALLEL=P and llama.cpp's `llama-server -np P` (continuous batching is on by default),
and keeps both up: every measurement runs on one and then on the other, so that a slow minute of
a shared machine falls on both. Greedy, streamed:

- P concurrent streams, each after a distinct ~300-token prompt, max_tokens 256 with the end of
  text ignored where the server allows it: aggregate generation tokens/s, median and worst time
  to first token — ROUNDS times (default 3), new prompts each round, each server's median round;
- 4P concurrent requests: how many were served, how many refused before their stream began (503),
  how many lost (anything else), and the total time;
- one turn arriving while P-1 streams generate, its time to first token beside the same turn
  alone.

Prints a Markdown table with ours / llama-server's ratios (for the P-stream rows, the median of
the rounds' ratios, and each round's).

  bench_concurrency.py AGENT_BINARY LLAMA_SERVER MODEL THREADS [PARALLEL]
"""

import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ttft import free_port, start_server  # noqa: E402

GEN = 256
CTX = 2048  # per sequence


def prompt(i):
    """A distinct prompt of about 300 tokens: every server sees the same ones."""
    topics = ["the garden", "my sister", "a new city", "the piano", "an old friend", "sleep", "work", "my dog"]
    topic = topics[i % len(topics)]
    story = (f"Lately I keep thinking about {topic}. Part of me is worried, part of me is curious, and part "
             f"of me just wants to rest. In the mornings the worried part is loudest; by the evening the "
             f"curious part has taken over and I end up reading about {topic} until late. ") * 5
    return [{"role": "system", "content": f"You are a warm, careful guide. (Session {i}.)"},
            {"role": "user", "content": story + f"Can you help me listen to each part about {topic}?"}]


def stream(base, messages, max_tokens=GEN, started_streaming=None):
    """One streamed completion: (outcome, ms to first content, completion tokens, end time).
    `started_streaming` (a threading.Event) is set at the first content."""
    body = json.dumps({"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}, "ignore_eos": True}).encode()
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    started = time.perf_counter()
    first, tokens, pieces = None, None, 0
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            for line in response:
                line = line.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                delta = (chunk.get("choices") or [{}])[0].get("delta", {})
                if delta.get("content"):
                    pieces += 1
                    if first is None:
                        first = (time.perf_counter() - started) * 1000
                        if started_streaming is not None:
                            started_streaming.set()
    except urllib.error.HTTPError as error:
        return ("refused" if error.code == 503 else f"http {error.code}", None, 0, time.perf_counter())
    except OSError as error:
        return (f"lost: {error}", None, 0, time.perf_counter())
    return ("served", first, tokens if tokens is not None else pieces, time.perf_counter())


def concurrently(base, prompts):
    results = [None] * len(prompts)

    def one(i):
        results[i] = stream(base, prompts[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, started


def four_streams(base, parallel, round_number):
    """P concurrent streams after distinct prompts (new ones each round: nothing is cached)."""
    results, started = concurrently(base, [prompt(10 * round_number + i) for i in range(parallel)])
    served = [r for r in results if r[0] == "served"]
    wall = max(r[3] for r in served) - started
    ttfts = sorted(r[1] for r in served)
    return {"aggregate": sum(r[2] for r in served) / wall, "ttft_median": statistics.median(ttfts),
            "ttft_worst": ttfts[-1]}


def many_at_once(base, parallel):
    many, started = concurrently(base, [prompt(100 + i) for i in range(4 * parallel)])
    outcomes = [r[0] for r in many]
    return {
        "served": outcomes.count("served"),
        "refused": outcomes.count("refused"),
        "lost": len(outcomes) - outcomes.count("served") - outcomes.count("refused"),
        "many_total": max(r[3] for r in many) - started,
    }


def turn_beside_others(base, parallel):
    alone = stream(base, prompt(200))[1]
    generating = [threading.Event() for _ in range(parallel - 1)]

    def background(i):
        stream(base, prompt(300 + i), started_streaming=generating[i])

    others = [threading.Thread(target=background, args=(i,)) for i in range(parallel - 1)]
    for t in others:
        t.start()
    for event in generating:  # the others are past their prompts and generating
        event.wait(timeout=120)
    # The turn alone's words under another session number (same topic, same length): no server
    # has its prompt cached.
    busy = stream(base, prompt(208))[1]
    for t in others:
        t.join()
    return {"alone": alone, "busy": busy}


def main():
    agent, llama_server, model, threads = sys.argv[1:5]
    parallel = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    rounds = int(os.environ.get("ROUNDS", "3"))
    names = ["ifs-agent", "llama-server"]
    processes, bases = [], {}
    try:
        port = free_port()
        processes.append(start_server([agent], {
            "AGENT_MODEL_PATH": model, "AGENT_THREADS": threads, "AGENT_CTX": str(CTX),
            "AGENT_PARALLEL": str(parallel), "AGENT_QUEUE": str(4 * parallel), "AGENT_MAX_TOKENS_LIMIT": "1024",
            "RUST_LOG": "warn", "BIND_ADDR": f"127.0.0.1:{port}"}, port, "/api/v1/agent"))
        bases["ifs-agent"] = f"http://127.0.0.1:{port}"
        port = free_port()
        processes.append(start_server([llama_server, "-m", model, "-t", threads, "-c", str(CTX * parallel), "-np",
                                str(parallel), "--host", "127.0.0.1", "--port", str(port)], {}, port, "/health"))
        bases["llama-server"] = f"http://127.0.0.1:{port}"
        # Both stay up and every measurement runs on one, then at once on the other: a slow
        # minute of this shared machine falls on both alike. The P-stream rows run `rounds`
        # times and report each server's median round, and the median of the rounds' ratios.
        streams = {name: [] for name in names}
        for round_number in range(rounds):
            for name in names:
                streams[name].append(four_streams(bases[name], parallel, round_number))
                print(f"{name}: round {round_number + 1} of {rounds} done", file=sys.stderr)
        results = {name: {} for name in names}
        for name in names:
            for key in ["aggregate", "ttft_median", "ttft_worst"]:
                results[name][key] = statistics.median(r[key] for r in streams[name])
        for measure in [many_at_once, turn_beside_others]:
            for name in names:
                results[name].update(measure(bases[name], parallel))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    ours, theirs = results["ifs-agent"], results["llama-server"]

    def ratios(key):
        """Each round's ratio, ours over theirs, and their median."""
        each = [a[key] / b[key] for a, b in zip(streams["ifs-agent"], streams["llama-server"])]
        return statistics.median(each), " ".join(f"{r:.2f}" for r in each)

    print(f"{parallel} sequences, {threads} threads, {CTX} tokens of context each, greedy, {GEN} tokens a reply; "
          f"the {parallel}-stream rows: median of {rounds} rounds, each on both servers in turn\n")
    print("| row | ifs-agent | llama-server | ratio | each round |")
    print("|---|---:|---:|---:|---|")
    rows = [
        (f"{parallel} streams: aggregate generation tokens/s", "aggregate", "{:.0f}", True),
        (f"{parallel} streams: median time to first token, ms", "ttft_median", "{:.0f}", True),
        (f"{parallel} streams: worst time to first token, ms", "ttft_worst", "{:.0f}", True),
        (f"{4 * parallel} requests at once: total s", "many_total", "{:.1f}", False),
        ("a turn alone: time to first token, ms", "alone", "{:.0f}", False),
        (f"the same turn beside {parallel - 1} streams: time to first token, ms", "busy", "{:.0f}", False),
    ]
    for label, key, fmt, per_round in rows:
        ratio, each = ratios(key) if per_round else (ours[key] / theirs[key], "")
        print(f"| {label} | {fmt.format(ours[key])} | {fmt.format(theirs[key])} | {ratio:.2f}× | {each} |")
    for name, result in [("ifs-agent", ours), ("llama-server", theirs)]:
        print(f"\n{name}: {4 * parallel} requests at once: {result['served']} served, {result['refused']} refused "
              f"before their stream (503), {result['lost']} lost; a turn beside {parallel - 1} streams waits "
              f"{result['busy'] / result['alone']:.1f}× its time alone")


if __name__ == "__main__":
    main()
