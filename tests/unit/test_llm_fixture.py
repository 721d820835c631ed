"""The lab's LLM API fixture (lab/fixtures/llm_api.py) served by the real internet_server.py
on 127.0.0.1: OpenAI and Anthropic formats, JSON and SSE, usage, tool calls, error shapes."""

from __future__ import annotations

import http.client
import json
import ssl
import time

import pytest

from lab.fixture_ca import ensure_fixture_tls
from lab.fixtures import llm_api
from tests.unit.test_internet_fixture import HOST, TIMEOUT, Running, _free_port

WORKDIR = "/srv/work/repo"
DIRECTIVE = "Create the file notes/hello.txt containing exactly: Hello, lab!"
AUTH = {"Authorization": "Bearer sk-test", "Content-Type": "application/json"}
ANTHROPIC = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01",
             "Content-Type": "application/json"}
WRITE_TOOL_OPENAI = {"type": "function", "function": {
    "name": "write_file", "description": "Writes a file (absolute path).",
    "parameters": {"type": "object", "required": ["file_path", "content"],
                   "properties": {"file_path": {"type": "string"},
                                  "content": {"type": "string"}}}}}
READ_TOOL_OPENAI = {"type": "function", "function": {
    "name": "read_file", "parameters": {"type": "object",
                                        "properties": {"absolute_path": {"type": "string"}}}}}
WRITE_TOOL_ANTHROPIC = {"name": "Write", "description": "Write a file",
                        "input_schema": {"type": "object",
                                         "properties": {"file_path": {"type": "string"},
                                                        "content": {"type": "string"}}}}


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    tls = ensure_fixture_tls(tmp_path_factory.mktemp("tls"), ips=[HOST], names=["internet.lab"])
    dump = tmp_path_factory.mktemp("dump")
    ports = {"http": _free_port(), "https": _free_port()}
    running = Running(["--bind", HOST, "--http-port", str(ports["http"]),
                       "--https-port", str(ports["https"]), "--cert", str(tls.server_cert),
                       "--key", str(tls.server_key), "--llm-dump-dir", str(dump)])
    try:
        running.wait_ready()
        yield {"ports": ports, "running": running, "tls": tls, "dump": dump}
    finally:
        running.stop()


def _request(llm, method, path, body=None, headers=None, *, https=False):
    if https:
        ctx = ssl.create_default_context(cafile=str(llm["tls"].ca_cert))
        conn = http.client.HTTPSConnection(HOST, llm["ports"]["https"], timeout=TIMEOUT,
                                           context=ctx)
    else:
        conn = http.client.HTTPConnection(HOST, llm["ports"]["http"], timeout=TIMEOUT)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def _sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) for each server-sent event."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        events.append((name, "\n".join(data)))
    return events


