"""Structured output: every answer meets its constraint, offline (``SamplingParams``)
and served (``response_format`` and the ``structured_outputs`` field), streamed
equal to whole; a malformed constraint gets a 400 that names it.

Each constraint is checked by a tool of its own (``jsonschema``, Python's ``re``),
never by the grammar engine that produced the output.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from vllm_harness.fixtures import SERVED_NAME

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}
REGEX = r"[A-Z][a-z]{2,9}, [0-9]{4}"
CHOICES = ["Paris", "London", "Berlin", "Madrid"]
# xgrammar's EBNF (GBNF): a sum and its result
GRAMMAR = '''
root ::= number " + " number " = " number
number ::= [1-9] [0-9]?
'''
GRAMMAR_MATCH = re.compile(r"[1-9][0-9]? \+ [1-9][0-9]? = [1-9][0-9]?")

ASK_JSON = "Describe a person as JSON with their name, age and pets."
ASK_REGEX = "Name a city and a year."
ASK_CHOICE = "Which city is the capital of France?"
ASK_GRAMMAR = "Write one addition of two small numbers and its result."


def _chat_prompt(text: str) -> str:
    """The default model's chat template, for the offline engine."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def _offline(llm: Any, prompts: list[str], max_tokens: int = 64, **constraint: Any) -> list[Any]:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens,
                            structured_outputs=StructuredOutputsParams(**constraint))
    outs = llm.generate([_chat_prompt(p) for p in prompts], params, use_tqdm=False)
    return [o.outputs[0] for o in outs]


def _finished(out: Any, what: str) -> str:
    assert out.finish_reason == "stop", (
        f"the {what} did not end within max_tokens ({out.finish_reason}): {out.text!r}")
    return out.text


def _validate_json(text: str) -> None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not JSON ({exc}): {text!r}") from exc
    try:
        jsonschema.validate(value, SCHEMA)
    except jsonschema.ValidationError as exc:
        raise AssertionError(f"JSON against the schema: {exc.message}: {text!r}") from exc


def _chat(client: Any, question: str, stream: bool = False, **extra: Any) -> str:
    args = dict(model=SERVED_NAME, temperature=0, max_tokens=64,
                messages=[{"role": "user", "content": question}], **extra)
    if not stream:
        r = client.chat.completions.create(**args)
        assert r.choices[0].finish_reason == "stop", (
            f"did not end within max_tokens: {r.choices[0].message.content!r}")
        return r.choices[0].message.content
    chunks = client.chat.completions.create(stream=True, **args)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _refused(client: Any, what: str, **extra: Any) -> None:
    """A malformed constraint is a 400 that names the trouble; the server serves on."""
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, ASK_REGEX, **extra)
    assert caught.value.message.strip(), f"the 400 for {what} gives no reason"
    assert "Tokyo" in _chat(client, "What is the capital of Japan?")


@pytest.mark.feature("structured.json")
@pytest.mark.xdist_group("engine")
def test_json_schema_offline(llm: Any):
    prompts = [ASK_JSON, "Give me a JSON record of a child who owns two cats."]
    for out in _offline(llm, prompts, json=SCHEMA):
        _validate_json(_finished(out, "JSON"))


@pytest.mark.feature("structured.json")
@pytest.mark.xdist_group("server")
def test_json_schema_served(client: Any):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    whole = _chat(client, ASK_JSON, response_format=fmt)
    _validate_json(whole)
    assert _chat(client, ASK_JSON, stream=True, response_format=fmt) == whole
    # a JSON object, of any shape
    anything = _chat(client, ASK_JSON, response_format={"type": "json_object"})
    assert isinstance(json.loads(anything), dict), anything
    _refused(client, "a schema of an unknown type",
             response_format={"type": "json_schema",
                              "json_schema": {"name": "bad", "schema": {"type": "no-such"}}})


@pytest.mark.feature("structured.regex")
@pytest.mark.xdist_group("engine")
def test_regex_offline(llm: Any):
    for out in _offline(llm, [ASK_REGEX, "When and where were you born?"], regex=REGEX):
        text = _finished(out, "regex match")
        assert re.fullmatch(REGEX, text), f"{text!r} does not match {REGEX}"


@pytest.mark.feature("structured.regex")
@pytest.mark.xdist_group("server")
def test_regex_served(client: Any):
    whole = _chat(client, ASK_REGEX, extra_body={"structured_outputs": {"regex": REGEX}})
    assert re.fullmatch(REGEX, whole), f"{whole!r} does not match {REGEX}"
    assert _chat(client, ASK_REGEX, stream=True,
                 extra_body={"structured_outputs": {"regex": REGEX}}) == whole
    _refused(client, "an unbalanced regex",
             extra_body={"structured_outputs": {"regex": "([A-Z]"}})


@pytest.mark.feature("structured.choice")
@pytest.mark.xdist_group("engine")
def test_choice_offline(llm: Any):
    outs = _offline(llm, [ASK_CHOICE, "Which city is the capital of Spain?"], choice=CHOICES)
    texts = [_finished(o, "choice") for o in outs]
    assert all(t in CHOICES for t in texts), texts
    # the constraint narrows the model's choice, it does not make it: a model
    # that answers these at all answers them apart
    assert texts[0] != texts[1], texts


@pytest.mark.feature("structured.choice")
@pytest.mark.xdist_group("server")
def test_choice_served(client: Any):
    body = {"structured_outputs": {"choice": CHOICES}}
    whole = _chat(client, ASK_CHOICE, extra_body=body)
    assert whole in CHOICES, whole
    assert _chat(client, ASK_CHOICE, stream=True, extra_body=body) == whole


@pytest.mark.feature("structured.grammar")
@pytest.mark.xdist_group("engine")
def test_grammar_offline(llm: Any):
    for out in _offline(llm, [ASK_GRAMMAR, "What is 2 + 3?"], grammar=GRAMMAR):
        text = _finished(out, "grammar's sentence")
        assert GRAMMAR_MATCH.fullmatch(text), f"{text!r} is not in the grammar"


@pytest.mark.feature("structured.grammar")
@pytest.mark.xdist_group("server")
def test_grammar_served(client: Any):
    body = {"structured_outputs": {"grammar": GRAMMAR}}
    whole = _chat(client, ASK_GRAMMAR, extra_body=body)
    assert GRAMMAR_MATCH.fullmatch(whole), f"{whole!r} is not in the grammar"
    assert _chat(client, ASK_GRAMMAR, stream=True, extra_body=body) == whole
    _refused(client, "a grammar with no root rule",
             extra_body={"structured_outputs": {"grammar": 'start ::= "a"'}})
