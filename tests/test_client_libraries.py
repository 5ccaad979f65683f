"""The client libraries people point at a local server, each driving a real `glm4-local serve`: LangChain
(with a LangGraph agent), instructor and LiteLLM (the official openai client and raw HTTP are in the
other server tests). Plain, streamed, tools, structured output, and the Responses API where the library
has it. Nothing here leaves 127.0.0.1 (LiteLLM is told to use its bundled price list)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest
from helpers.serving import Server
from pydantic import BaseModel, Field

pytestmark = pytest.mark.processes  # a real server

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list from the web
os.environ.setdefault("LANGCHAIN_TRACING_V2", "false")

LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look up the weather",
                                           "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather?"}]


class Status(BaseModel):
    ok: bool
    level: int = Field(ge=1, le=10)


def _server(model: Path, tmp: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(model, tmp.mktemp("serve"), "--ctx", "2048", "--parallel", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def answer_server(scripted_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(scripted_gguf("answer"), tmp_path_factory)


@pytest.fixture(scope="module")
def tool_server(scripted_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(scripted_gguf("tool"), tmp_path_factory)


@pytest.fixture(scope="module")
def random_server(make_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(make_gguf("f32"), tmp_path_factory)


def chat_openai(server: Server, **options: object) -> object:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=server.base_url, api_key="unused", model="glm-4", max_retries=0, **options)


def test_langchain_plain_streamed_tools_and_responses(answer_server: Server, tool_server: Server) -> None:
    llm = chat_openai(answer_server)
    assert llm.invoke("What is the weather?").content == "Sunny day"
    assert "".join(chunk.content for chunk in llm.stream("What is the weather?")) == "Sunny day"
    called = chat_openai(tool_server).bind_tools([LOOKUP]).invoke("What is the weather?")
    assert [(c["name"], c["args"]) for c in called.tool_calls] == [("lookup", {})]
    responses = chat_openai(answer_server, use_responses_api=True).invoke("What is the weather?")
    assert responses.text == "Sunny day"


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_langchain_structured_output_is_valid(random_server: Server, method: str) -> None:
    llm = chat_openai(random_server, temperature=1.0, seed=11, max_tokens=200)
    for seed in range(3):
        answer = llm.bind(seed=seed).with_structured_output(Status, method=method).invoke("Status?")
        assert isinstance(answer, Status)  # None (a silent failure) before constrained JSON was exact


def test_langgraph_agent_calls_the_tool_and_answers(tool_server: Server) -> None:
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    seen: list[str] = []

    @tool
    def lookup() -> str:
        """Look up the weather."""
        seen.append("called")
        return json.dumps({"sky": "clear"})

    agent = create_react_agent(chat_openai(tool_server), [lookup])
    result = agent.invoke({"messages": [("user", "What is the weather?")]})
    assert seen == ["called"] and result["messages"][-1].content == "Sunny day"


@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA"])  # JSON mode only asks in words: a trained model's job
def test_instructor_gets_a_valid_model(random_server: Server, mode: str) -> None:
    import instructor

    client = instructor.from_openai(random_server.client(), mode=getattr(instructor.Mode, mode))
    for seed in range(3):
        status = client.chat.completions.create(model="m", response_model=Status, max_retries=0, temperature=1.0,
                                                seed=seed, max_tokens=200,
                                                messages=[{"role": "user", "content": "Status?"}])
        assert isinstance(status, Status) and 1 <= status.level <= 10


def test_litellm_plain_streamed_tools_json_and_responses(answer_server: Server, tool_server: Server,
                                                          random_server: Server) -> None:
    import litellm

    def ask(server: Server, **options: object) -> object:
        return litellm.completion(model="openai/glm-4", api_base=server.base_url, api_key="unused", messages=ASK,
                                  num_retries=0, **options)

    assert ask(answer_server).choices[0].message.content == "Sunny day"
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in ask(answer_server, stream=True))
    assert streamed == "Sunny day"
    call = ask(tool_server, tools=[LOOKUP]).choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("lookup", {})
    schema = Status.model_json_schema()
    shaped = ask(random_server, temperature=1.0, max_tokens=200,
                 response_format={"type": "json_schema", "json_schema": {"name": "status", "schema": schema}})
    jsonschema.validate(json.loads(shaped.choices[0].message.content), schema)
    response = litellm.responses(model="openai/glm-4", api_base=answer_server.base_url, api_key="unused",
                                 input="What is the weather?")
    assert response.output[0].content[0].text == "Sunny day"
