"""Drives `influence --serve` with the official `openai` Python package.

Usage: python openai_client.py BASE_URL CHAT_MODEL EMBED_MODEL
Exits non-zero with a message on the first check that fails.
"""

import json
import math
import sys

import jsonschema
import openai
from openai import OpenAI

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what.split(':')[0]}")


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def main():
    base, chat_model, embed_model = sys.argv[1:4]
    client = OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0, timeout=300)

    ids = [m.id for m in client.models.list().data]
    check(chat_model in ids, f"models.list contains the served model: {ids}")

    r = client.chat.completions.create(
        model=chat_model, messages=QUESTION, temperature=0, max_tokens=20, seed=1
    )
    text = r.choices[0].message.content
    check("Paris" in text, f"chat answer mentions Paris: {text!r}")
    check(r.choices[0].finish_reason in ("stop", "length"), f"finish_reason: {r.choices[0].finish_reason}")
    check(r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, f"usage: {r.usage}")

    parts, usage, finish = [], None, None
    stream = client.chat.completions.create(
        model=chat_model,
        messages=QUESTION,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices:
            if chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    streamed = "".join(parts)
    check("Paris" in streamed, f"streamed chat mentions Paris: {streamed!r}")
    check(len(parts) > 1, f"streamed in several chunks: {len(parts)}")
    check(finish in ("stop", "length"), f"streamed finish_reason: {finish}")
    check(usage is not None and usage.completion_tokens >= 1, f"streamed usage: {usage}")

    # Structured output: the answer is constrained to the schema, so it always parses and
    # validates (the schema's strings are bounded, so it always closes within max_tokens).
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"enum": ["France", "Italy", "Spain"]},
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 40},
        },
        "required": ["city", "country", "population_millions"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema, "strict": True}}
    for temperature in (0, 0.8):
        r = client.chat.completions.create(
            model=chat_model, messages=QUESTION, temperature=temperature, max_tokens=60, seed=3,
            response_format=fmt,
        )
        value = json.loads(r.choices[0].message.content)
        jsonschema.validate(value, schema)
        check(r.choices[0].finish_reason == "stop", f"json_schema answer validates at t={temperature}: {value}")
    parts = []
    for chunk in client.chat.completions.create(
        model=chat_model, messages=QUESTION, temperature=0, max_tokens=60, response_format=fmt, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    jsonschema.validate(json.loads("".join(parts)), schema)
    check(len(parts) > 1, f"streamed json_schema answer validates: {''.join(parts)}")
    # The SDK's own structured-output helper parses the answer into the schema.
    parsed = client.chat.completions.parse(
        model=chat_model, messages=QUESTION, temperature=0, max_tokens=60, response_format=fmt
    )
    check(json.loads(parsed.choices[0].message.content)["country"] in ("France", "Italy", "Spain"), "parse() helper")
    mode = client.chat.completions.create(
        model=chat_model, messages=QUESTION + [{"role": "user", "content": "Answer in JSON."}], temperature=0,
        max_tokens=60, response_format={"type": "json_object"},
    )
    check(mode.choices[0].message.content.startswith("{"), f"json_object mode: {mode.choices[0].message.content!r}")
    yes_no = client.chat.completions.create(
        model=chat_model, messages=[{"role": "user", "content": "Is Paris in France?"}], temperature=0,
        max_tokens=5, extra_body={"grammar": 'start: "yes" | "no"'},
    )
    check(yes_no.choices[0].message.content in ("yes", "no"), f"grammar: {yes_no.choices[0].message.content!r}")
    try:
        client.chat.completions.create(
            model=chat_model, messages=QUESTION, max_tokens=5, extra_body={"grammar": "start: nowhere"}
        )
        check(False, "a grammar that does not compile should fail")
    except openai.BadRequestError as err:
        check(err.status_code == 400 and "grammar" in str(err), f"bad grammar is a 400 naming it: {err}")

    c = client.completions.create(
        model=chat_model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    check(len(c.choices[0].text) > 0, f"completion text: {c.choices[0].text!r}")

    # The SDK asks for base64 by default and decodes it.
    e = client.embeddings.create(
        model=embed_model,
        input=["The cat sat on the mat.", "A cat was sitting on a rug.", "Stock markets fell sharply today."],
    )
    vecs = [d.embedding for d in e.data]
    check(len(vecs) == 3 and len(vecs[0]) == 384, f"three 384-d embeddings: {[len(v) for v in vecs]}")
    close, far = cosine(vecs[0], vecs[1]), cosine(vecs[0], vecs[2])
    check(close > far, f"similar sentences are closer: {close:.3f} > {far:.3f}")
    f = client.embeddings.create(model=embed_model, input="The cat sat on the mat.", encoding_format="float")
    check(abs(cosine(f.data[0].embedding, vecs[0]) - 1.0) < 1e-5, "float and base64 encodings agree")

    try:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
        check(False, "unknown model should fail")
    except openai.NotFoundError as err:
        check(err.status_code == 404 and "no-such-model" in str(err), f"unknown model is a 404: {err}")


if __name__ == "__main__":
    main()
