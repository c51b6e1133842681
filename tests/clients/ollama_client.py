"""Drives `influence --serve` with the official `ollama` Python package.

Usage: python ollama_client.py BASE_URL CHAT_MODEL EMBED_MODEL
Exits non-zero with a message on the first check that fails.
"""

import json
import sys

import jsonschema
from ollama import Client, ResponseError

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
OPTIONS = {"temperature": 0, "num_predict": 20, "seed": 1}


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what.split(':')[0]}")


def main():
    base, chat_model, embed_model = sys.argv[1:4]
    c = Client(host=base, timeout=300)

    names = [m.model for m in c.list().models]
    check(chat_model in names, f"list (api/tags) contains the served model: {names}")

    show = c.show(chat_model)
    check("completion" in (show.capabilities or []), f"show: capabilities {show.capabilities}")
    check(show.details is not None and show.details.family == "llama", f"show: details {show.details}")

    r = c.chat(model=chat_model, messages=QUESTION, options=OPTIONS)
    check("Paris" in r.message.content, f"chat answer mentions Paris: {r.message.content!r}")
    check(r.done and r.done_reason in ("stop", "length"), f"chat done: {r.done} {r.done_reason}")
    check(r.eval_count > 0 and r.prompt_eval_count > 0, f"chat counts: {r.eval_count} {r.prompt_eval_count}")
    check(r.total_duration > 0 and r.eval_duration > 0, f"chat durations: {r.total_duration} {r.eval_duration}")

    parts, last = [], None
    for part in c.chat(model=chat_model, messages=QUESTION, options=OPTIONS, stream=True):
        parts.append(part.message.content)
        last = part
    streamed = "".join(parts)
    check("Paris" in streamed, f"streamed chat mentions Paris: {streamed!r}")
    check(last.done and last.eval_count > 0, f"streamed final line: {last}")

    g = c.generate(model=chat_model, prompt="What is the capital of France?", options=OPTIONS)
    check("Paris" in g.response, f"generate mentions Paris: {g.response!r}")

    # `format`: a JSON Schema constrains the answer, so it always parses and validates.
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 20}, "is_big": {"type": "boolean"}},
        "required": ["capital", "is_big"],
        "additionalProperties": False,
    }
    for opts in (OPTIONS, {"temperature": 0.8, "seed": 5, "num_predict": 40}):
        f = c.chat(model=chat_model, messages=QUESTION, options=opts, format=schema)
        value = json.loads(f.message.content)
        jsonschema.validate(value, schema)
        check(f.done_reason == "stop", f"format schema answer validates: {value}")
    j = c.generate(model=chat_model, prompt="Name a color as JSON.", options={"num_predict": 40, "temperature": 0}, format="json")
    check(j.response.startswith("{"), f"format json: {j.response!r}")

    e = c.embed(model=embed_model, input=["first text", "second text"])
    check(len(e.embeddings) == 2 and len(e.embeddings[0]) == 384, f"embed: {len(e.embeddings)} vectors")

    loaded = [m.model for m in c.ps().models]
    check(any(chat_model == n for n in loaded), f"ps lists the chat model: {loaded}")

    try:
        c.chat(model="no-such-model", messages=QUESTION)
        check(False, "unknown model should fail")
    except ResponseError as err:
        check(err.status_code == 404 and "not found" in err.error, f"unknown model is a 404: {err}")


if __name__ == "__main__":
    main()
