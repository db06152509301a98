#!/usr/bin/env python3
"""The contract test: schemathesis against `ifs-guide serve` and the standalone agent, driven by
the committed OpenAPI document (openapi.json), after checking that what serve serves at
/api/v1/openapi.json is that document less the agent's operations (AGENT_URL sends them away).

Starts the agent double (`bench_peers agent`, answers every chat completion at once) and
`ifs-guide serve` on free loopback ports (embedded store in a fresh directory, AGENT_URL at the
double), signs a user up and logs in, then runs schemathesis with that user's token over every
operation the server serves: examples, coverage, fuzzing and stateful phases (the links:
sign-up → login, dialogue → messages), positive and negative data, fixed seed and example count.
Logout and the account's deletion run last, each on a user of its own, so that neither can revoke
the token the rest use. The
agent's operations (which `serve` leaves out with AGENT_URL set) run against the standalone agent
on the real model, its replies capped at a few tokens so that valid requests finish at once.

Pass = no server error, no response outside its schema, no undocumented status code, no wrong
content type or missing documented header.

  contract.py SCHEMATHESIS IFS_GUIDE BENCH_PEERS AGENT MODEL
"""

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_api import PASSWORD, Client, free_port, start_serve, wait_port  # noqa: E402

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
        api_port = start_serve(ifs_guide, peers, workdir, processes, RUST_LOG="warn")
        log = open(os.path.join(workdir, "agent.log"), "w")
        model_port = free_port()
        agent_env = dict(os.environ, BIND_ADDR=f"127.0.0.1:{model_port}", AGENT_MODEL_PATH=model,
                         AGENT_MAX_TOKENS="4", AGENT_MAX_TOKENS_LIMIT="8", RUST_LOG="warn")
        processes.append(subprocess.Popen([agent], env=agent_env, stdout=log, stderr=log))
        wait_port(model_port, processes[-1], timeout=120)

        # Every token first: schemathesis infers a link from /me's `email` to login and guesses
        # passwords for it, so that email is throttled (429) by the time logout's turn comes.
        tokens = []
        for email in ("contract@example.com", "logout@example.com", "erase@example.com"):
            # A fresh connection each time: the server closes idle ones.
            Client(api_port).call("POST", "/api/v1/signup", {"email": email, "password": PASSWORD})
            tokens.append(Client(api_port).call("POST", "/api/v1/login", {"email": email, "password": PASSWORD})[
                "access_token"])

        # The committed document: the whole contract, the agent's operations included.
        schema = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "openapi.json")
        with open(schema) as f:
            committed = json.load(f)
        served = Client(api_port).call("GET", "/api/v1/openapi.json")
        expected = {path: item for path, item in committed["paths"].items()
                    if not any("agent" in op.get("tags", []) for op in item.values())}
        if served["paths"] != expected:
            sys.exit("serve's /api/v1/openapi.json is not openapi.json less the agent's operations")
        common = [schemathesis, "run", schema, "--checks", CHECKS, "--seed", SEED, "--max-examples", EXAMPLES,
                  "--mode", "all", "--workers", "1", "--request-timeout", "30", "--no-color",
                  "--suppress-health-check", "all"]
        api, agent_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{model_port}"
        every_phase = "examples,coverage,fuzzing,stateful"
        runs = [
            ("every operation of serve but logout and the account's deletion", api, every_phase,
             ["--exclude-tag", "agent", "--exclude-operation-id", "logout", "--exclude-operation-id",
              "delete_account"]),
            ("logout", api, "examples,coverage,fuzzing", ["--include-operation-id", "logout"]),
            ("the account's deletion", api, "examples,coverage,fuzzing", ["--include-operation-id", "delete_account"]),
            ("the agent's operations, on the standalone agent", agent_url, "examples,coverage,fuzzing",
             ["--include-tag", "agent"]),
        ]
        failed = []
        for (what, url, phases, selection), token in zip(runs, [tokens[0], tokens[1], tokens[2], tokens[0]]):
            print(f"--- schemathesis: {what}", flush=True)
            result = subprocess.run(common + ["--url", url, "--phases", phases] + selection
                                    + ["-H", f"Authorization: Bearer {token}"])
            print(f"--- schemathesis: {what}: exit {result.returncode}", flush=True)
            if result.returncode != 0:
                failed.append(what)
        if failed:
            tail = ""
            for name in ("server.log", "agent.log"):
                with open(os.path.join(workdir, name)) as f:
                    tail += f"[{name}]\n" + f.read()[-3000:]
            sys.exit(f"schemathesis found problems in: {', '.join(failed)}\n--- server log (tail):\n{tail}")
        print("contract: schemathesis passed")
    finally:
        for process in processes:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
