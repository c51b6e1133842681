"""Tool calling through the official `openai` Python package against `influence --serve`.

Usage: python openai_tools.py BASE_URL TOOL_MODEL
TOOL_MODEL must be a model whose chat template has tools (Qwen2.5-Coder). Exits non-zero with
a message on the first check that fails.
"""

import json
import sys

import jsonschema
import openai
from openai import OpenAI

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what.split(':')[0]}")


def the_call(message):
    calls = message.tool_calls or []
    check(len(calls) >= 1, f"a tool call: {message}")
    call = calls[0]
    check(call.type == "function" and call.function.name == "get_weather", f"calls get_weather: {call}")
    args = json.loads(call.function.arguments)
    check("paris" in str(args.get("city", "")).lower(), f"arguments name Paris: {args}")
    check(call.id.startswith("call_"), f"call id: {call.id}")
    return call


def main():
    base, model = sys.argv[1:3]
    client = OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0, timeout=300)
    common = dict(model=model, temperature=0, max_tokens=80, seed=1, tools=[WEATHER])

    forced = client.chat.completions.create(
        messages=ASK, tool_choice={"type": "function", "function": {"name": "get_weather"}}, **common
    )
    the_call(forced.choices[0].message)
    check(forced.choices[0].finish_reason == "tool_calls", f"forced finish_reason: {forced.choices[0].finish_reason}")

    # Forced calls are constrained from the first token: whatever is asked, with any sampling,
    # the answer is one call of an offered tool whose arguments match its schema.
    strict = {**WEATHER, "function": {**WEATHER["function"], "strict": True}}
    schema = WEATHER["function"]["parameters"]
    for i, (prompt, temperature) in enumerate([
        ("Tell me a joke about cats.", 0),
        ("What is 2 + 2?", 1.0),
        ("Weather in Oslo and in Rome, please.", 0.7),
    ]):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=temperature, seed=i,
            max_tokens=60, tools=[strict], tool_choice="required",
        )
        calls = r.choices[0].message.tool_calls or []
        check(len(calls) == 1 and calls[0].function.name == "get_weather", f"required call for {prompt!r}: {r.choices[0].message}")
        jsonschema.validate(json.loads(calls[0].function.arguments), schema)
        check(r.choices[0].finish_reason == "tool_calls", f"required call arguments validate: {calls[0].function.arguments}")

    auto = client.chat.completions.create(messages=ASK, **common)
    call = the_call(auto.choices[0].message)
    check(auto.choices[0].finish_reason == "tool_calls", f"auto finish_reason: {auto.choices[0].finish_reason}")

    # Streamed: the call arrives as tool_calls deltas, the finish reason is tool_calls.
    deltas, finish = [], None
    for chunk in client.chat.completions.create(messages=ASK, stream=True, tool_choice="required", **common):
        if chunk.choices:
            d = chunk.choices[0].delta
            if d.tool_calls:
                deltas.extend(d.tool_calls)
            if chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    check(len(deltas) >= 1 and deltas[0].index == 0, f"streamed tool_calls deltas: {deltas}")
    check(deltas[0].function.name == "get_weather", f"streamed call names the function: {deltas[0]}")
    check("city" in json.loads(deltas[0].function.arguments), f"streamed arguments: {deltas[0].function.arguments}")
    check(finish == "tool_calls", f"streamed finish_reason: {finish}")

    # The round trip: the assistant's call and the tool's result go back; the model answers.
    history = ASK + [
        auto.choices[0].message,
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 22, "sky": "sunny"})},
    ]
    final = client.chat.completions.create(messages=history, **common)
    text = final.choices[0].message.content or ""
    check(final.choices[0].finish_reason in ("stop", "length"), f"round trip finish_reason: {final.choices[0].finish_reason}")
    check("22" in text or "sunny" in text.lower(), f"round trip answer uses the result: {text!r}")

    # `none` offers no tools: plain content.
    none = client.chat.completions.create(messages=ASK, tool_choice="none", **common)
    check(not none.choices[0].message.tool_calls, f"tool_choice none: {none.choices[0].message}")

    # The Responses API, stateless: a forced call, then the round trip in `input`.
    r = client.responses.create(
        model=model, input="What is the weather like in Paris right now?", temperature=0, max_output_tokens=80,
        tools=[{"type": "function", **WEATHER["function"]}], tool_choice="required",
    )
    fc = [o for o in r.output if o.type == "function_call"]
    check(r.status == "completed" and len(fc) >= 1 and fc[0].name == "get_weather", f"responses call: {r.output}")
    follow = client.responses.create(
        model=model, temperature=0, max_output_tokens=60, tools=[{"type": "function", **WEATHER["function"]}],
        input=[
            {"role": "user", "content": "What is the weather like in Paris right now?"},
            {"type": "function_call", "call_id": fc[0].call_id, "name": fc[0].name, "arguments": fc[0].arguments},
            {"type": "function_call_output", "call_id": fc[0].call_id, "output": "22 C and sunny"},
        ],
    )
    check("22" in follow.output_text or "sunny" in follow.output_text.lower(), f"responses round trip: {follow.output_text!r}")
    events = [e.type for e in client.responses.create(
        model=model, input="Say hello.", instructions="Be brief.", max_output_tokens=10, stream=True)]
    check(events[0] == "response.created" and events[-1] in ("response.completed", "response.incomplete")
          and "response.output_text.delta" in events, f"responses stream events: {events}")

    for bad, field in [
        (dict(tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (dict(response_format={"type": "xml"}), "response_format"),
        (dict(logprobs=True, top_logprobs=50), "top_logprobs"),
        (dict(extra_body={"mirostat": 2}), "mirostat"),
    ]:
        try:
            client.chat.completions.create(messages=ASK, **{**common, **bad})
            check(False, f"{field} should be refused")
        except openai.BadRequestError as err:
            check(err.status_code == 400 and field in str(err), f"{field} is a 400 naming it: {err}")


if __name__ == "__main__":
    main()
