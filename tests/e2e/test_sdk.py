"""The official openai and anthropic SDKs against the data plane, over HTTP/1.1 and TLS + HTTP/2.

Every test checks the answer content, that the mock saw a master key (never the client's key),
and that the usage event equals the usage the mock reported. The `clients` fixture checks the
raw wire afterwards: x-request-id on every response, no secret anywhere, the expected HTTP version.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness import (
    ALL_MODELS,
    ANTHROPIC_MODEL,
    CHAT_MODEL,
    EMBEDDING_MODEL,
    RENAMED_MODEL,
    RENAMED_UPSTREAM,
    ClientKey,
    Clients,
    Dataplane,
    MockProvider,
    World,
    assert_upstream_got_master,
    assert_usage_recorded,
    expected_answer,
    mock_headers,
    new_request_id,
    sse_json,
)

CHUNKS = 5
MESSAGES = [{"role": "user", "content": "Say hello."}]


def forwarded(
    dataplane: Dataplane,
    mock: MockProvider,
    world: World,
    request_id: str,
    *,
    route: str,
    model: str,
    stream: bool,
    key: ClientKey | None = None,
    upstream_model: str | None = None,
) -> dict[str, Any]:
    """Checks the single upstream request and its usage event; returns the mock's record."""
    key = key or world.full_key
    provider = "mock-anthropic" if route == "/v1/messages" else "mock-openai"
    record = mock.only_request()
    assert record["path"] == route
    assert record["model"] == (upstream_model or model)
    assert record["stream"] is stream
    assert_upstream_got_master(record, world.masters_for(provider), key.secret)
    event = dataplane.usage_event(request_id)
    assert_usage_recorded(event, record, key=key, model=model, provider=provider, route=route, stream=stream)
    return record


def controls(request_id: str, chunks: int = CHUNKS, **extra: Any) -> dict[str, str]:
    return {"x-request-id": request_id, **mock_headers(chunks=chunks, **extra)}


def chat_is_forwarded(
    clients: Clients,
    dataplane: Dataplane,
    mock: MockProvider,
    world: World,
    key: ClientKey,
    asked: str,
    *,
    model: str,
    upstream_model: str | None = None,
) -> None:
    """A non-streaming chat completion with `key` asking for model `asked` gets the mock's answer, and its one
    upstream request and usage event are right (`forwarded`) for the canonical `model`."""
    rid = new_request_id()
    completion = clients.openai(key).chat.completions.create(
        model=asked, messages=MESSAGES, extra_headers=controls(rid)
    )
    assert completion.choices[0].message.content == expected_answer(CHUNKS)
    forwarded(
        dataplane,
        mock,
        world,
        rid,
        route="/v1/chat/completions",
        model=model,
        stream=False,
        key=key,
        upstream_model=upstream_model,
    )


# ---------------------------------------------------------------------------------------------
# Chat completions
# ---------------------------------------------------------------------------------------------


def test_chat(clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    rid = new_request_id()
    completion = clients.openai(world.full_key).chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, extra_headers=controls(rid)
    )
    assert completion.choices[0].message.content == expected_answer(CHUNKS)
    assert clients.wire.last.headers["x-request-id"] == rid
    record = forwarded(module_dataplane, mock, world, rid, route="/v1/chat/completions", model=CHAT_MODEL, stream=False)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        record["usage"]["input_tokens"],
        CHUNKS,
    )


