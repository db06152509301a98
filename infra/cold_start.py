#!/usr/bin/env python3
"""Cold start of each Lambda binary: the time from exec to its first request for an event.

A minimal Lambda Runtime API (just `GET /2018-06-01/runtime/invocation/next`, never answered) on a
loopback port; each bootstrap is started with the environment template.yaml gives it, and the
clock stops when it first asks for an event — everything a cold start runs before the first
request (configuration, clients, keys, the model for the agent) is inside. Connections to
DynamoDB and Redis are lazy, so none are made. Login gets its key from JWT_PRIVATE_KEY here,
where on AWS it reads SSM once (one more round trip inside the VPC).

  cold_start.py RUNS BOOTSTRAP_DIR…   (each DIR holds one function's `bootstrap`, named after it)
"""

import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import keypair

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Runtime(http.server.BaseHTTPRequestHandler):
    first_poll = threading.Event()
    polled_at = 0.0

    def do_GET(self):  # noqa: N802 (the standard library's name)
        if self.path.endswith("/runtime/invocation/next") and not Runtime.first_poll.is_set():
            Runtime.polled_at = time.perf_counter()
            Runtime.first_poll.set()
        # Never answer: the function waits for an event until it is stopped.
        time.sleep(30)

    def log_message(self, *args):
        pass


def environment(function, port, private, public):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "STORE": "dynamodb",
        "TABLE_NAME": "ifs-guide",
        "SESSIONS": "redis",
        "REDIS_URL": "rediss://127.0.0.1:6379",
        "RUST_LOG": "warn",
    }
    if function == "ifs-login":
        env["JWT_PRIVATE_KEY"] = private
    else:
        env["JWT_PUBLIC_KEY"] = public
    if function == "ifs-dialogue":
        env["AGENT_FUNCTION"] = "agent"
    if function == "agent":
        env["AGENT_MODEL_PATH"] = str(MODEL)
    return env


def cold_start(bootstrap, env):
    Runtime.first_poll.clear()
    started = time.perf_counter()
    child = subprocess.Popen([bootstrap], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not Runtime.first_poll.wait(timeout=60):
        child.kill()
        sys.exit(f"{bootstrap} never asked for an event: {child.stderr.read().decode(errors='replace')[-500:]}")
    elapsed = Runtime.polled_at - started
    child.kill()
    child.wait()
    return elapsed * 1000


def main():
    runs, dirs = int(sys.argv[1]), [Path(d) for d in sys.argv[2:]]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Runtime)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    with tempfile.TemporaryDirectory() as work:
        private, public = keypair.ed25519(Path(work))
        print(f"{'function':<16} {'median ms':>10} {'p90 ms':>8} {'min ms':>8}  ({runs} runs each)")
        for directory in dirs:
            function = directory.name
            bootstrap = directory / "bootstrap"
            env = environment(function, port, private, public)
            cold_start(bootstrap, env)  # once unmeasured: the file into the page cache, as Lambda caches it
            times = sorted(cold_start(bootstrap, env) for _ in range(runs))
            p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
            print(f"{function:<16} {statistics.median(times):>10.1f} {p90:>8.1f} {times[0]:>8.1f}", flush=True)
    server.shutdown()


if __name__ == "__main__":
    main()
