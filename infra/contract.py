#!/usr/bin/env python3
"""The contract test: schemathesis against `ifs-guide serve`, driven by the OpenAPI document the
server itself serves.

Starts the agent double (`bench_peers agent`, answers every chat completion at once) and
`ifs-guide serve` on free loopback ports (embedded store in a fresh directory, AGENT_URL at the
double), signs a user up and logs in, then runs schemathesis with that user's token over every
operation the server serves: examples, coverage, fuzzing and stateful phases (the links:
sign-up → login, dialogue → messages), positive and negative data, fixed seed and example count.
Logout runs last, on a token of its own, so that it cannot revoke the token the rest use. The
agent's operations (which `serve` leaves out with AGENT_URL set) run against the standalone agent
on the real model, its replies capped at a few tokens so that valid requests finish at once.

Pass = no server error, no response outside its schema, no undocumented status code, no wrong
content type or missing documented header.

  contract.py SCHEMATHESIS IFS_GUIDE BENCH_PEERS AGENT MODEL
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_api import PASSWORD, Client, free_port, wait_port  # noqa: E402

SEED = "20261126"
EXAMPLES = "100"
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
])


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    schemathesis, ifs_guide, peers, agent, model = sys.argv[1:]
    workdir = tempfile.mkdtemp(prefix="contract-")
    processes = []
    try:
        agent_port, api_port = free_port(), free_port()
        processes.append(subprocess.Popen([peers, "agent", f"127.0.0.1:{agent_port}"], stdout=subprocess.DEVNULL))
        wait_port(agent_port, processes[-1])
        env = dict(os.environ, BIND_ADDR=f"127.0.0.1:{api_port}", DATA_DIR=os.path.join(workdir, "data"),
                   STORE="embedded", SESSIONS="embedded",
                   AGENT_URL=f"http://127.0.0.1:{agent_port}/v1/chat/completions", RUST_LOG="warn")
        log = open(os.path.join(workdir, "server.log"), "w")
        processes.append(subprocess.Popen([ifs_guide, "serve"], env=env, stdout=log, stderr=log))
        wait_port(api_port, processes[-1])
        model_port = free_port()
        agent_env = dict(os.environ, BIND_ADDR=f"127.0.0.1:{model_port}", AGENT_MODEL_PATH=model,
                         AGENT_MAX_TOKENS="4", AGENT_MAX_TOKENS_LIMIT="8", RUST_LOG="warn")
        processes.append(subprocess.Popen([agent], env=agent_env, stdout=log, stderr=log))
        wait_port(model_port, processes[-1], timeout=120)

        email = "contract@example.com"
        Client(api_port).call("POST", "/api/v1/signup", {"email": email, "password": PASSWORD})

        def token():
            # A fresh connection each time: the server closes idle ones.
            return Client(api_port).call("POST", "/api/v1/login", {"email": email, "password": PASSWORD})["access_token"]

        # The committed document: the whole contract, the agent's operations included.
        schema = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "openapi.json")
        common = [schemathesis, "run", schema, "--checks", CHECKS, "--seed", SEED, "--max-examples", EXAMPLES,
                  "--mode", "all", "--workers", "1", "--request-timeout", "30", "--no-color",
                  "--suppress-health-check", "all"]
        api, agent_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{model_port}"
        every_phase = "examples,coverage,fuzzing,stateful"
        runs = [
            ("every operation of serve but logout", api, every_phase,
             ["--exclude-tag", "agent", "--exclude-operation-id", "logout"]),
            ("logout", api, "examples,coverage,fuzzing", ["--include-operation-id", "logout"]),
            ("the agent's operations, on the standalone agent", agent_url, "examples,coverage,fuzzing",
             ["--include-tag", "agent"]),
        ]
        failed = []
        for what, url, phases, selection in runs:
            print(f"--- schemathesis: {what}", flush=True)
            result = subprocess.run(common + ["--url", url, "--phases", phases] + selection
                                    + ["-H", f"Authorization: Bearer {token()}"])
            if result.returncode != 0:
                failed.append(what)
        if failed:
            with open(os.path.join(workdir, "server.log")) as f:
                tail = f.read()[-4000:]
            sys.exit(f"schemathesis found problems in: {', '.join(failed)}\n--- server log (tail):\n{tail}")
        print("contract: schemathesis passed")
    finally:
        for process in processes:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
