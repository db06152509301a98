#!/usr/bin/env python3
"""The API's speed against an empty axum server, side by side in one run.

Starts, on free loopback ports: `bench_peers hello` (an empty axum server, the yardstick),
`bench_peers agent` (an OpenAI double that answers at once) and `ifs-guide serve` (release,
embedded store in a fresh directory, AGENT_URL at the double, logs to a file as in production).
Signs a user up, logs in, holds a 5-turn dialogue, then drives each row with `wrk` and prints a
Markdown table with each figure as a share of the empty server's, measured just before and after
it (the flooded `/me` as a share of idle `/me` just before and after).

Dialogue continuation is timed apart, one request at a time (it writes, and its cost should not
depend on the dialogue's length): on fresh 10-message dialogues and on 500-message ones.

  bench_api.py IFS_GUIDE BENCH_PEERS [SECONDS] [ROUNDS]
"""

import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CONNECTIONS = 32
THREADS = 2
FLOODERS = 8
PASSWORD = "correct horse battery staple"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, process, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"port {port}: the server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"port {port}: not listening after {timeout} s")


class Client:
    """One keep-alive connection, JSON in and out."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path, body=None, token=None):
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 300:
            sys.exit(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data) if data else None


def start_peer(peers, kind, processes):
    """`bench_peers KIND` on a free port, appended to `processes`; answers its port."""
    port = free_port()
    processes.append(subprocess.Popen([peers, kind, f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL))
    wait_port(port, processes[-1])
    return port


def start_serve(ifs_guide, peers, workdir, processes, **env):
    """The agent double and `ifs-guide serve` on it (embedded store in `workdir`, logs to
    `workdir`/server.log, `env` on top), appended to `processes`; answers serve's port."""
    agent_port, api_port = start_peer(peers, "agent", processes), free_port()
    env = dict(os.environ, BIND_ADDR=f"127.0.0.1:{api_port}", DATA_DIR=os.path.join(workdir, "data"),
               AGENT_URL=f"http://127.0.0.1:{agent_port}/v1/chat/completions", STORE="embedded",
               SESSIONS="embedded", **env)
    log = open(os.path.join(workdir, "server.log"), "w")
    processes.append(subprocess.Popen([ifs_guide, "serve"], env=env, stdout=log, stderr=log))
    wait_port(api_port, processes[-1])
    return api_port


def lua_request(method, path, token=None, body=None):
    """A wrk script sending one fixed request."""
    lines = [f'wrk.method = "{method}"', f'wrk.path = "{path}"']
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    if body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f"wrk.body = {json.dumps(json.dumps(body))}")
    return "\n".join(lines) + "\n"


def lua_logins(emails):
    """A wrk script logging in as each of `emails` in turn: one email's attempts are throttled
    (more than five at once is a 429), many people's are not."""
    bodies = ", ".join(json.dumps(json.dumps({"email": e, "password": PASSWORD})) for e in emails)
    return (f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"local bodies = {{{bodies}}}\nlocal i = 0\n"
            "request = function()\n  i = i % #bodies + 1\n  return wrk.format(nil, nil, nil, bodies[i])\nend\n"
            'wrk.path = "/api/v1/login"\n')


