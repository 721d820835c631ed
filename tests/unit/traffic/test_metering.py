"""Spend metering's reading of provider answers and its prices, config and limits, on the
response shapes Anthropic's and OpenAI's APIs document (and the lab's fixture serves).
The whole path through a real proxy is in test_metering_e2e.py."""

from __future__ import annotations

import gzip
import json
import logging
from decimal import Decimal

import pytest

from autocode.budget import BudgetLedger
from autocode.traffic.config import TrafficConfigError, parse_config
from autocode.traffic.metering import (
    Meter,
    MeteringConfig,
    Price,
    Prices,
    RateLimiter,
    Usage,
    UsageTap,
    error_answer,
    estimate,
)

SONNET = Price(Decimal("3"), Decimal("15"), Decimal("0.30"), Decimal("3.75"))
GPT = Price(Decimal("2.50"), Decimal("10"), Decimal("1.25"))
UNKNOWN = Price(Decimal("15"), Decimal("75"), Decimal("1.50"), Decimal("18.75"))
PRICES = Prices({"claude-sonnet-4-5": SONNET, "gpt-4o": GPT}, UNKNOWN)


def sse(*events: dict, done: bool = False) -> bytes:
    out = b"".join(f"event: {e.get('type', 'x')}\ndata: {json.dumps(e)}\n\n".encode()
                   for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


ANTHROPIC_STREAM = [
    {"type": "message_start", "message": {"model": "claude-sonnet-4-5-20250929", "usage": {
        "input_tokens": 1200, "cache_read_input_tokens": 5000,
        "cache_creation_input_tokens": 300, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                          "text": "Hello there"}},
    {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 40}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
     "usage": {"output_tokens": 96}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_stop"},
]


def tap_all(tap: UsageTap, body: bytes, size: int = 7) -> bytes:
    passed = b"".join(tap(body[i:i + size]) for i in range(0, len(body), size))
    passed += tap(b"")
    return passed


def test_anthropic_stream_keeps_the_last_cumulative_delta_and_passes_bytes_unchanged():
    body = sse(*ANTHROPIC_STREAM)
    tap = UsageTap("anthropic", "text/event-stream", "", "claude-sonnet-4-5")
    assert tap_all(tap, body) == body
    usage = tap.finish()
    assert (usage.input_tokens, usage.output_tokens) == (1200, 96)  # 96, never 1 + 40 + 96
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (5000, 300)
    assert usage.model == "claude-sonnet-4-5-20250929" and not usage.estimated
    cost, unknown = PRICES.cost(usage)
    # 1200*3 + 96*15 + 5000*0.30 + 300*3.75 per million, exactly
    assert cost == Decimal("0.007665") and not unknown


def test_anthropic_stream_cut_midway_is_charged_for_what_was_seen_and_marked():
    body = sse(*ANTHROPIC_STREAM[:3])
    tap = UsageTap("anthropic", "text/event-stream", "", None)
    tap_all(tap, body)
    usage = estimate(tap.finish(), request_bytes=4000)
    assert usage.estimated and usage.input_tokens == 1200  # reported before the cut
    assert usage.output_tokens == 3  # "Hello there" + "text_delta": 11 + 10 chars / 4


def test_anthropic_json_answer():
    body = json.dumps({"model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "hi"}],
                       "usage": {"input_tokens": 10, "output_tokens": 20,
                                 "cache_read_input_tokens": 0}}).encode()
    tap = UsageTap("anthropic", "application/json", "", None)
    tap_all(tap, body)
    usage = tap.finish()
    assert (usage.input_tokens, usage.output_tokens, usage.estimated) == (10, 20, False)
    assert PRICES.cost(usage)[0] == Decimal("0.00033")


def test_openai_stream_reads_the_final_usage_chunk_and_cached_tokens():
    chunks = [{"model": "gpt-4o-2024-08-06", "choices": [{"delta": {"content": "Hel"}}],
               "usage": None},
              {"model": "gpt-4o-2024-08-06", "choices": [{"delta": {"content": "lo"}}],
               "usage": None},
              {"model": "gpt-4o-2024-08-06", "choices": [], "usage": {
                  "prompt_tokens": 1000, "completion_tokens": 50,
                  "prompt_tokens_details": {"cached_tokens": 400}}}]
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
    tap = UsageTap("openai", "text/event-stream; charset=utf-8", "", "gpt-4o")
    tap_all(tap, body, size=3)
    usage = tap.finish()
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (600, 400, 50)
    assert not usage.estimated
    assert PRICES.cost(usage)[0] == Decimal("0.0025")  # 600*2.5 + 400*1.25 + 50*10


def test_openai_stream_without_usage_is_estimated():
    body = (b"data: " + json.dumps({"model": "gpt-4o", "choices": [
        {"delta": {"content": "x" * 41}}]}).encode() + b"\n\ndata: [DONE]\n\n")
    tap = UsageTap("openai", "text/event-stream", "", "gpt-4o")
    tap_all(tap, body)
    usage = estimate(tap.finish(), request_bytes=801)
    assert usage.estimated and (usage.input_tokens, usage.output_tokens) == (201, 11)


def test_openai_responses_api_and_crlf_events():
    event = {"type": "response.completed", "response": {"model": "gpt-4o", "usage": {
        "input_tokens": 100, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 0}}}}
    body = f"event: response.completed\r\ndata: {json.dumps(event)}\r\n\r\n".encode()
    tap = UsageTap("openai", "text/event-stream", "", None)
    tap_all(tap, body)
    usage = tap.finish()
    assert (usage.input_tokens, usage.output_tokens, usage.estimated) == (100, 7, False)


def test_a_gzipped_answer_is_read_while_the_client_gets_it_compressed():
    body = gzip.compress(sse(*ANTHROPIC_STREAM))
    tap = UsageTap("anthropic", "text/event-stream", "gzip", None)
    assert tap_all(tap, body) == body
    assert tap.finish().output_tokens == 96


def test_an_unreadable_encoding_or_garbage_never_breaks_the_stream():
    tap = UsageTap("anthropic", "text/event-stream", "br", None)
    assert tap_all(tap, b"\x00\xffnot brotli") == b"\x00\xffnot brotli"
    usage = estimate(tap.finish(), request_bytes=40, unreadable_bytes=tap.bytes_seen)
    # Charged on the safe side: every compressed byte a token.
    assert usage.estimated and (usage.input_tokens, usage.output_tokens) == (10, 12)
    tap = UsageTap("openai", "text/event-stream", "", None)
    assert tap_all(tap, b"data: {not json\n\ndata: [1,2]\n\n") == \
        b"data: {not json\n\ndata: [1,2]\n\n"


def test_unknown_models_get_the_conservative_rate_and_are_flagged():
    usage = Usage(model="some-new-model", input_tokens=1_000_000, output_tokens=1_000_000,
                  reported=True, complete=True)
    cost, unknown = PRICES.cost(usage)
    assert cost == Decimal("90") and unknown
    assert PRICES.lookup("GPT-4o-mini")[0] == GPT  # prefix, case-insensitive


def test_refusals_come_in_each_providers_own_shape():
    status, body = error_answer("anthropic", "spent")
    assert status == 400 and body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "spent"}}
    status, body = error_answer("openai", "spent")
    assert status == 429 and body["error"]["type"] == "insufficient_quota"
    assert body["error"]["code"] == "insufficient_quota"