def _wait_for_log(running, needle: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while True:
        for line in running.log:
            if needle in line:
                return line
        assert time.monotonic() < deadline, running.log
        time.sleep(0.02)


def _chat(messages, **extra):
    return {"model": "lab-model", "messages": messages, **extra}


def _anthropic(messages, **extra):
    return {"model": "claude-test", "max_tokens": 1024, "messages": messages, **extra}


# --------------------------------------------------------------------------------------------
# OpenAI chat completions


def test_openai_json_without_tools_answers_in_aiders_whole_format(llm):
    body = _chat([{"role": "system", "content": "Act as an expert software developer."},
                  {"role": "user", "content": DIRECTIVE + "\n\nTo suggest changes..."}])
    resp, raw = _request(llm, "POST", "/v1/chat/completions", body, AUTH)
    assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
    answer = json.loads(raw)
    assert answer["object"] == "chat.completion" and answer["model"] == "lab-model"
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "notes/hello.txt\n```\nHello, lab!\n```\n"
    usage = answer["usage"]
    # deterministic: ceil(bytes / 4) of the request body and of the answer text
    assert usage["prompt_tokens"] == (len(json.dumps(body).encode()) + 3) // 4
    assert usage["completion_tokens"] == (len(choice["message"]["content"]) + 3) // 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the same request gets the same answer
    _, again = _request(llm, "POST", "/v1/chat/completions", body, AUTH)
    assert json.loads(again)["choices"] == answer["choices"]
    assert json.loads(again)["id"] == answer["id"]
    line = _wait_for_log(llm["running"], "stream=false tools=0 -> whole")
    assert line == (f"llm POST /v1/chat/completions model=lab-model stream=false tools=0 "
                    f"-> whole from {HOST}")


def test_openai_aider_diff_format_gets_a_search_replace_block(llm):
    body = _chat([{"role": "system", "content": "Use SEARCH/REPLACE blocks:\n<<<<<<< SEARCH\n"},
                  {"role": "user", "content": DIRECTIVE}])
    _, raw = _request(llm, "POST", "/v1/chat/completions", body, AUTH)
    text = json.loads(raw)["choices"][0]["message"]["content"]
    assert text == ("notes/hello.txt\n```\n<<<<<<< SEARCH\n=======\nHello, lab!\n"
                    ">>>>>>> REPLACE\n```\n")


def test_openai_tool_call_then_final_answer(llm):
    messages = [{"role": "system", "content": f"I'm currently working in the directory: {WORKDIR}"},
                {"role": "user", "content": DIRECTIVE}]
    body = _chat(messages, tools=[READ_TOOL_OPENAI, WRITE_TOOL_OPENAI])
    _, raw = _request(llm, "POST", "/v1/chat/completions", body, AUTH)
    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "write_file"
    assert json.loads(call["function"]["arguments"]) == {
        "file_path": f"{WORKDIR}/notes/hello.txt", "content": "Hello, lab!\n"}

    messages += [choice["message"],
                 {"role": "tool", "tool_call_id": call["id"], "content": "Wrote the file."},
                 {"role": "system", "content": "a note the client adds after the turns"}]
    _, raw = _request(llm, "POST", "/v1/chat/completions", _chat(messages, tools=[
        WRITE_TOOL_OPENAI]), AUTH)
    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == f"Created {WORKDIR}/notes/hello.txt."


def test_openai_quoted_text_is_used_exactly(llm):
    body = _chat([{"role": "user", "content":
                   'Create the file `a b.txt` containing exactly: "one\\ntwo"'}],
                 tools=[WRITE_TOOL_OPENAI])
    _, raw = _request(llm, "POST", "/v1/chat/completions", body, AUTH)
    call = json.loads(raw)["choices"][0]["message"]["tool_calls"][0]
    # no working directory in the prompt: the name stays relative
    assert json.loads(call["function"]["arguments"]) == {"file_path": "a b.txt",
                                                         "content": "one\ntwo"}


def test_openai_stream_with_usage_chunk(llm):
    body = _chat([{"role": "system", "content": f"Working directory: {WORKDIR}"},
                  {"role": "user", "content": DIRECTIVE}],
                 tools=[WRITE_TOOL_OPENAI], stream=True,
                 stream_options={"include_usage": True})
    resp, raw = _request(llm, "POST", "/v1/chat/completions", body, AUTH)
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    assert resp.getheader("Transfer-Encoding") == "chunked"
    events = _sse(raw)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _name, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    # every chunk but the last carries "usage": null; the last has no choices, and the usage
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    calls = [d["tool_calls"][0] for c in chunks[:-1]
             if "tool_calls" in (d := c["choices"][0]["delta"])]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "write_file"
    assert len(calls) > 1  # the arguments come in pieces
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"file_path": f"{WORKDIR}/notes/hello.txt",
                                     "content": "Hello, lab!\n"}
    _wait_for_log(llm["running"], "model=lab-model stream=true tools=1 -> tool_use")


def test_openai_stream_without_include_usage_has_no_usage(llm):
    body = _chat([{"role": "user", "content": "hello"}], stream=True)
    _, raw = _request(llm, "POST", "/v1/chat/completions", body, AUTH)
    events = _sse(raw)
    chunks = [json.loads(data) for _name, data in events[:-1]]
    assert all("usage" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "Create the file NAME containing exactly: TEXT" in text  # no directive: a hint
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_models_over_https(llm):
    resp, raw = _request(llm, "GET", "/v1/models", headers=AUTH, https=True)
    assert resp.status == 200
    listing = json.loads(raw)
    assert listing["object"] == "list"
    assert listing["data"][0] == {"id": "lab-model", "object": "model", "created": 0,
                                  "owned_by": "lab-internet"}
    _, raw = _request(llm, "GET", "/v1/models/other", headers=AUTH)
    assert json.loads(raw)["id"] == "other"
    _wait_for_log(llm["running"], f"llm GET /v1/models tls from {HOST}")


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not valid JSON"),
    ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ({"model": "m", "messages": []}, 400, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}, 400,
     "tools"),
])
def test_openai_bad_requests_in_openai_error_shape(llm, body, status, fragment):
    resp, raw = _request(llm, "POST", "/v1/chat/completions", body, AUTH)
    assert resp.status == status
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


