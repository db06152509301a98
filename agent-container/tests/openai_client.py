"""Drives the standalone agent with the official OpenAI Python client; exits non-zero on any mismatch.

  openai_client.py BASE_URL API_KEY   (the agent was started with AGENT_API_KEY=API_KEY)
"""
import sys

import openai
from openai import OpenAI

# The key is what the client sends as its api_key; a wrong one is the client's AuthenticationError.
try:
    OpenAI(base_url=sys.argv[1], api_key="wrong-key-wrong-key").models.list()
    sys.exit("a wrong key was let in")
except openai.AuthenticationError as error:
    assert error.status_code == 401 and error.code == "invalid_api_key", error

client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2])

models = client.models.list()
model = models.data[0].id

reply = client.chat.completions.create(
    model=model,
    messages=[
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Say hello to Ada."},
    ],
    max_tokens=12,
    temperature=0,
)
choice = reply.choices[0]
assert choice.message.role == "assistant", reply
assert choice.message.content and choice.message.content.strip(), reply
assert choice.finish_reason in ("stop", "length"), reply
assert reply.usage.completion_tokens <= 12, reply
assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens, reply
assert reply.model == model, (reply.model, model)

again = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Say hello to Ada."}],
    max_tokens=12,
    temperature=0,
)
assert again.choices[0].message.content == choice.message.content, "temperature 0 is deterministic"

# Streaming: chunks as the client iterates them, usage last, the same text as the whole reply.
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Say hello to Ada."}],
    max_tokens=12,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
assert len({chunk.id for chunk in chunks}) == 1, "one id for the whole stream"
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == choice.message.content, (text, choice.message.content)
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finishes == [choice.finish_reason], finishes
assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == reply.usage.total_tokens, chunks[-1]

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=8)
except openai.BadRequestError as error:
    assert error.status_code == 400
    assert error.body["code"] == "invalid_request", error.body
else:
    raise SystemExit("empty messages were accepted")

print("OK", model, repr(choice.message.content))