def metering_config(tmp_path, **changes) -> MeteringConfig:
    values = dict(ledger_path=tmp_path / "ledger.sqlite3", apis=(), prices={
        "claude-sonnet-4-5": SONNET}, prices_taken_on="2026-11-30", unknown_model_price=UNKNOWN,
        budgets={"w1": Decimal("0.01")}, agents={"w1": "claude-code"})
    values.update(changes)
    return MeteringConfig(**values)


def test_the_cap_counts_at_once_survives_a_restart_and_the_ledger_is_exact(tmp_path):
    meter = Meter(metering_config(tmp_path), logging.getLogger("test"))
    usage = Usage(model="claude-sonnet-4-5", input_tokens=1001, output_tokens=333,
                  reported=True, complete=True)
    assert meter.refusal("w1") is None
    for n in range(2):
        meter.charge(f"flow-{n}", "w1", "anthropic", usage)
    # 1001*3 + 333*15 = 7998 micro-dollars a call: the second one reaches the cap.
    assert meter.spent_today("w1") == Decimal("0.015996")
    assert "daily budget of 0.01 USD for worker w1 is spent" in meter.refusal("w1")
    assert meter.refusal("w2") is None  # no budget: never refused, still charged
    meter.charge("flow-x", "w2", "anthropic", usage)
    meter.close()
    ledger = BudgetLedger(tmp_path / "ledger.sqlite3")
    rows = ledger.charges()
    assert [r["amount_usd"] for r in rows] == ["0.007998"] * 3
    assert {r["source"] for r in rows} == {"metered"} and rows[0]["agent"] == "claude-code"
    assert rows[0]["detail"]["model"] == "claude-sonnet-4-5"
    assert rows[0]["detail"]["input_tokens"] == 1001
    again = Meter(metering_config(tmp_path), logging.getLogger("test"))
    assert again.refusal("w1") is not None  # the restarted proxy still refuses
    again.charge("flow-0", "w1", "anthropic", usage)  # a flow id is charged once
    again.close()
    assert len(BudgetLedger(tmp_path / "ledger.sqlite3").charges()) == 3


