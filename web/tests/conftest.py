"""The browser suite's parts: an agent double, `ifs-guide serve` on it (and one on the real model),
and Debian's headless Chromium driven by Playwright. Each server gets a fresh data directory and
a free loopback port; every part is stopped at the end.

Environment (set by `make test-web`): IFS_GUIDE (the binary), MODEL (the GGUF), AXE (axe.min.js),
CHROMIUM (default /usr/bin/chromium-headless-shell), WEB_SCREENSHOT (where the README's
screenshot goes; unset, none is taken).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import sync_playwright

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "infra"))
from bench_api import free_port, wait_port  # noqa: E402  (shared with the benchmarks)

# The double's reply: long enough to stop midway, with a paragraph break and characters that would
# be markup if the page inserted HTML.
REPLY = ("Thank you for telling me. It sounds like one part of you wants to rest while another part keeps "
         "pushing.\n\nWhen you notice the part that pushes, what does it say to you? Take your time; there "
         "is no right answer <here> & no hurry. We can stay with whichever part feels closest right now, "
         "and listen to what it needs.")
WORD_DELAY = 0.03

CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class AgentDouble:
    """An OpenAI-compatible agent that streams REPLY a word at a time (or echoes a message that
    starts with ECHO, or refuses one that starts with BUSY as a full agent does: 503 agent_busy,
    Retry-After 7), and counts the requests it was sent."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 (the stdlib's name)
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with double.lock:
                    double.calls += 1
                last = request["messages"][-1]["content"]
                text = last[len("ECHO "):] if last.startswith("ECHO ") else REPLY
                if last.startswith("BUSY"):
                    self.answer(503, {"error": {"code": "agent_busy", "message": "every slot is taken"}},
                                {"Retry-After": "7"})
                    return
                if not request.get("stream"):
                    self.answer(200, {
                        "id": "chatcmpl-double", "object": "chat.completion", "created": 0, "model": "double",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                pieces = [w + " " for w in text.split(" ")]
                pieces[-1] = pieces[-1].rstrip(" ")
                try:
                    for piece in pieces:
                        self.event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                        time.sleep(WORD_DELAY)
                    self.event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    self.event({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": len(pieces),
                                                         "total_tokens": 10 + len(pieces)}})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # The dialogue stopped the generation.

            def answer(self, status, value, headers=None):
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, header in (headers or {}).items():
                    self.send_header(name, header)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def event(self, chunk):
                chunk.update({"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": 0,
                              "model": "double"})
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Server:
    """`ifs-guide serve` in a fresh data directory."""

    def __init__(self, env):
        self.workdir = tempfile.mkdtemp(prefix="web-test-")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = os.path.join(self.workdir, "server.log")
        self.log = open(self.log_path, "w")
        self.port = port
        self.env = dict(os.environ, BIND_ADDR=f"127.0.0.1:{port}", DATA_DIR=os.path.join(self.workdir, "data"),
                        STORE="embedded", SESSIONS="embedded", RUST_LOG="warn", **env)
        self.env.pop("CORS_ALLOW_ORIGIN", None)
        self.start()

    def start(self):
        self.process = subprocess.Popen([os.environ["IFS_GUIDE"], "serve"], env=self.env, stdout=self.log,
                                        stderr=self.log)
        wait_port(self.port, self.process, timeout=120)

    def crash(self):
        """Killed at once, every connection cut: what a lost network looks like to a browser."""
        self.process.kill()
        self.process.wait()

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def double():
    agent = AgentDouble()
    yield agent
    agent.close()


@pytest.fixture(scope="session")
def server(double):
    served = Server({"AGENT_URL": f"http://127.0.0.1:{double.port}/v1/chat/completions"})
    yield served
    served.close()


@pytest.fixture
def own_server(double):
    """A server of the test's own, which it may crash and start again."""
    served = Server({"AGENT_URL": f"http://127.0.0.1:{double.port}/v1/chat/completions"})
    yield served
    served.close()


@pytest.fixture(scope="session")
def tight_server(double):
    """A server whose daily allowance is spent by one turn of the double (10 + ~60 tokens)."""
    served = Server({"AGENT_URL": f"http://127.0.0.1:{double.port}/v1/chat/completions",
                     "DAILY_TOKEN_LIMIT": "50"})
    yield served
    served.close()


@pytest.fixture(scope="session")
def model_server():
    """The whole thing as `make run` runs it: the small model in-process."""
    served = Server({"AGENT_MODEL_PATH": os.environ["MODEL"], "AGENT_MAX_TOKENS": "80"})
    yield served
    served.close()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium-headless-shell"), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser):
    # en-US: the crisis lines shown are the United States' (the server reads Accept-Language).
    opened = browser.new_context(locale="en-US", accept_downloads=True, viewport={"width": 1100, "height": 800})
    yield opened
    opened.close()


@pytest.fixture
def page(context):
    opened = context.new_page()
    errors = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda message: message.type == "error" and errors.append(message.text))
    yield opened
    # A script error or a CSP violation is a failure even when the flow went on.
    # (Refused requests and those to a crashed server are expected; their words are tested.)
    expected = ("status of 4", "ERR_CONNECTION_REFUSED", "ERR_CONNECTION_RESET", "ERR_INCOMPLETE_CHUNKED_ENCODING",
                "ERR_EMPTY_RESPONSE")
    assert not [e for e in errors if not any(x in e for x in expected)], errors


@pytest.fixture(scope="session")
def axe_source():
    with open(os.environ["AXE"]) as f:
        return f.read()
