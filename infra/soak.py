#!/usr/bin/env python3
"""A bounded soak: a mixed workload at 64 connections for a fixed time, then the books.

Starts the agent double and `ifs-guide serve` (release, embedded store in a fresh directory) as
`make bench-api` does, signs up 16 users, each with a dialogue, and runs two load generators at
once for the warm-up and again for the soak itself:
  - 60 connections through `wrk`: `/me`, `/dialogues`, `/messages` and dialogue continuations
    (4:2:2:2), every user in turn;
  - 4 connections logging in, every user in turn.

Pass means all of:
  - no request failed (no non-2xx answer, no socket error) in either phase;
  - nothing lost: the dialogues hold at least their first turns plus two messages for every
    continuation the server acknowledged (read back through `GET /messages`, page by page), and
    at most two more for each request that was still in flight when a phase's clock ran out
    (wrk stops reading then; the server still completes the turn, as it should);
  - nothing forked or half-written: `ifs-guide check` on the store afterwards finds nothing;
  - memory settles: resident memory after the soak is within 10% of after the warm-up. The
    store's page cache grows with its file up to EMBEDDED_CACHE_MB by design; the soak sets it to
    8 MiB, which the warm-up fills, so that what grows afterwards is what would grow for ever.

  soak.py IFS_GUIDE BENCH_PEERS [SECONDS] [WARMUP_SECONDS]
"""

import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_api import PASSWORD, Client, lua_logins, start_serve  # noqa: E402

USERS = 16
MIXED_CONNECTIONS = 60
LOGIN_CONNECTIONS = 4

