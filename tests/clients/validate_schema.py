"""Checks constrained output against its JSON Schema with the pinned `jsonschema` package.

Usage: python validate_schema.py < CASES
CASES is one JSON object per line: {"schema": {...}, "output": "the generated text"}.
Exits non-zero naming the first output that does not parse or does not validate.
"""

import json
import sys

import jsonschema


def main():
    n = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        schema = {k: v for k, v in case["schema"].items() if k != "x-guidance"}
        try:
            value = json.loads(case["output"])
        except json.JSONDecodeError as err:
            print(f"FAIL: output is not JSON ({err}): {case['output']!r}", file=sys.stderr)
            sys.exit(1)
        try:
            jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as err:
            print(f"FAIL: {case['output']!r} does not match {json.dumps(schema)}: {err.message}", file=sys.stderr)
            sys.exit(1)
        n += 1
    if n == 0:
        print("FAIL: no cases given", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {n} outputs parse and validate")


if __name__ == "__main__":
    main()
