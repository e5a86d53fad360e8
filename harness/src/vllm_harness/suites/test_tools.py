"""Tool calling through the chat API, as a user of a Hermes-style model serves
it (:data:`vllm_harness.fixtures.TOOL_ARGS`): every call parses and its
arguments validate against the tool's schema, checked by ``jsonschema``, not by
the grammar engine that shaped them.

The tools are ``strict`` (OpenAI's flag for arguments that follow the schema),
so vLLM constrains the arguments, not only the call's envelope.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from vllm_harness.fixtures import SERVED_NAME

pytestmark = pytest.mark.xdist_group("server")

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 20},
                          "unit": {"enum": ["celsius", "fahrenheit"]}}}
TIME = {"type": "object", "additionalProperties": False, "required": ["timezone"],
        "properties": {"timezone": {"type": "string", "maxLength": 30}}}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
TOOLS = [{"type": "function", "function": {
    "name": name, "strict": True, "parameters": schema,
    "description": {"get_weather": "The current weather in a city",
                    "get_time": "The local time in a time zone"}[name]}}
    for name, schema in SCHEMAS.items()]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
# the call in the form Hermes models write it; the auto test holds the model to it
HERMES_CALL = (r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{2,12}", '
               r'"unit": "(celsius|fahrenheit)"\}\}\n</tool_call>')


def _ask(client: Any, tool_choice: Any, messages: list[dict[str, Any]] = ASK,
         **extra: Any) -> Any:
    return client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=TOOLS,
                                          tool_choice=tool_choice, temperature=0,
                                          max_tokens=60, **extra).choices[0]


def _valid_calls(message: Any, names: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """The message's tool calls as (name, arguments), each checked against its tool."""
    calls = message.tool_calls or []
    assert calls, f"no tool call; content {message.content!r}"
    out = []
    for call in calls:
        name = call.function.name
        assert name in names, f"a call of {name!r}, expected one of {sorted(names)}"
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{name} arguments are not JSON ({exc}): "
                                 f"{call.function.arguments!r}") from exc
        try:
            jsonschema.validate(arguments, SCHEMAS[name])
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{name} arguments against the schema: {exc.message}: "
                                 f"{arguments}") from exc
        out.append((name, arguments))
    return out


@pytest.mark.feature("tools.named")
def test_named_tool_choice(client: Any):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    whole = _valid_calls(_ask(client, choice).message, {"get_weather"})
    assert len(whole) == 1, f"a named tool choice gave {len(whole)} calls: {whole}"
    stream = client.chat.completions.create(model=SERVED_NAME, messages=ASK, tools=TOOLS,
                                            tool_choice=choice, temperature=0, max_tokens=60,
                                            stream=True)
    names, arguments = [], ""
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.function.name:
                names.append(delta.function.name)
            arguments += delta.function.arguments or ""
    assert names == ["get_weather"], f"streamed call names {names}"
    assert json.loads(arguments) == whole[0][1], f"streamed {arguments!r} against {whole}"


@pytest.mark.feature("tools.required")
def test_required_tool_choice(client: Any):
    choice = _ask(client, "required")
    _valid_calls(choice.message, set(SCHEMAS))
    assert choice.finish_reason == "tool_calls", choice.finish_reason


@pytest.mark.feature("tools.auto")
def test_auto_tool_choice_parses_the_call(client: Any):
    choice = _ask(client, "auto", extra_body={"structured_outputs": {"regex": HERMES_CALL}})
    [(name, arguments)] = _valid_calls(choice.message, {"get_weather"})
    assert choice.finish_reason == "tool_calls", choice.finish_reason
    assert not (choice.message.content or "").strip(), (
        f"the call's text was left in the content: {choice.message.content!r}")
    # the call and its result go back to the model, which answers in words
    call = choice.message.tool_calls[0]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id,
         "content": json.dumps({"city": arguments["city"], "temperature": 21,
                                "unit": arguments["unit"], "sky": "sunny"})}]
    answer = _ask(client, "none", messages=history)
    assert (answer.message.content or "").strip() and not answer.message.tool_calls, answer