def test_chat_stream_without_include_usage_hides_the_usage_chunk(
    clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    """The proxy asks upstream for usage and strips that extra chunk: the client sees none."""
    rid = new_request_id()
    stream = clients.openai(world.full_key).chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, stream=True, extra_headers=controls(rid)
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_answer(CHUNKS)
    assert all(c.usage is None for c in chunks), "a usage chunk reached a client that did not ask for one"
    assert all(c.choices for c in chunks), "the choices-less usage chunk reached the client"
    raw = bytes(clients.wire.last.body)
    assert b'"usage"' not in raw
    assert raw.rstrip().endswith(b"data: [DONE]")
    record = forwarded(module_dataplane, mock, world, rid, route="/v1/chat/completions", model=CHAT_MODEL, stream=True)
    assert record["include_usage"] is True, "the proxy did not ask upstream for usage"
    assert record["usage"]["output_tokens"] == CHUNKS


def test_chat_stream_with_include_usage(
    clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    rid = new_request_id()
    stream = clients.openai(world.full_key).chat.completions.create(
        model=CHAT_MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=controls(rid),
    )
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_answer(CHUNKS)
    record = forwarded(module_dataplane, mock, world, rid, route="/v1/chat/completions", model=CHAT_MODEL, stream=True)
    usage = usage_chunks[0].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        record["usage"]["input_tokens"],
        record["usage"]["output_tokens"],
    )


def test_estimated_usage_when_the_provider_reports_none(
    http_clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    rid = new_request_id()
    stream = http_clients.openai(world.full_key).chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, stream=True, extra_headers=controls(rid, no_usage=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected_answer(CHUNKS)
    assert mock.only_request()["usage"] is None
    event = module_dataplane.usage_event(rid)
    assert event["estimated"] is True
    assert event["input_tokens"] > 0 and event["output_tokens"] > 0


# ---------------------------------------------------------------------------------------------
# Legacy completions, embeddings
# ---------------------------------------------------------------------------------------------


def test_completions(http_clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    rid = new_request_id()
    completion = http_clients.openai(world.full_key).completions.create(
        model=CHAT_MODEL, prompt="Say hello.", extra_headers=controls(rid)
    )
    assert completion.choices[0].text == expected_answer(CHUNKS)
    forwarded(module_dataplane, mock, world, rid, route="/v1/completions", model=CHAT_MODEL, stream=False)


def test_completions_stream(
    http_clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    """Asks for usage itself: the include_usage splice is only specified for chat completions."""
    rid = new_request_id()
    stream = http_clients.openai(world.full_key).completions.create(
        model=CHAT_MODEL,
        prompt="Say hello.",
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=controls(rid),
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected_answer(CHUNKS)
    record = forwarded(module_dataplane, mock, world, rid, route="/v1/completions", model=CHAT_MODEL, stream=True)
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        record["usage"]["input_tokens"],
        record["usage"]["output_tokens"],
    )


def test_embeddings(http_clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    rid = new_request_id()
    result = http_clients.openai(world.full_key).embeddings.create(
        model=EMBEDDING_MODEL, input=["hello", "world"], extra_headers={"x-request-id": rid}
    )
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    record = forwarded(module_dataplane, mock, world, rid, route="/v1/embeddings", model=EMBEDDING_MODEL, stream=False)
    assert record["usage"]["output_tokens"] == 0


# ---------------------------------------------------------------------------------------------
# Responses API
# ---------------------------------------------------------------------------------------------


def test_responses(clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    rid = new_request_id()
    response = clients.openai(world.full_key).responses.create(
        model=CHAT_MODEL, input="Say hello.", extra_headers=controls(rid)
    )
    assert response.output_text == expected_answer(CHUNKS)
    record = forwarded(module_dataplane, mock, world, rid, route="/v1/responses", model=CHAT_MODEL, stream=False)
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        record["usage"]["input_tokens"],
        record["usage"]["output_tokens"],
    )


def test_responses_stream(clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    rid = new_request_id()
    events = list(
        clients.openai(world.full_key).responses.create(
            model=CHAT_MODEL, input="Say hello.", stream=True, extra_headers=controls(rid)
        )
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == CHUNKS and "".join(deltas) == expected_answer(CHUNKS)
    assert events[-1].type == "response.completed"
    record = forwarded(module_dataplane, mock, world, rid, route="/v1/responses", model=CHAT_MODEL, stream=True)
    usage = events[-1].response.usage
    assert (usage.input_tokens, usage.output_tokens) == (
        record["usage"]["input_tokens"],
        record["usage"]["output_tokens"],
    )


# ---------------------------------------------------------------------------------------------
# Anthropic Messages
# ---------------------------------------------------------------------------------------------


def test_messages(clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    rid = new_request_id()
    message = clients.anthropic(world.full_key).messages.create(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=MESSAGES, extra_headers=controls(rid)
    )
    assert message.content[0].text == expected_answer(CHUNKS)
    record = forwarded(module_dataplane, mock, world, rid, route="/v1/messages", model=ANTHROPIC_MODEL, stream=False)
    assert record["x_api_key"] in world.anthropic_masters
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        record["usage"]["input_tokens"],
        record["usage"]["output_tokens"],
    )


def test_messages_stream(clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    rid = new_request_id()
    with clients.anthropic(world.full_key).messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=MESSAGES, extra_headers=controls(rid)
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == expected_answer(CHUNKS)
    record = forwarded(module_dataplane, mock, world, rid, route="/v1/messages", model=ANTHROPIC_MODEL, stream=True)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        record["usage"]["input_tokens"],
        record["usage"]["output_tokens"],
    )
    kinds = [e.get("type") for e in sse_json(bytes(clients.wire.last.body))]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"


# ---------------------------------------------------------------------------------------------
# Models, aliases, master key spreading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_name", "visible"),
    [("full_key", set(ALL_MODELS)), ("mini_key", {CHAT_MODEL})],
    ids=["all-models", "allowlisted"],
)
def test_models_list_shows_only_allowed_models(
    clients: Clients, mock: MockProvider, world: World, key_name: str, visible: set[str]
) -> None:
    models = list(clients.openai(getattr(world, key_name)).models.list())
    ids = {m.id for m in models}
    aliases = {"mini"}  # an alias of an allowed model may be listed too
    assert visible <= ids <= visible | aliases, f"listed {sorted(ids)}, allowed {sorted(visible)}"
    assert mock.requests() == [], "GET /v1/models must be answered by the data plane itself"


@pytest.mark.parametrize(
    ("asked", "canonical", "upstream"),
    [("mini", CHAT_MODEL, CHAT_MODEL), (RENAMED_MODEL, RENAMED_MODEL, RENAMED_UPSTREAM)],
    ids=["alias", "upstream_name"],
)
def test_model_names_are_resolved_before_forwarding(
    http_clients: Clients,
    module_dataplane: Dataplane,
    mock: MockProvider,
    world: World,
    asked: str,
    canonical: str,
    upstream: str,
) -> None:
    chat_is_forwarded(
        http_clients, module_dataplane, mock, world, world.full_key, asked, model=canonical, upstream_model=upstream
    )


def test_an_allowlisted_key_works_for_its_model(
    http_clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    chat_is_forwarded(http_clients, module_dataplane, mock, world, world.mini_key, CHAT_MODEL, model=CHAT_MODEL)


def test_master_keys_are_spread_across_requests(http_clients: Clients, mock: MockProvider, world: World) -> None:
    client = http_clients.openai(world.full_key)
    for _ in range(16):
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, extra_headers=mock_headers(chunks=1))
    used = {r["authorization"].removeprefix("Bearer ") for r in mock.requests()}
    assert used == set(world.openai_masters)
