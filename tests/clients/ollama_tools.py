"""Tool calling through the official `ollama` Python package against `influence --serve`.

Usage: python ollama_tools.py BASE_URL TOOL_MODEL
Exits non-zero with a message on the first check that fails.
"""

import sys

from ollama import Client, ResponseError


def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
      city: The city name

    Returns:
      The weather
    """
    return "22 C and sunny"


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what.split(':')[0]}")


def main():
    base, model = sys.argv[1:3]
    c = Client(host=base, timeout=300)
    ask = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    options = {"temperature": 0, "num_predict": 80, "seed": 1}

    r = c.chat(model=model, messages=ask, tools=[get_weather], options=options)
    calls = r.message.tool_calls or []
    check(len(calls) >= 1, f"a tool call: {r.message}")
    check(calls[0].function.name == "get_weather", f"calls get_weather: {calls[0]}")
    check("paris" in str(calls[0].function.arguments.get("city", "")).lower(), f"arguments: {calls[0].function.arguments}")

    streamed = []
    for part in c.chat(model=model, messages=ask, tools=[get_weather], options=options, stream=True):
        streamed.extend(part.message.tool_calls or [])
    check(len(streamed) >= 1 and streamed[0].function.name == "get_weather", f"streamed tool call: {streamed}")

    history = ask + [r.message, {"role": "tool", "content": get_weather("Paris"), "tool_name": "get_weather"}]
    final = c.chat(model=model, messages=history, tools=[get_weather], options=options)
    check(final.message.content and ("22" in final.message.content or "sunny" in final.message.content.lower()),
          f"round trip answer uses the result: {final.message.content!r}")

    # Qwen2.5-Coder has no thinking mode: asking for it is refused, not ignored.
    try:
        c.chat(model=model, messages=ask, think=True, options=options)
        check(False, "think on a model without thinking should fail")
    except ResponseError as err:
        check(err.status_code == 400 and "think" in str(err), f"think is a 400: {err}")
    off = c.chat(model=model, messages=ask, think=False, options=options)
    check(off.message.content, f"think=False answers: {off.message}")

    try:
        c.chat(model=model, messages=ask, options={**options, "num_thread": 4})
        check(False, "an option Influence does not act on should fail")
    except ResponseError as err:
        check(err.status_code == 400 and "num_thread" in str(err), f"options.num_thread is a 400: {err}")


if __name__ == "__main__":
    main()