def test_a_reservation_holds_the_worst_case_and_settles_to_the_real_cost(tmp_path):
    meter = Meter(metering_config(tmp_path), logging.getLogger("test"))  # w1: 0.01 USD
    body = {"model": "claude-sonnet-4-5", "max_tokens": 200, "messages": []}
    # 300 bytes -> 100 input tokens at 3, 200 output at 15: 0.0033 USD.
    assert meter.worst_case("claude-sonnet-4-5", body, 300) == Decimal("0.0033")
    for name in ("max_completion_tokens", "max_output_tokens"):
        assert meter.worst_case("claude-sonnet-4-5", {name: 1000}, 3) == Decimal("0.015003")
    # No bound named (or a nonsense one): the model's output limit, 32768 by default.
    for bad in ({}, {"max_tokens": 0}, {"max_tokens": True}, {"max_tokens": "9"}, None):
        assert meter.worst_case("claude-sonnet-4-5", bad, 0) == Decimal("0.49152")
    # A model without a price: the conservative rate for unknown models.
    assert meter.worst_case("mystery", {"max_tokens": 1000}, 0) == Decimal("0.075")
    assert meter.reserve("f1", "w1", Decimal("0.0033")) is None
    assert meter.reserve("f2", "w1", Decimal("0.0033")) is None
    assert meter.reserve("f3", "w1", Decimal("0.0033")) is None
    refusal = meter.reserve("f4", "w1", Decimal("0.0033")).text
    assert "is spent for a call this large" in refusal and "0.0099 USD held" in refusal
    assert meter.held_today("w1") == Decimal("0.0099")
    meter.charge("f1", "w1", "anthropic", Usage(model="claude-sonnet-4-5", input_tokens=100,
                                                output_tokens=10, reported=True,
                                                complete=True))  # 0.00045 USD
    meter.release("f2")  # refused downstream, or the client went away: nothing owed
    assert meter.held_today("w1") == Decimal("0.0033")
    assert meter.spent_today("w1") == Decimal("0.00045")
    assert meter.reserve("f4", "w1", Decimal("0.0033")) is None  # room again
    assert meter.reserve("any", "w2", Decimal("99")) is None  # no budget: no cap
    meter.close()


def test_reservations_from_many_threads_never_pass_the_cap(tmp_path):
    import threading
    meter = Meter(metering_config(tmp_path), logging.getLogger("test"))
    held, lock = [], threading.Lock()

    def take(n: int) -> None:
        if meter.reserve(f"flow-{n}", "w1", Decimal("0.0009")) is None:
            with lock:
                held.append(n)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(held) == 11  # 11 x 0.0009 = 0.0099 <= 0.01 < 12 x 0.0009
    meter.close()


def test_rate_limiter_refuses_bursts_and_open_flows_over_the_limit():
    limiter = RateLimiter(per_second=2, burst=2, max_concurrent=0)
    assert limiter.admit("w1", 100.0) is None and limiter.admit("w1", 100.0) is None
    assert limiter.admit("w1", 100.0) == 1
    assert limiter.admit("w2", 100.0) is None  # per worker
    assert limiter.admit("w1", 100.6) is None  # refilled at 2 per second
    open_limit = RateLimiter(per_second=0, burst=0, max_concurrent=1)
    assert open_limit.admit("w1", 0) is None and open_limit.admit("w1", 0) == 1
    open_limit.done("w1")
    assert open_limit.admit("w1", 0) is None


def config_problems(metering: dict) -> str:
    with pytest.raises(TrafficConfigError) as caught:
        parse_config({"spool_dir": "/tmp/spool", "metering": metering})
    return str(caught.value)


def test_bad_metering_config_names_each_field():
    text = config_problems({
        "ledger": "relative.sqlite3", "prices_taken_on": "yesterday",
        "apis": [{"path": "/v1/messages", "provider": "anthropic"},
                 {"host": "api.openai.com", "path": "/v1/chat", "provider": "azure"}],
        "prices": {"m": {"input": "-1", "output": "x"}},
        "unknown_model_price": {"input": "1"},
        "workers": {"w1": {"daily_budget_usd": "0"}},
        "rate_limit": {"requests_per_second": 0}})
    for expected in ("'metering.ledger' must be an absolute file path",
                     "'metering.prices_taken_on' must be the date",
                     "'metering.apis[0].host' must be a host name",
                     "'metering.apis[1].provider' must be one of anthropic, openai",
                     "'metering.prices.m.input' must be a non-negative finite number",
                     "'metering.prices.m.output' must be a number",
                     "'metering.unknown_model_price' must give USD per million tokens",
                     "'metering.workers.w1.daily_budget_usd' must be a positive",
                     "'metering.rate_limit.requests_per_second' must be a number > 0"):
        assert expected in text, expected


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/", "/v1/%6Dessages",
                                  "//v1//messages", "/v1/./messages?beta=true",
                                  "/v1/x/../messages", "/v1/messages#frag"])
def test_path_spellings_a_server_resolves_alike_are_all_metered(tmp_path, path):
    from autocode.traffic.metering import LlmApi
    meter = Meter(metering_config(tmp_path, apis=(LlmApi("api.anthropic.com", "/v1/messages",
                                                         "anthropic"),)),
                  logging.getLogger("test"))
    try:
        assert meter.match("API.Anthropic.com.", None, "POST", path) is not None
        assert meter.match("other.example", "api.anthropic.com", "POST", path) is not None
        assert meter.match("api.anthropic.com", None, "GET", path) is None
        assert meter.match("api.anthropic.com", None, "POST", "/v1/messages/count_tokens") \
            is None
    finally:
        meter.close()
