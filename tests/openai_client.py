"""Drives poed's HTTP front door with the official `openai` package (a client nobody here
wrote). Usage: openai_client.py BASE_URL API_KEY. Prints one JSON object of what it saw; the
Rust test `e2e_http` asserts on it."""
import json
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
out = {}

r = client.chat.completions.create(
    model="gpt-4", messages=[{"role": "user", "content": "hello from openai"}]
)
out["plain"] = {
    "content": r.choices[0].message.content,
    "role": r.choices[0].message.role,
    "finish": r.choices[0].finish_reason,
    "object": r.object,
    "total_tokens": r.usage.total_tokens,
}

stream = client.chat.completions.create(
    model="gpt-3.5-turbo",
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "stream [[unicode]] please"},
    ],
    stream=True,
    temperature=0.2,  # unknown to poed: ignored, not rejected
)
parts, roles, finishes = [], [], []
for chunk in stream:
    delta = chunk.choices[0].delta
    if delta.role:
        roles.append(delta.role)
    if delta.content:
        parts.append(delta.content)
    if chunk.choices[0].finish_reason:
        finishes.append(chunk.choices[0].finish_reason)
out["stream"] = {"content": "".join(parts), "roles": roles, "finishes": finishes}

try:
    client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    out["unknown_model"] = "no error"
except openai.NotFoundError as e:
    out["unknown_model"] = {"status": e.status_code, "code": e.code}

try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    out["bad_key"] = "no error"
except openai.AuthenticationError as e:
    out["bad_key"] = {"status": e.status_code}

out["models"] = sorted(m.id for m in client.models.list())
out["model"] = client.models.retrieve("meta-llama/Llama-2-7b-chat-hf").id
print(json.dumps(out))