def test_openai_missing_key_and_unknown_path(llm):
    resp, raw = _request(llm, "POST", "/v1/chat/completions", _chat([]), {})
    assert resp.status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
    resp, raw = _request(llm, "POST", "/v1/embeddings", {"model": "m"}, AUTH)
    assert resp.status == 404 and "no such endpoint" in json.loads(raw)["error"]["message"]
    # paths outside /v1 are still the echo server's
    resp, raw = _request(llm, "GET", "/v2/models")
    assert json.loads(raw)["server"] == "internet"


# --------------------------------------------------------------------------------------------
# Anthropic messages


def _claude_like(messages):
    return _anthropic(messages, tools=[{"name": "Read", "input_schema": {
        "properties": {"file_path": {}}}}, WRITE_TOOL_ANTHROPIC],
        system=[{"type": "text", "text": f"Primary working directory: {WORKDIR}"}])


def test_anthropic_json_tool_use_then_final_text(llm):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>context</system-reminder>"},
        {"type": "text", "text": DIRECTIVE}]}]
    body = _claude_like(messages)
    resp, raw = _request(llm, "POST", "/v1/messages?beta=true", body, ANTHROPIC)
    assert resp.status == 200 and resp.getheader("request-id").startswith("req_")
    answer = json.loads(raw)
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["model"] == "claude-test" and answer["stop_reason"] == "tool_use"
    (block,) = answer["content"]
    assert block["type"] == "tool_use" and block["name"] == "Write"
    assert block["id"].startswith("toolu_")
    assert block["input"] == {"file_path": f"{WORKDIR}/notes/hello.txt",
                              "content": "Hello, lab!\n"}
    usage = answer["usage"]
    assert usage["input_tokens"] == (len(json.dumps(body).encode()) + 3) // 4
    assert usage["output_tokens"] == (len("Write") + len(json.dumps(block["input"])) + 3) // 4
    assert usage["cache_read_input_tokens"] == 0

    messages += [{"role": "assistant", "content": answer["content"]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"],
                                               "content": "File created successfully"}]}]
    _, raw = _request(llm, "POST", "/v1/messages", _claude_like(messages), ANTHROPIC)
    answer = json.loads(raw)
    assert answer["stop_reason"] == "end_turn"
    assert answer["content"] == [{"type": "text",
                                  "text": f"Created {WORKDIR}/notes/hello.txt."}]


def test_anthropic_tool_error_gets_a_could_not_answer(llm):
    messages = [{"role": "user", "content": DIRECTIVE},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                                   "name": "Write",
                                                   "input": {"file_path": "/x/y", "content": ""}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                              "is_error": True,
                                              "content": [{"type": "text",
                                                           "text": "Permission denied"}]}]}]
    _, raw = _request(llm, "POST", "/v1/messages", _claude_like(messages), ANTHROPIC)
    assert json.loads(raw)["content"][0]["text"] == "Could not create /x/y: Permission denied"


def test_anthropic_stream_events(llm):
    body = _claude_like([{"role": "user", "content": DIRECTIVE}])
    body["stream"] = True
    resp, raw = _request(llm, "POST", "/v1/messages", body, ANTHROPIC, https=True)
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    events = [(name, json.loads(data)) for name, data in _sse(raw)]
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"} and len(names[3:-3]) > 1
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == (len(json.dumps(body).encode()) + 3) // 4
    block = events[2][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "Write" and block["input"] == {}
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial)["file_path"] == f"{WORKDIR}/notes/hello.txt"
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    # cumulative usage
    assert delta["usage"]["input_tokens"] == start["usage"]["input_tokens"]
    assert delta["usage"]["output_tokens"] >= start["usage"]["output_tokens"]
    _wait_for_log(llm["running"], "model=claude-test stream=true tools=2 -> tool_use tls")


