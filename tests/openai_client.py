"""Drives poed's HTTP front door with the official `openai` package (a client nobody here
wrote). Prints one JSON object of what it saw; the Rust test `e2e_http` asserts on it.

Usage:
  openai_client.py tour BASE_URL API_KEY
      completions plain and streamed, models, an unknown model, a wrong key (no retries).
  openai_client.py once BASE_URL API_KEY PROMPT
      one non-streaming completion with the SDK's DEFAULT retry policy (it retries 408, 409,
      429 and 5xx twice unless the answer says `x-should-retry: false`), to show that a
      failed request reaches the site once.
  openai_client.py conversation BASE_URL API_KEY PROMPT...
      a stateless multi-turn conversation: each PROMPT is sent with every earlier turn and
      answer (as any OpenAI client does), the second half streamed; prints each answer and
      what poed added to it (`poed`: conversation, continued, reason)."""
import json
import sys
import time

import openai


def tour(base, key):
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
    return out


def once(base, key, prompt):
    # max_retries=2 is the SDK's default, written out so the test does not depend on it.
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=2, timeout=120)
    started = time.monotonic()
    try:
        r = client.chat.completions.create(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": prompt}]
        )
        out = {"ok": r.choices[0].message.content}
    except openai.APIStatusError as e:
        out = {
            "status": e.status_code,
            "code": e.code,
            "type": e.type,
            "should_retry": e.response.headers.get("x-should-retry"),
            "retry_after": e.response.headers.get("retry-after"),
            "class": type(e).__name__,
        }
    out["seconds"] = round(time.monotonic() - started, 2)
    return out


def conversation(base, key, prompts):
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
    messages = [{"role": "system", "content": "Be brief."}]
    turns = []
    for i, prompt in enumerate(prompts):
        messages.append({"role": "user", "content": prompt})
        if i % 2 == 0:
            r = client.chat.completions.create(model="gpt-4", messages=messages)
            answer = r.choices[0].message.content
            extra = r.to_dict().get("poed")
        else:
            parts, extra = [], None
            for chunk in client.chat.completions.create(
                model="gpt-4", messages=messages, stream=True
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                extra = chunk.to_dict().get("poed", extra)
            answer = "".join(parts)
        messages.append({"role": "assistant", "content": answer})
        turns.append({"answer": answer, "poed": extra})
    return turns


if __name__ == "__main__":
    mode, base, key = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "tour":
        print(json.dumps(tour(base, key)))
    elif mode == "once":
        print(json.dumps(once(base, key, sys.argv[4])))
    elif mode == "conversation":
        print(json.dumps(conversation(base, key, sys.argv[4:])))
    else:
        sys.exit(f"unknown mode {mode!r}")