def wrk(port, script, workdir, seconds, connections=CONNECTIONS, threads=THREADS):
    """Starts wrk; returns the process, whose output `wrk_result` reads."""
    path = os.path.join(workdir, f"script{time.monotonic_ns()}.lua")
    with open(path, "w") as f:
        f.write(script)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", path,
               f"http://127.0.0.1:{port}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_result(process, what):
    out, _ = process.communicate()
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if process.returncode != 0 or not match:
        sys.exit(f"{what}: wrk failed:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        sys.exit(f"{what}: failed requests:\n{out}")
    return float(match.group(1))


def measure(port, script, workdir, seconds, what):
    return wrk_result(wrk(port, script, workdir, seconds), what)


def continuation_ms(client, token, size, samples, dialogues):
    """Median and 90th percentile of one continuation on dialogues holding `size` messages."""
    ids = []
    for _ in range(dialogues):
        answer = client.call("POST", "/api/v1/dialogue", {"message": "Let us begin."}, token)
        ids.append(answer["dialogue_id"])
        for _ in range(size // 2 - 1):
            client.call("POST", "/api/v1/dialogue", {"dialogue_id": ids[-1], "message": "Go on."}, token)
    times = []
    for i in range(samples):
        start = time.perf_counter()
        client.call("POST", "/api/v1/dialogue", {"dialogue_id": ids[i % dialogues], "message": "And then?"},
                    token)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ifs_guide, peers = sys.argv[1], sys.argv[2]
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    workdir = tempfile.mkdtemp(prefix="bench-api-")
    processes = []
    try:
        hello_port = start_peer(peers, "hello", processes)
        # One user sends thousands of turns a minute here, many at once; the per-user limits are lifted.
        api_port = start_serve(ifs_guide, peers, workdir, processes, DIALOGUE_RATE_LIMIT="100000",
                               DIALOGUE_CONCURRENT_TURNS="64", DAILY_TOKEN_LIMIT="0")

        client = Client(api_port)
        tokens = {}
        flooders = [f"flooder{i}@example.com" for i in range(4 * FLOODERS)]
        for email in flooders:
            client.call("POST", "/api/v1/signup", {"email": email, "password": PASSWORD})
        for name in ("reader", "writer"):
            email = f"{name}@example.com"
            client.call("POST", "/api/v1/signup", {"email": email, "password": PASSWORD})
            tokens[name] = client.call("POST", "/api/v1/login", {"email": email, "password": PASSWORD})[
                "access_token"]
        token = tokens["reader"]
        dialogue = client.call("POST", "/api/v1/dialogue", {"message": "Hello there."}, token)["dialogue_id"]
        for turn in range(4):
            client.call("POST", "/api/v1/dialogue", {"dialogue_id": dialogue, "message": f"Turn {turn}."}, token)
        login = lua_logins(flooders)

        # The machine is shared and its speed drifts within seconds, so every row is measured
        # between two runs of its yardstick and compared with their mean: each API row between
        # two runs of the empty server, the flooded `/me` between two idle ones. Each figure is
        # the median over the rounds, each share the median of the rounds' own shares.
        me_path, messages_path = "/api/v1/me", f"/api/v1/messages?dialogue_id={dialogue}"
        rows = [("me", me_path), ("messages", messages_path), ("dialogues", "/api/v1/dialogues")]
        figures = {key: [] for key in ("hello", "me", "messages", "dialogues", "idle", "flooded", "flood")}
        shares = {key: [] for key in ("me", "messages", "dialogues", "flooded")}

        def hello():
            return measure(hello_port, lua_request("GET", "/"), workdir, seconds, "hello")

        def me(what):
            return measure(api_port, lua_request("GET", me_path, token), workdir, seconds, what)

        for round_ in range(rounds):
            before = hello()
            figures["hello"].append(before)
            for key, path in rows:
                rate = measure(api_port, lua_request("GET", path, token), workdir, seconds, path)
                after = hello()
                figures[key].append(rate)
                shares[key].append(rate / ((before + after) / 2))
                before = after
            idle_before = me("/me before the login flood")
            flood = wrk(api_port, login, workdir, seconds + 2, connections=FLOODERS, threads=1)
            time.sleep(1)
            flooded = me("/me during the login flood")
            figures["flood"].append(wrk_result(flood, "the login flood"))
            idle_after = me("/me after the login flood")
            figures["idle"].append((idle_before + idle_after) / 2)
            figures["flooded"].append(flooded)
            shares["flooded"].append(flooded / ((idle_before + idle_after) / 2))
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in figures.items())
                  + " | shares " + ", ".join(f"{k} {100 * v[-1]:.0f}%" for k, v in shares.items()),
                  file=sys.stderr)
        login_alone = measure(api_port, login, workdir, seconds, "/login")

        def share(key):
            return statistics.median(shares[key])

        median = {key: statistics.median(values) for key, values in figures.items()}
        rows = [
            ("an empty axum server (`GET /`)", median["hello"], ""),
            ("`GET /api/v1/me`", median["me"], f"{100 * share('me'):.0f}% of the empty server"),
            ("`GET /api/v1/messages` (5-turn dialogue)", median["messages"],
             f"{100 * share('messages'):.0f}% of the empty server"),
            ("`GET /api/v1/dialogues`", median["dialogues"], f"{100 * share('dialogues'):.0f}% of the empty server"),
            (f"`GET /api/v1/me` while {FLOODERS} clients flood `POST /login`", median["flooded"],
             f"{100 * share('flooded'):.0f}% of idle `/me` just before and after"),
            ("`POST /api/v1/login` during that flood", median["flood"], ""),
            ("`POST /api/v1/login` alone (8 clients)", login_alone, ""),
        ]

        # A fresh connection: the server closed the first one while it idled through the rows.
        client = Client(api_port)
        short = continuation_ms(client, tokens["writer"], 10, 200, 200)
        long = continuation_ms(client, tokens["writer"], 500, 200, 4)

        print(f"\n`wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s`, median of {rounds} rounds, each row between "
              f"two runs of its yardstick, release build, embedded store, {os.cpu_count()} cores\n")
        print("| what | req/s | share |")
        print("|---|---:|---|")
        for what, rate, shown in rows:
            print(f"| {what} | {rate:,.0f} | {shown} |")
        print("\n`POST /api/v1/dialogue` continuation, one at a time, agent double answering at once:\n")
        print("| dialogue length | median | p90 |")
        print("|---|---:|---:|")
        print(f"| 10 messages (200 dialogues) | {short[0]:.2f} ms | {short[1]:.2f} ms |")
        print(f"| 500 messages (4 dialogues, 50 turns each) | {long[0]:.2f} ms | {long[1]:.2f} ms |")
        print(f"\nlength 500 / length 10 (median): {long[0] / short[0]:.2f}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()


if __name__ == "__main__":
    main()