def test_anthropic_stream_text_without_tools(llm):
    body = _anthropic([{"role": "user", "content": DIRECTIVE}], stream=True)
    _, raw = _request(llm, "POST", "/v1/messages", body, ANTHROPIC)
    events = [json.loads(data) for _name, data in _sse(raw)]
    assert events[2]["content_block"] == {"type": "text", "text": ""}
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "notes/hello.txt\n```\nHello, lab!\n```\n"
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_anthropic_system_turns_need_the_beta(llm):
    messages = [{"role": "user", "content": DIRECTIVE},
                {"role": "system", "content": "Working directory: /elsewhere"}]
    resp, raw = _request(llm, "POST", "/v1/messages", _anthropic(messages), ANTHROPIC)
    assert resp.status == 400
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"
    headers = {**ANTHROPIC, "anthropic-beta":
               "claude-code-20250219,mid-conversation-tool-changes-2026-07-01"}
    resp, raw = _request(llm, "POST", "/v1/messages", _anthropic(messages), headers)
    assert resp.status == 200


def test_anthropic_count_tokens_and_models(llm):
    body = {"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}
    resp, raw = _request(llm, "POST", "/v1/messages/count_tokens", body, ANTHROPIC)
    assert resp.status == 200
    assert json.loads(raw) == {"input_tokens": (len(json.dumps(body).encode()) + 3) // 4}
    _, raw = _request(llm, "GET", "/v1/models", headers=ANTHROPIC)
    listing = json.loads(raw)
    assert listing["has_more"] is False and listing["data"][0]["type"] == "model"
    assert listing["first_id"] == listing["data"][0]["id"]


@pytest.mark.parametrize("body, status, kind, fragment", [
    (b"[]", 400, "invalid_request_error", "JSON object"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, 400,
     "invalid_request_error", "max_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": []}, 400, "invalid_request_error", "messages"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user"}]}, 400,
     "invalid_request_error", "content"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, 400,
     "invalid_request_error", "model"),
])
def test_anthropic_bad_requests_in_anthropic_error_shape(llm, body, status, kind, fragment):
    resp, raw = _request(llm, "POST", "/v1/messages", body, ANTHROPIC)
    assert resp.status == status
    answer = json.loads(raw)
    assert answer["type"] == "error" and answer["error"]["type"] == kind
    assert fragment in answer["error"]["message"]


def test_anthropic_missing_key_and_unknown_path(llm):
    resp, raw = _request(llm, "POST", "/v1/messages", _anthropic([]),
                         {"anthropic-version": "2023-06-01"})
    assert resp.status == 401
    assert json.loads(raw) == {"type": "error", "error": {
        "type": "authentication_error", "message": "x-api-key header is required"}}
    resp, raw = _request(llm, "POST", "/v1/messages/batches", {}, ANTHROPIC)
    assert resp.status == 404 and json.loads(raw)["error"]["type"] == "not_found_error"
    _wait_for_log(llm["running"], "llm POST /v1/messages -> 401 authentication_error from")


def test_dump_folder_holds_each_exchange_without_credentials(llm):
    _request(llm, "POST", "/v1/messages", _anthropic([{"role": "user", "content": "dump me"}]),
             ANTHROPIC)
    deadline = time.monotonic() + TIMEOUT
    while True:
        records = [json.loads(p.read_text()) for p in sorted(llm["dump"].glob("*.json"))]
        mine = [r for r in records if isinstance(r["request"], dict)
                and r["request"].get("messages") == [{"role": "user", "content": "dump me"}]]
        if mine:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (record,) = mine
    assert record["status"] == 200 and record["path"] == "/v1/messages"
    assert "x-api-key" not in {k.lower() for k in record["headers"]}
    assert json.loads(record["response"])["type"] == "message"


def test_a_wait_directive_delays_the_answer():
    started = time.monotonic()
    plan = llm_api.plan_reply("Wait 1 seconds first. Create the file a.txt containing "
                              "exactly: x", [], [], None)
    assert time.monotonic() - started >= 1.0 and plan.outcome == "whole"