# Each thread counts the continuations it saw acknowledged (a 200 whose body has a reply);
# `done` adds them up and prints one line the driver reads.
MIXED = """
local tokens = {%(tokens)s}
local dialogues = {%(dialogues)s}
local threads = {}
local n = 0
acknowledged = 0
failed = 0

function setup(thread)
  table.insert(threads, thread)
end

function request()
  n = n + 1
  local k = n %% #tokens + 1
  local headers = {["Authorization"] = "Bearer " .. tokens[k], ["Content-Type"] = "application/json"}
  local kind = n %% 10
  if kind < 4 then
    return wrk.format("GET", "/api/v1/me", headers)
  elseif kind < 6 then
    return wrk.format("GET", "/api/v1/dialogues", headers)
  elseif kind < 8 then
    return wrk.format("GET", "/api/v1/messages?dialogue_id=" .. dialogues[k], headers)
  end
  local body = '{"dialogue_id":"' .. dialogues[k] .. '","message":"Still here, still talking."}'
  return wrk.format("POST", "/api/v1/dialogue", headers, body)
end

function response(status, headers, body)
  if status ~= 200 then
    failed = failed + 1
  elseif body:find('"reply":', 1, true) then
    acknowledged = acknowledged + 1
  end
end

function done(summary, latency, requests)
  local total_acknowledged, total_failed = 0, 0
  for _, thread in ipairs(threads) do
    total_acknowledged = total_acknowledged + thread:get("acknowledged")
    total_failed = total_failed + thread:get("failed")
  end
  io.write(string.format("ACKNOWLEDGED %%d FAILED %%d\\n", total_acknowledged, total_failed))
end
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def run_phase(port, workdir, mixed, logins, seconds, what):
    """Both generators for `seconds`; returns (requests, continuations acknowledged)."""
    paths = []
    for name, script in (("mixed", mixed), ("logins", logins)):
        paths.append(os.path.join(workdir, f"{what}-{name}.lua"))
        with open(paths[-1], "w") as f:
            f.write(script)
    url = f"http://127.0.0.1:{port}"
    runs = [
        subprocess.Popen(["wrk", "-t2", f"-c{MIXED_CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", paths[0], url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen(["wrk", "-t1", f"-c{LOGIN_CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", paths[1], url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    outputs = [run.communicate()[0] for run in runs]
    requests, acknowledged = 0, 0
    for run, out in zip(runs, outputs):
        total = re.search(r"(\d+) requests in", out)
        if run.returncode != 0 or not total:
            sys.exit(f"{what}: wrk failed:\n{out}")
        for problem in (r"Non-2xx or 3xx responses: \d+", r"Socket errors: .*", r"FAILED [1-9]\d*"):
            if re.search(problem, out):
                sys.exit(f"{what}: requests failed:\n{out}")
        requests += int(total.group(1))
        counted = re.search(r"ACKNOWLEDGED (\d+)", out)
        acknowledged += int(counted.group(1)) if counted else 0
    print(f"{what}: {requests:,} requests in {seconds} s, {acknowledged:,} continuations, no errors")
    return requests, acknowledged


def stored_messages(client, token, dialogue):
    count, cursor = 0, None
    while True:
        path = f"/api/v1/messages?dialogue_id={dialogue}&limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = client.call("GET", path, token=token)
        count += len(page["messages"])
        cursor = page.get("next_cursor")
        if not cursor:
            return count


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ifs_guide, peers = sys.argv[1], sys.argv[2]
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 120
    warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    workdir = tempfile.mkdtemp(prefix="soak-")
    data_dir = os.path.join(workdir, "data")
    processes = []
    try:
        # 60 connections share 16 users: the per-user limits are lifted.
        api_port = start_serve(ifs_guide, peers, workdir, processes, DIALOGUE_RATE_LIMIT="100000",
                               DIALOGUE_CONCURRENT_TURNS="64", DAILY_TOKEN_LIMIT="0", EMBEDDED_CACHE_MB="8")
        server = processes[-1]
        env = dict(os.environ, DATA_DIR=data_dir)

        client = Client(api_port)
        emails = [f"soak{i}@example.com" for i in range(USERS)]
        tokens, dialogues = [], []
        for email in emails:
            client.call("POST", "/api/v1/signup", {"email": email, "password": PASSWORD})
            tokens.append(client.call("POST", "/api/v1/login", {"email": email, "password": PASSWORD})[
                "access_token"])
            dialogues.append(client.call("POST", "/api/v1/dialogue", {"message": "Let us begin."}, tokens[-1])[
                "dialogue_id"])
        quoted = lambda items: ", ".join(json.dumps(item) for item in items)  # noqa: E731
        mixed = MIXED % {"tokens": quoted(tokens), "dialogues": quoted(dialogues)}
        logins = lua_logins(emails)

        _, warm_acknowledged = run_phase(api_port, workdir, mixed, logins, warmup, "warm-up")
        warm_rss = rss_kib(server.pid)
        _, acknowledged = run_phase(api_port, workdir, mixed, logins, seconds, "soak")
        soak_rss = rss_kib(server.pid)

        client = Client(api_port)
        stored = sum(stored_messages(client, token, dialogue) for token, dialogue in zip(tokens, dialogues))
        expected = 2 * USERS + 2 * (warm_acknowledged + acknowledged)
        growth = (soak_rss - warm_rss) / warm_rss
        print(f"messages stored: {stored:,}; acknowledged {expected:,}, so {stored - expected} from turns "
              f"in flight at the end of a phase (at most {2 * 2 * MIXED_CONNECTIONS})")
        print(f"resident memory: {warm_rss / 1024:.1f} MiB after the warm-up, {soak_rss / 1024:.1f} MiB after "
              f"the soak ({100 * growth:+.1f}%)")
        server.terminate()
        server.wait()
        check = subprocess.run([ifs_guide, "check"], env=env, capture_output=True, text=True)
        print(f"ifs-guide check: exit {check.returncode}: {check.stdout.strip()}")
        failures = []
        in_flight = 2 * 2 * MIXED_CONNECTIONS
        if stored < expected:
            failures.append(f"{expected - stored} acknowledged messages lost")
        if stored > expected + in_flight:
            failures.append(f"{stored - expected} messages more than acknowledged, beyond what was in flight")
        if check.returncode != 0:
            failures.append(f"the store is not sound:\n{check.stdout}{check.stderr}")
        if growth > 0.10:
            failures.append(f"memory grew {100 * growth:.1f}% (more than 10%)")
        if failures:
            sys.exit("SOAK FAILED: " + "; ".join(failures))
        print("soak passed")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait()


if __name__ == "__main__":
    main()
