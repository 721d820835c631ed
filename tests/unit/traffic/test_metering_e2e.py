"""Spend metering through the real proxy: `autocode-proxy` (as deployed, in regular mode on
127.0.0.1) in front of the lab's LLM API fixture (the real internet_server.py), calls of
both APIs, JSON and streamed, reconciled to the micro-dollar against the usage the client
itself received; the cap, a restart, the injected stream usage, rate limits."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from autocode.budget import BudgetLedger
from autocode.traffic.spool import list_segments
from testing.mitmdump import mitmdump, upstream_server
from tests.unit.test_internet_fixture import HOST, Running, _free_port

pytestmark = pytest.mark.timeout(120)
PRICE = {"input": "3", "output": "15", "cache_read": "0.3", "cache_write": "3.75"}
UNKNOWN = {"input": "15", "output": "75", "cache_read": "1.5", "cache_write": "18.75"}
PROMPT = "Create the file a.txt containing exactly: metered"


@pytest.fixture
def fixture_port():
    port = _free_port()
    server = Running(["--bind", HOST, "--http-port", str(port)])
    server.wait_ready()
    yield port
    server.stop()


def write_config(tmp_path: Path, port: int, budget: str = "25", **metering) -> Path:
    path = tmp_path / "traffic.yaml"
    path.write_text(yaml.safe_dump({
        "spool_dir": str(tmp_path / "spool"), "workers": {"127.0.0.1": "w1"},
        "writer_retry_seconds": 0.1, "min_free_bytes": 0,
        "metering": {
            "ledger": str(tmp_path / "metered.sqlite3"), "prices_taken_on": "2026-11-30",
            "apis": [{"host": "127.0.0.1", "path": "/v1/messages", "provider": "anthropic"},
                     {"host": "127.0.0.1", "path": "/v1/chat/completions",
                      "provider": "openai"}],
            "prices": {"lab-model": PRICE}, "unknown_model_price": UNKNOWN,
            "workers": {"w1": {"daily_budget_usd": budget, "agent_type": "claude-code"}},
            **metering}}))
    return path


def call(proxy: int, port: int, path: str, body: dict, headers: dict | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, proxy, timeout=30)
    try:
        conn.request("POST", f"http://{HOST}:{port}{path}", body=json.dumps(body),
                     headers={"Content-Type": "application/json", "x-api-key": "k",
                              "Authorization": "Bearer k", "anthropic-version": "2023-06-01",
                              **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def usage_received(path: str, stream: bool, raw: bytes) -> tuple[int, int]:
    """(input, output) tokens as the client saw them."""
    if not stream:
        usage = json.loads(raw)["usage"]
        return (usage.get("input_tokens", usage.get("prompt_tokens")),
                usage.get("output_tokens", usage.get("completion_tokens")))
    events = [json.loads(line[6:]) for line in raw.decode().splitlines()
              if line.startswith("data: {")]
    if path == "/v1/messages":
        start = next(e for e in events if e["type"] == "message_start")
        last = [e for e in events if e["type"] == "message_delta"][-1]
        return start["message"]["usage"]["input_tokens"], last["usage"]["output_tokens"]
    final = [e for e in events if e.get("usage")][-1]["usage"]
    return final["prompt_tokens"], final["completion_tokens"]


def spooled(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for _, p in list_segments(tmp_path / "spool")
            for line in p.read_text().splitlines()]


def wait_for(predicate, limit: float = 10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def ledger_rows(tmp_path: Path) -> list[dict]:
    return BudgetLedger(tmp_path / "metered.sqlite3").charges()


CALLS = [("/v1/messages", False, {"model": "lab-model", "max_tokens": 100,
                                  "messages": [{"role": "user", "content": PROMPT}]}),
         ("/v1/messages", True, {"model": "lab-model", "max_tokens": 100, "stream": True,
                                 "messages": [{"role": "user", "content": PROMPT}]}),
         ("/v1/chat/completions", False, {"model": "lab-model",
                                          "messages": [{"role": "user", "content": PROMPT}]}),
         # No stream_options: the proxy asks for the usage chunk itself.
         ("/v1/chat/completions", True, {"model": "lab-model", "stream": True,
                                         "messages": [{"role": "user", "content": PROMPT}]})]


def test_every_call_is_charged_exactly_what_its_usage_costs(tmp_path, fixture_port):
    expected = Decimal(0)
    with mitmdump(tmp_path, write_config(tmp_path, fixture_port)) as (proxy, log):
        for n in range(3):
            for path, stream, body in CALLS:
                body = {**body, "messages": [{"role": "user", "content": f"{PROMPT} {n}"}]}
                status, _, raw = call(proxy, fixture_port, path, body)
                assert status == 200, raw
                tokens_in, tokens_out = usage_received(path, stream, raw)
                expected += (tokens_in * Decimal(3) + tokens_out * Decimal(15)) / 1_000_000
        rows = wait_for(lambda: len(ledger_rows(tmp_path)) == 12 and ledger_rows(tmp_path))
        records = wait_for(lambda: len(spooled(tmp_path)) >= 12 and spooled(tmp_path))
    assert rows, log.read_text()[-3000:]
    # Each charge rounds up to the micro-dollar; the fixture's usage makes them whole.
    assert sum(Decimal(r["amount_usd"]) for r in rows) == expected
    assert {r["source"] for r in rows} == {"metered"} and {r["worker_id"] for r in rows} == {"w1"}
    assert not any(r["detail"]["estimated"] or r["detail"]["unknown_model"] for r in rows)
    llm = [r["llm"] for r in records if "llm" in r]
    assert len(llm) == 12 and sum(Decimal(x["cost_usd"]) for x in llm) == expected


def test_a_call_whose_worst_case_does_not_fit_is_refused_in_the_providers_shape(
        tmp_path, fixture_port):
    # 0.0001 USD: less than 100 output tokens at 15 USD per million, the first call's bound.
    config = write_config(tmp_path, fixture_port, budget="0.0001")
    with upstream_server() as plain, mitmdump(tmp_path, config) as (proxy, _):
        path, _, body = CALLS[0]
        status, headers, raw = call(proxy, fixture_port, path, body)
        assert status == 400 and headers["x-should-retry"] == "false"
        error = json.loads(raw)
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        message = error["error"]["message"]
        assert "daily budget of 0.0001 USD for worker w1 is spent for a call this large" in \
            message and "could cost up to 0.001" in message and "until" in message
        status, _, raw = call(proxy, fixture_port, "/v1/chat/completions", CALLS[2][2])
        assert status == 429 and json.loads(raw)["error"]["code"] == "insufficient_quota"
        conn = http.client.HTTPConnection(HOST, proxy, timeout=10)
        conn.request("GET", f"http://{HOST}:{plain}/bytes/10")
        assert conn.getresponse().status == 200  # not an LLM call: unaffected
        wait_for(lambda: len(spooled(tmp_path)) >= 3)
    blocked = [r for r in spooled(tmp_path) if r["verdict"] == "blocked"]
    assert len(blocked) == 2 and all("budget" in r["reason"] for r in blocked)
    assert ledger_rows(tmp_path) == []  # refused before going upstream: nothing owed


def test_a_day_already_spent_is_refused_after_a_restart(tmp_path, fixture_port):
    config = write_config(tmp_path, fixture_port, budget="0.01")
    ledger = BudgetLedger(tmp_path / "metered.sqlite3")
    ledger.charge(idempotency_key="metered:before", worker_id="w1", agent="claude-code",
                  task_id="-", amount_usd="0.01", source="metered")
    ledger.close()
    with mitmdump(tmp_path, config) as (proxy, _):
        path, _, body = CALLS[0]
        status, _, raw = call(proxy, fixture_port, path, body)
    assert status == 400
    assert "daily budget of 0.01 USD for worker w1 is spent (0.01 USD metered today)" in \
        json.loads(raw)["error"]["message"]


def test_calls_started_at_once_never_add_up_past_the_cap(tmp_path, fixture_port):
    """50 calls at once, each held 2 s upstream, against a day that fits the worst case of
    5: the others are refused at once, and what is metered stays within the budget."""
    body = {"model": "lab-model", "max_tokens": 100,
            "messages": [{"role": "user", "content": "Wait 2 seconds first. " + PROMPT}]}
    probe = worst_case_of(body)
    budget = probe * 5 + Decimal("0.000001")
    config = write_config(tmp_path, fixture_port, budget=str(budget))
    with mitmdump(tmp_path, config) as (proxy, log):
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda _: call(proxy, fixture_port, "/v1/messages", body),
                                    range(50)))
        answered = [r for r in results if r[0] == 200]
        rows = wait_for(lambda: len(ledger_rows(tmp_path)) >= len(answered)
                        and ledger_rows(tmp_path))
    refused = [r for r in results if r[0] == 400]
    assert len(answered) + len(refused) == 50, [r[0] for r in results]
    assert 1 <= len(answered) <= 5, log.read_text()[-2000:]
    assert len(rows) == len(answered)  # the refused ones cost nothing
    spent = sum(Decimal(r["amount_usd"]) for r in rows)
    assert spent <= budget
    print(f"\n50 concurrent calls, budget {budget} USD (5 worst cases): {len(answered)} "
          f"answered, {len(refused)} refused, {spent} USD metered")


def worst_case_of(body: dict) -> Decimal:
    """The proxy's own reservation for this body, from its code: input bytes / 3 at the
    input price, max_tokens at the output price."""
    from autocode.traffic.metering import BYTES_PER_INPUT_TOKEN_BOUND
    size = len(json.dumps(body).encode())
    tokens_in = -(-size // BYTES_PER_INPUT_TOKEN_BOUND)
    return (tokens_in * Decimal(3) + body["max_tokens"] * Decimal(15)) / 1_000_000


def test_a_rate_limit_answers_429_with_retry_after(tmp_path, fixture_port):
    config = write_config(tmp_path, fixture_port, rate_limit={"requests_per_second": 0.5,
                                                              "burst": 2})
    with mitmdump(tmp_path, config) as (proxy, _):
        statuses = [call(proxy, fixture_port, *CALLS[0][::2]) for _ in range(3)]
    assert [s for s, _, _ in statuses] == [200, 200, 429]
    assert statuses[2][1]["Retry-After"] == "2"
    assert json.loads(statuses[2][2])["error"]["type"] == "rate_limit_error"


T1, T2 = "t-261204-00000000a1", "t-261204-00000000b2"  # autocode-control's id shape


def test_a_tasks_calls_carry_its_id_and_its_own_budget_holds(tmp_path, fixture_port):
    """autocode-control's running-tasks.json names w1's task: every record and ledger row
    of w1 carries it, and the task's budget is held like the day's; a later task on the
    same worker runs on its own budget."""
    from autocode.control.running import is_over_budget, write_running
    running = tmp_path / "control" / "running-tasks.json"
    running.parent.mkdir()
    path, _, body = CALLS[0]
    worst = worst_case_of(body)
    # Room for one worst case and a little: the first call fits; once it has cost what it
    # cost (about a tenth of its worst case), the same call no longer does.
    write_running(running, {"w1": {"task_id": T1,
                                   "budget_usd": str((worst * Decimal("1.05")).quantize(
                                       Decimal("0.000001")))}})
    config = write_config(tmp_path, fixture_port)
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()),
                                      "running_tasks": str(running)}))
    with mitmdump(tmp_path, config) as (proxy, log):
        assert call(proxy, fixture_port, path, body)[0] == 200
        wait_for(lambda: len(ledger_rows(tmp_path)) == 1)
        status, _, raw = call(proxy, fixture_port, path, body)
        assert status == 400, raw
        message = json.loads(raw)["error"]["message"]
        assert "the budget of" in message and f"for task {T1} is spent for a call this large" \
            in message and "larger --budget" in message
        assert is_over_budget(running.parent / "over-budget", T1)
        assert not is_over_budget(running.parent / "over-budget", T2)
        write_running(running, {"w1": {"task_id": T2, "budget_usd": "1"}})
        time.sleep(0.6)  # the proxy looks again at most twice a second
        assert call(proxy, fixture_port, path, body)[0] == 200
        rows = wait_for(lambda: len(ledger_rows(tmp_path)) == 2 and ledger_rows(tmp_path))
        records = wait_for(lambda: len(spooled(tmp_path)) >= 3 and spooled(tmp_path))
    assert rows, log.read_text()[-2000:]
    assert [r["task_id"] for r in rows] == [T1, T2]
    assert [r.get("task_id") for r in records] == [T1, T1, T2]
    assert [r["verdict"] for r in records] == ["allowed", "blocked", "allowed"]
    # The per-task summary the task's record shows: hosts, requests, bytes, refusals.
    from autocode.control.running import read_task_traffic
    first = read_task_traffic(running.parent / "traffic", T1)[HOST]
    assert (first["requests"], first["refused"]) == (2, 1)
    assert first["bytes_sent"] == 2 * len(json.dumps(body)) and first["bytes_received"] > 0
    assert list(first["reasons"].values()) == [1] and f"for task {T1}" in list(first["reasons"])[0]
    assert read_task_traffic(running.parent / "traffic", T2)[HOST]["requests"] == 1
