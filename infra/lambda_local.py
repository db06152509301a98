#!/usr/bin/env python3
"""The whole API through the Lambda runtime, without Docker or an AWS account.

`cargo lambda watch --only-lambda-apis` emulates Lambda's Runtime and Invoke APIs and routes HTTP
requests to functions by the `[workspace.metadata.lambda.watch.router]` table of Cargo.toml (the
same routes as template.yaml; a test keeps them equal). Every function binary then runs as it
runs on AWS: the seven zip functions and the agent, each polling its Runtime API through
`lambda_http`, configured by environment variables as template.yaml configures them — DynamoDB
(DynamoDB Local), Redis (redis-server), the signing key, and the agent invoked as a Lambda
function (`AGENT_FUNCTION`) unless AGENT_URL names another. DynamoDB Local and redis-server are
started unless DYNAMODB_ENDPOINT / REDIS_URL are set.

  lambda_local.py BIN_DIR            serve on 127.0.0.1:$LAMBDA_PORT (9000) until Ctrl-C
  lambda_local.py BIN_DIR --test     serve on free ports, drive the API end to end, stop

BIN_DIR holds the built binaries (ifs-signup … ifs-messages, agent, ifs-guide).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import keypair

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ["ifs-signup", "ifs-login", "ifs-me", "ifs-logout", "ifs-dialogue", "ifs-dialogues", "ifs-messages"]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, what, process, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            sys.exit(f"{what} exited at once (status {process.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"{what} did not listen on port {port} within {timeout} s")


class Processes:
    """Children, each in a session of its own, so that stopping them never touches our own group."""

    def __init__(self, logs):
        self.children = []
        self.logs = logs

    def start(self, name, argv, env=None, cwd=None):
        log = open(self.logs / f"{name}.log", "wb")
        child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.children.append((name, child))
        return child

    def stop(self):
        for _, child in reversed(self.children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for _, child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)

    def dead(self):
        return [name for name, child in self.children if child.poll() is not None]


def start(bin_dir, port, processes, work):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_LAMBDA_", "JWT_"))}
    if not env.get("REDIS_URL"):
        redis_port = free_port()
        redis = processes.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"])
        wait_for_port(redis_port, "redis-server", redis)
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
    if not env.get("DYNAMODB_ENDPOINT"):
        dynamo_port = free_port()
        jar_dir = ROOT / ".cache" / "dynamodb-local"
        dynamo = processes.start("dynamodb-local", ["java", "-Djava.library.path=DynamoDBLocal_lib", "-jar",
                                                    "DynamoDBLocal.jar", "-inMemory", "-port", str(dynamo_port)],
                                 cwd=jar_dir)
        wait_for_port(dynamo_port, "DynamoDB Local", dynamo)
        env["DYNAMODB_ENDPOINT"] = f"http://127.0.0.1:{dynamo_port}"
    env.setdefault("TABLE_NAME", "ifs-guide")
    subprocess.run([bin_dir / "ifs-guide", "create-table"], env=env, check=True)

    # The emulator: Runtime and Invoke APIs, and the HTTP router.
    watch = processes.start("cargo-lambda-watch", [ROOT / ".cache" / "venv" / "bin" / "cargo-lambda", "lambda",
                                                   "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1",
                                                   "--invoke-port", str(port), "--timeout", "60"],
                            env=env, cwd=ROOT)
    wait_for_port(port, "cargo lambda watch", watch)

    private, public = keypair.ed25519(work)
    env.update({"STORE": "dynamodb", "SESSIONS": "redis"})
    if not env.get("AGENT_URL"):
        env.update({"AGENT_FUNCTION": "agent", "AGENT_LAMBDA_ENDPOINT": f"http://127.0.0.1:{port}"})
    for function in FUNCTIONS + ["agent"]:
        function_env = dict(env, AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{port}/.rt/{function}",
                            AWS_LAMBDA_FUNCTION_NAME=function, AWS_LAMBDA_FUNCTION_VERSION="1",
                            AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024")
        # As template.yaml does: the signing key for login only, the public key for the rest.
        if function == "ifs-login":
            function_env["JWT_PRIVATE_KEY"] = private
        else:
            function_env["JWT_PUBLIC_KEY"] = public
        if function == "agent":
            function_env.setdefault("AGENT_MODEL_PATH", str(MODEL))
        if function == "ifs-dialogue":
            # As template.yaml does: the dialogue function answers through response streaming.
            # Unlike on AWS the agent answers whole and is invoked with Invoke: cargo lambda
            # watch 1.9 does not serve the SDK's InvokeWithResponseStream path (it hands the
            # function an event without a request id). That path is tested against a stand-in
            # of Lambda's API (functions/dialogue/tests/lambda_agent.rs).
            function_env["LAMBDA_STREAMING"] = "true"
        if function == "ifs-me":
            # As template.yaml does: the account's export streams, and so the whole function.
            function_env["LAMBDA_STREAMING"] = "true"
        processes.start(function, [bin_dir / function], env=function_env)
    return env


def call(base, method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=90) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


def call_raw(base, path, token):
    """A GET whose answer is a download: its text, after checking it is one."""
    request = urllib.request.Request(base + path)
    request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=90) as response:
        if response.status != 200 or not response.headers["content-disposition"].startswith("attachment;"):
            raise AssertionError(f"{path}: {response.status} {response.headers}")
        return response.read().decode()


def stream_turn(base, body, token):
    """A dialogue turn asked for as a stream: its (event, data) pairs, read as they arrive."""
    request = urllib.request.Request(base + "/api/v1/dialogue", data=json.dumps(body).encode(), method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("authorization", f"Bearer {token}")
    events, name, data = [], None, []
    with urllib.request.urlopen(request, timeout=90) as response:
        if response.status != 200 or not response.headers["content-type"].startswith("text/event-stream"):
            raise AssertionError(f"streamed turn: {response.status} {response.headers['content-type']}")
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                events.append((name, json.loads("\n".join(data))))
                name, data = None, []
    return events


def expect(answer, status, what):
    got, body = answer
    if got != status:
        raise AssertionError(f"{what}: expected {status}, got {got}: {body}")
    return body


def end_to_end(base):
    """signup → login → me → dialogue → continue → rename → dialogues → messages → delete → logout, and
    refusals."""
    email, password = "lambda@example.com", "correct horse battery"
    user = expect(call(base, "POST", "/api/v1/signup", {"email": email, "password": password}), 201, "signup")
    expect(call(base, "POST", "/api/v1/signup", {"email": email, "password": password}), 409, "signup again")
    expect(call(base, "POST", "/api/v1/login", {"email": email, "password": "wrong password!"}), 401, "bad login")
    token = expect(call(base, "POST", "/api/v1/login", {"email": email, "password": password}), 200,
                   "login")["access_token"]
    me = expect(call(base, "GET", "/api/v1/me", token=token), 200, "me")
    assert me["id"] == user["id"] and me["email"] == email, me
    expect(call(base, "GET", "/api/v1/me"), 401, "me without a token")

    first = expect(call(base, "POST", "/api/v1/dialogue", {"message": "Hello, who are you?", "max_tokens": 16},
                        token), 201, "start a dialogue")
    dialogue = first["dialogue_id"]
    assert first["reply"]["role"] == "assistant" and first["reply"]["content"].strip(), first
    second = expect(call(base, "POST", "/api/v1/dialogue",
                         {"message": "Tell me more.", "dialogue_id": dialogue, "max_tokens": 16}, token),
                    200, "continue the dialogue")
    assert second["message"]["seq"] == 3 and second["reply"]["seq"] == 4, second

    # Regenerating the last reply: the same message, a second version, the first one kept.
    again = expect(call(base, "POST", "/api/v1/dialogue",
                        {"dialogue_id": dialogue, "regenerate": True, "max_tokens": 16}, token), 200, "regenerate")
    assert again["reply"]["id"] == second["reply"]["id"] and again["reply"]["version"] == 2, again
    versions = expect(call(base, "GET", f"/api/v1/messages/{again['reply']['id']}/versions?dialogue_id={dialogue}",
                           token=token), 200, "versions")
    assert [v["version"] for v in versions["versions"]] == [1, 2], versions

    # A streamed turn: events arrive through Lambda response streaming, stored like any other.
    events = stream_turn(base, {"message": "And then?", "dialogue_id": dialogue, "max_tokens": 16,
                                "stream": True}, token)
    names = [name for name, _ in events]
    assert names[0] == "message" and names[-1] == "reply" and set(names[1:-1]) == {"delta"}, events
    deltas = "".join(data["content"] for name, data in events if name == "delta")
    assert events[-1][1]["content"] == deltas and events[-1][1]["seq"] == 6, events

    # A crisis: the agent is not asked (no model, no usage, no tokens counted), the fixed reply is
    # stored, buffered and streamed alike, and the counts move.
    used = expect(call(base, "GET", "/api/v1/me", token=token), 200, "me")["usage"]["tokens_today"]
    crisis = expect(call(base, "POST", "/api/v1/dialogue", {"message": "I want to kill myself"}, token), 201,
                    "a crisis message")
    reply = crisis["reply"]
    assert reply["finish_reason"] == "safety" and reply["safety"]["level"] == "crisis", reply
    assert "model" not in reply and "usage" not in reply, reply
    events = stream_turn(base, {"message": "Quiero morir", "dialogue_id": crisis["dialogue_id"], "stream": True},
                         token)
    assert [name for name, _ in events] == ["message", "delta", "reply"], events
    assert events[-1][1]["finish_reason"] == "safety" and "Gracias" in events[-1][1]["content"], events
    after = expect(call(base, "GET", "/api/v1/me", token=token), 200, "me")["usage"]["tokens_today"]
    assert after == used, f"the agent was asked: {used} tokens before the crisis turns, {after} after"
    expect(call(base, "DELETE", f"/api/v1/dialogues/{crisis['dialogue_id']}", token=token), 204, "delete it")

    renamed = expect(call(base, "PATCH", f"/api/v1/dialogues/{dialogue}", {"title": "Through Lambda"}, token),
                     200, "rename the dialogue")
    assert renamed["title"] == "Through Lambda" and renamed["id"] == dialogue, renamed
    listed = expect(call(base, "GET", "/api/v1/dialogues", token=token), 200, "dialogues")
    assert [d["id"] for d in listed["dialogues"]] == [dialogue], listed
    assert listed["dialogues"][0]["message_count"] == 6, listed
    assert listed["dialogues"][0]["title"] == "Through Lambda", listed
    page = expect(call(base, "GET", f"/api/v1/messages?dialogue_id={dialogue}&limit=4", token=token), 200,
                  "messages")
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3, 4] and page["next_cursor"], page
    rest = expect(call(base, "GET", f"/api/v1/messages?dialogue_id={dialogue}&cursor={page['next_cursor']}",
                       token=token), 200, "next page")
    assert [m["seq"] for m in rest["messages"]] == [5, 6], rest
    assert rest["messages"][1]["content"] == deltas, rest
    refused = expect(call(base, "GET", "/api/v1/messages?dialogue_id=not-an-id", token=token), 400, "bad id")
    assert refused["error"]["code"], refused

    # Editing an earlier message: a fork up to the one before it, continued with the new text.
    forked = expect(call(base, "POST", f"/api/v1/dialogues/{dialogue}/fork",
                         {"message_id": page["messages"][1]["id"]}, token), 201, "fork the dialogue")
    assert forked["message_count"] == 2 and forked["forked_from"] == {
        "dialogue_id": dialogue, "message_id": page["messages"][1]["id"]}, forked
    copies = expect(call(base, "GET", f"/api/v1/messages?dialogue_id={forked['id']}", token=token), 200, "fork")
    assert [m["content"] for m in copies["messages"]] == [m["content"] for m in page["messages"][:2]], copies

    # Exports: the dialogue as Markdown, the whole account as JSON (streamed by the me function).
    markdown = call_raw(base, f"/api/v1/dialogues/{dialogue}/export?format=markdown", token)
    assert markdown.startswith("# Through Lambda\n") and markdown.count("**You** · ") == 3, markdown
    account = json.loads(call_raw(base, "/api/v1/me/export", token))
    assert account["profile"]["email"] == email, account["profile"]
    assert sorted(len(d["messages"]) for d in account["dialogues"]) == [2, 6], account

    # Erasure: one dialogue, then all of them; what was erased is 404 from then on.
    other = expect(call(base, "POST", "/api/v1/dialogue", {"message": "A second one.", "max_tokens": 8}, token),
                   201, "a second dialogue")["dialogue_id"]
    expect(call(base, "DELETE", f"/api/v1/dialogues/{dialogue}", token=token), 204, "delete the dialogue")
    expect(call(base, "GET", f"/api/v1/messages?dialogue_id={dialogue}", token=token), 404, "a deleted dialogue")
    expect(call(base, "DELETE", "/api/v1/dialogues", token=token), 204, "delete every dialogue")
    expect(call(base, "GET", f"/api/v1/messages?dialogue_id={other}", token=token), 404, "all deleted")
    listed = expect(call(base, "GET", "/api/v1/dialogues", token=token), 200, "dialogues after deleting")
    assert listed["dialogues"] == [], listed

    expect(call(base, "POST", "/api/v1/logout", {}, token), 204, "logout")
    expect(call(base, "GET", "/api/v1/me", token=token), 401, "me after logout")

    # Erasing the account: the password again, then nothing of it is left and the email is free.
    token = expect(call(base, "POST", "/api/v1/login", {"email": email, "password": password}), 200,
                   "login again")["access_token"]
    expect(call(base, "DELETE", "/api/v1/me", {"password": "not it at all"}, token), 401, "delete, wrong password")
    expect(call(base, "DELETE", "/api/v1/me", {"password": password}, token), 204, "delete the account")
    expect(call(base, "GET", "/api/v1/me", token=token), 401, "me after the account's deletion")
    expect(call(base, "POST", "/api/v1/login", {"email": email, "password": password}), 401, "login, deleted")
    expect(call(base, "POST", "/api/v1/signup", {"email": email, "password": password}), 201, "sign up again")
    print("end to end through cargo lambda watch: signup, login, me, dialogue (agent invoked as a Lambda "
          "function), continue, regenerate and versions, a streamed turn, crisis turns that never reach the "
          "agent, rename, dialogues, messages, fork, "
          "export, delete one and all, logout, "
          "account deletion — all as expected")


def interrupted(*_):
    raise KeyboardInterrupt


def main():
    # SIGTERM and SIGINT (even when started in the background, which ignores it) stop
    # everything as Ctrl-C does: the children run in sessions of their own.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    bin_dir = Path(sys.argv[1]).resolve()
    test = "--test" in sys.argv[2:]
    missing = [name for name in FUNCTIONS + ["agent", "ifs-guide"] if not (bin_dir / name).is_file()]
    if missing:
        sys.exit(f"missing binaries in {bin_dir}: {', '.join(missing)}")
    port = free_port() if test else int(os.environ.get("LAMBDA_PORT", "9000"))
    with tempfile.TemporaryDirectory(prefix="lambda-local-") as work:
        work = Path(work)
        processes = Processes(work)
        try:
            start(bin_dir, port, processes, work)
            base = f"http://127.0.0.1:{port}"
            if not test:
                print(f"the API through cargo lambda watch: {base} (Ctrl-C stops everything)", flush=True)
                while not processes.dead():
                    time.sleep(1)
                sys.exit(f"stopped: {', '.join(processes.dead())} exited")
            time.sleep(1)
            if processes.dead():
                raise AssertionError(f"exited at start: {', '.join(processes.dead())}")
            end_to_end(base)
        except (AssertionError, subprocess.CalledProcessError) as failure:
            for log in sorted(work.glob("*.log")):
                print(f"----- {log.name} (last lines)", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-int(os.environ.get("LOG_LINES", "15")):]), file=sys.stderr)
            sys.exit(f"FAILED: {failure}")
        except KeyboardInterrupt:
            pass
        finally:
            processes.stop()


if __name__ == "__main__":
    main()
