"""Drives the standalone agent with the official OpenAI Python client; exits non-zero on any mismatch."""
import sys

import openai
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="not-needed-locally")

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

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=8)
except openai.BadRequestError as error:
    assert error.status_code == 400
    assert error.body["code"] == "invalid_request", error.body
else:
    raise SystemExit("empty messages were accepted")

print("OK", model, repr(choice.message.content))
