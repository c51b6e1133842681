"""Drives `influence --serve`'s /v1/messages with the official `anthropic` Python package.

Usage: python anthropic_client.py BASE_URL CHAT_MODEL TOOL_MODEL
Exits non-zero with a message on the first check that fails.
"""

import sys

import anthropic

# This SDK version has no `temperature` argument; the field still goes in the body (extra_body).

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city name"}},
        "required": ["city"],
    },
}


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what.split(':')[0]}")


def main():
    base, chat_model, tool_model = sys.argv[1:4]
    client = anthropic.Anthropic(base_url=base, api_key="not-needed", max_retries=0, timeout=300)
    question = [{"role": "user", "content": "What is the capital of France?"}]

    m = client.messages.create(
        model=chat_model, max_tokens=20, extra_body={"temperature": 0}, system="You are a helpful assistant.", messages=question
    )
    text = "".join(b.text for b in m.content if b.type == "text")
    check("Paris" in text, f"message mentions Paris: {text!r}")
    check(m.stop_reason in ("end_turn", "max_tokens"), f"stop_reason: {m.stop_reason}")
    check(m.usage.input_tokens > 0 and m.usage.output_tokens > 0, f"usage: {m.usage}")

    parts = []
    with client.messages.stream(model=chat_model, max_tokens=20, extra_body={"temperature": 0}, messages=question) as s:
        for t in s.text_stream:
            parts.append(t)
        final = s.get_final_message()
    check("Paris" in "".join(parts) and len(parts) > 1, f"streamed text: {parts!r}")
    check(final.stop_reason in ("end_turn", "max_tokens"), f"streamed stop_reason: {final.stop_reason}")

    n = client.messages.count_tokens(model=chat_model, messages=question)
    check(n.input_tokens > 5, f"count_tokens: {n.input_tokens}")

    ask = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    t = client.messages.create(
        model=tool_model, max_tokens=80, extra_body={"temperature": 0}, tools=[WEATHER], messages=ask,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    uses = [b for b in t.content if b.type == "tool_use"]
    check(len(uses) >= 1 and uses[0].name == "get_weather", f"tool_use block: {t.content}")
    check("paris" in str(uses[0].input.get("city", "")).lower(), f"tool input: {uses[0].input}")
    check(t.stop_reason == "tool_use", f"tool stop_reason: {t.stop_reason}")

    with client.messages.stream(model=tool_model, max_tokens=80, extra_body={"temperature": 0}, tools=[WEATHER], messages=ask,
                                tool_choice={"type": "any"}) as s:
        streamed = s.get_final_message()
    su = [b for b in streamed.content if b.type == "tool_use"]
    check(len(su) >= 1 and su[0].input.get("city"), f"streamed tool_use: {streamed.content}")

    history = ask + [
        {"role": "assistant", "content": t.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "22 C and sunny"}]},
    ]
    r = client.messages.create(model=tool_model, max_tokens=60, extra_body={"temperature": 0}, tools=[WEATHER], messages=history)
    answer = "".join(b.text for b in r.content if b.type == "text")
    check("22" in answer or "sunny" in answer.lower(), f"round trip answer uses the result: {answer!r}")

    try:
        client.messages.create(model="no-such-model", max_tokens=5, messages=question)
        check(False, "unknown model should fail")
    except anthropic.NotFoundError as err:
        check(err.status_code == 404, f"unknown model is a 404: {err}")


if __name__ == "__main__":
    main()
