"""Spend metering at the proxy: every LLM API call a worker makes, priced from the usage
its provider reports, charged to the worker's day in a central ledger, and refused once
that day's budget is spent.

The addon (autocode/traffic/addon.py) asks `Meter.match` whether a request is an LLM API
call (host and path, from the `metering.apis` table), refuses it when the worker's day is
spent, and taps the response as it streams past (`UsageTap`: SSE events parsed as they
arrive, a JSON body read whole only when it is JSON, up to a bound); when the flow ends
the usage is priced (`Prices`) and `Meter.charge` adds it to the worker's running total at
once (so the next request sees it) and hands the ledger write to a background thread: no
hook ever waits on SQLite.

Usage, per provider:
- Anthropic Messages: JSON `usage{input_tokens, output_tokens, cache_creation_input_tokens,
  cache_read_input_tokens}`; SSE: the input counts in `message_start.message.usage`, and
  `message_delta.usage`, cumulative: the last one counts, they are never added up.
- OpenAI chat completions: JSON `usage{prompt_tokens, completion_tokens,
  prompt_tokens_details.cached_tokens}` (prompt_tokens includes the cached ones); SSE:
  usage only in a last chunk with empty `choices`, sent when the request asked for
  `stream_options.include_usage`, which the proxy adds to streaming requests that lack it
  (`inject_stream_usage`). OpenAI Responses: `usage{input_tokens, output_tokens,
  input_tokens_details.cached_tokens}`, in the `response.completed` event when streamed.
- What the provider did not report (a stream cut midway, a stream without usage) is
  estimated from the bytes seen (4 per token) and the charge is marked `estimated`.
"""

from __future__ import annotations

import json
import posixpath
import queue
import re
import threading
import zlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from autocode.budget import BudgetLedger, micros_to_usd, usd_to_micros

PROVIDERS = ("anthropic", "openai")
MAX_JSON_BODY = 32 * 1024 * 1024  # a larger non-streamed answer is estimated, not parsed
BYTES_PER_TOKEN = 4
# The worst case of a request's input, for a reservation: text runs 3-4 bytes per token in
# English and about 3 in CJK, and JSON's syntax adds bytes that cost nothing; 3 errs high.
BYTES_PER_INPUT_TOKEN_BOUND = 3
# Fields that bound a call's output, per API shape (Messages, chat completions, Responses).
OUTPUT_BOUNDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
DEFAULT_OUTPUT_LIMIT = 32768  # a call that names no bound may generate this many
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class LlmApi:
    """One LLM API: POST requests to `host` at exactly `path` (the query aside) are
    metered; /v1/messages/count_tokens, which costs nothing, is not /v1/messages."""

    host: str
    path: str
    provider: str  # the usage format: anthropic | openai


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: Decimal
    output: Decimal
    cache_read: Decimal = Decimal(0)
    cache_write: Decimal = Decimal(0)


@dataclass
class Usage:
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reported: bool = False  # the provider's own counts were seen
    complete: bool = False  # the answer ended as the protocol says (message_stop, [DONE])
    output_chars: int = 0  # generated text seen, for an estimate

    @property
    def estimated(self) -> bool:
        return not (self.reported and self.complete)


@dataclass(frozen=True)
class Refused:
    """Why a call was not let through: its text for the agent, and the task whose own
    budget refused it (None: the worker's daily budget)."""

    text: str
    task_id: str | None = None


@dataclass(frozen=True)
class Charge:
    """One metered call, priced."""

    flow_id: str
    worker: str
    provider: str
    usage: Usage
    cost_usd: Decimal
    unknown_model: bool
    at: datetime
    task_id: str | None = None

    def record(self, prices_taken_on: str) -> dict[str, Any]:
        """The `llm` part of the call's traffic record."""
        u = self.usage
        return {"provider": self.provider, "model": u.model, "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens, "cache_read_tokens": u.cache_read_tokens,
                "cache_write_tokens": u.cache_write_tokens, "cost_usd": str(self.cost_usd),
                "estimated": u.estimated, "unknown_model": self.unknown_model,
                "prices_taken_on": prices_taken_on}


class Prices:
    """The price table: a model's own entry, else the longest entry its name starts with
    (claude-sonnet-4-5 prices claude-sonnet-4-5-20250929), else the conservative rate for
    unknown models (flagged)."""

    def __init__(self, table: dict[str, Price], unknown: Price):
        self.table = table
        self.unknown = unknown
        self._by_length = sorted(table, key=len, reverse=True)

    def lookup(self, model: str | None) -> tuple[Price, bool]:
        name = (model or "").lower()
        if name in self.table:
            return self.table[name], False
        for key in self._by_length:
            if name.startswith(key):
                return self.table[key], False
        return self.unknown, True

    def cost(self, usage: Usage) -> tuple[Decimal, bool]:
        price, unknown = self.lookup(usage.model)
        total = (usage.input_tokens * price.input + usage.output_tokens * price.output
                 + usage.cache_read_tokens * price.cache_read
                 + usage.cache_write_tokens * price.cache_write) / MILLION
        return total, unknown


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _anthropic_usage(usage: Any, into: Usage) -> None:
    """Counts from an Anthropic usage object; present fields replace earlier ones."""
    if not isinstance(usage, dict):
        return
    for key, attr in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                      ("cache_read_input_tokens", "cache_read_tokens"),
                      ("cache_creation_input_tokens", "cache_write_tokens")):
        if isinstance(usage.get(key), int):
            setattr(into, attr, _int(usage[key]))
    into.reported = True


def _openai_usage(usage: Any, into: Usage) -> None:
    if not isinstance(usage, dict):
        return
    # Chat completions call them prompt/completion tokens, Responses input/output; both
    # count cached tokens inside the input, at the cached rate.
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = min(_int(details.get("cached_tokens")) if isinstance(details, dict) else 0, prompt)
    into.input_tokens = prompt - cached
    into.cache_read_tokens = cached
    into.output_tokens = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    into.reported = True


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for k, v in value.items() if k not in ("type", "index", "id"))
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


def read_json_answer(provider: str, body: bytes, usage: Usage) -> None:
    try:
        doc = json.loads(body)
    except ValueError:
        return
    if not isinstance(doc, dict):
        return
    if isinstance(doc.get("model"), str):
        usage.model = doc["model"]
    if provider == "anthropic":
        _anthropic_usage(doc.get("usage"), usage)
        usage.output_chars += _text_chars(doc.get("content"))
    else:
        _openai_usage(doc.get("usage"), usage)
        usage.output_chars += _text_chars(doc.get("choices") or doc.get("output"))
    usage.complete = "error" not in doc


def read_sse_event(provider: str, data: str, usage: Usage) -> None:
    if data.strip() == "[DONE]":
        usage.complete = True
        return
    try:
        event = json.loads(data)
    except ValueError:
        return
    if not isinstance(event, dict):
        return
    kind = event.get("type")
    if provider == "anthropic":
        if kind == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            usage.model = message.get("model") or usage.model
            _anthropic_usage(message.get("usage"), usage)
        elif kind == "message_delta":
            _anthropic_usage(event.get("usage"), usage)  # cumulative: the last one counts
        elif kind == "content_block_delta":
            usage.output_chars += _text_chars(event.get("delta"))
        elif kind == "message_stop":
            usage.complete = True
        return
    if kind == "response.completed" and isinstance(event.get("response"), dict):
        usage.model = event["response"].get("model") or usage.model
        _openai_usage(event["response"].get("usage"), usage)
        usage.complete = True
        return
    if kind == "response.output_text.delta":
        usage.output_chars += _text_chars(event.get("delta"))
        return
    usage.model = event.get("model") or usage.model
    if event.get("usage"):
        _openai_usage(event["usage"], usage)
    for choice in event.get("choices") or ():
        if isinstance(choice, dict):
            usage.output_chars += _text_chars(choice.get("delta"))


_EVENT_END = re.compile(rb"\r?\n\r?\n")


class UsageTap:
    """mitmproxy's `response.stream` callable for a metered answer: every chunk passes on
    unchanged at once; SSE events are parsed as they complete, a JSON body is kept (up to
    MAX_JSON_BODY) and read at the end; gzip and deflate are undone for reading only."""

    def __init__(self, provider: str, content_type: str, content_encoding: str,
                 model: str | None):
        self.provider = provider
        self.sse = "event-stream" in content_type
        self.usage = Usage(model=model)
        self.bytes_seen = 0
        self._buffer = b""
        self._json: list[bytes] | None = [] if not self.sse else None
        self._json_size = 0
        encoding = content_encoding.strip().lower()
        self._inflate = (zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else
                         zlib.decompressobj() if encoding == "deflate" else None)
        self.unreadable = encoding not in ("", "identity", "gzip", "deflate")

    def __call__(self, chunk: bytes) -> bytes:
        try:
            self._feed(chunk)
        except Exception:  # reading is best effort; the client's bytes never depend on it
            self.unreadable = True
        return chunk

    def _feed(self, chunk: bytes) -> None:
        self.bytes_seen += len(chunk)
        if self.unreadable:
            return
        if self._inflate is not None:
            chunk = self._inflate.decompress(chunk) if chunk else self._inflate.flush()
        if self._json is not None:
            self._json_size += len(chunk)
            if self._json_size <= MAX_JSON_BODY:
                self._json.append(chunk)
            return
        self._buffer += chunk
        while True:
            match = _EVENT_END.search(self._buffer)
            if match is None:
                break
            raw, self._buffer = self._buffer[:match.start()], self._buffer[match.end():]
            self._event(raw)
        if not chunk and self._buffer.strip():  # the end: a last event without its blank line
            self._event(self._buffer)
            self._buffer = b""

    def _event(self, raw: bytes) -> None:
        lines = raw.decode("utf-8", "replace").splitlines()
        data = "\n".join(line[5:].lstrip(" ") for line in lines if line.startswith("data:"))
        if data:
            read_sse_event(self.provider, data, self.usage)

    def finish(self) -> Usage:
        """The usage seen, once the flow has ended (completely or not)."""
        if self._json is not None and self._json_size <= MAX_JSON_BODY:
            read_json_answer(self.provider, b"".join(self._json), self.usage)
            self._json = []
        return self.usage


def estimate(usage: Usage, request_bytes: int, unreadable_bytes: int = 0) -> Usage:
    """Fill in what the provider did not report, from the bytes seen (rounded up); a
    complete answer with the provider's counts is left as it is."""
    if not usage.estimated:
        return usage
    if unreadable_bytes:  # compressed past reading: a token per byte, the safe side
        usage.output_tokens = max(usage.output_tokens, unreadable_bytes)
    if not usage.reported:
        usage.input_tokens = max(usage.input_tokens, -(-request_bytes // BYTES_PER_TOKEN))
    usage.output_tokens = max(usage.output_tokens, -(-usage.output_chars // BYTES_PER_TOKEN))
    return usage


@dataclass(frozen=True)
class MeteringConfig:
    ledger_path: Path
    apis: tuple[LlmApi, ...]
    prices: dict[str, Price]
    prices_taken_on: str
    unknown_model_price: Price
    budgets: dict[str, Decimal]  # worker name -> daily budget in USD
    agents: dict[str, str] = field(default_factory=dict)  # worker name -> agent type
    timezone: str = "UTC"
    warn_share: Decimal = Decimal("0.8")
    inject_stream_usage: bool = True
    requests_per_second: float = 0.0  # per worker; 0: no limit
    burst: int = 0
    max_concurrent: int = 0  # open HTTP flows per worker; 0: no limit
    # The output a call that names no max_tokens is reserved for (the model's limit).
    output_limit_tokens: int = DEFAULT_OUTPUT_LIMIT


class Meter:
    """Running totals per worker and day, the cap, and the ledger writes behind them."""

    def __init__(self, config: MeteringConfig, log):
        self.config = config
        self.log = log
        self.prices = Prices(config.prices, config.unknown_model_price)
        self.tz = ZoneInfo(config.timezone)
        self._lock = threading.Lock()
        self._spent: dict[tuple[str, date], int] = {}  # micro-dollars
        # What calls in flight may still cost, per worker and day, and per flow.
        self._held: dict[tuple[str, date], int] = {}
        self._reservations: dict[str, tuple[tuple[str, date], int, str | None]] = {}
        # Per task, whatever the day: spent (read from the ledger when first seen) and held.
        self._task_spent: dict[str, int] = {}
        self._task_held: dict[str, int] = {}
        self._warned: set[tuple[str, date]] = set()
        self._queue: queue.Queue[Charge | None] = queue.Queue()
        self._ledger = BudgetLedger(config.ledger_path, config.timezone)
        today = self.today()
        # Once, at start: a restarted proxy caps from what the ledger already holds.
        for worker in config.budgets:
            self._spent[(worker, today)] = usd_to_micros(self._ledger.spent(today, worker))
        self._thread = threading.Thread(target=self._write_loop, name="autocode-meter",
                                        daemon=True)
        self._thread.start()

    # -- recognising -----------------------------------------------------------------

    def match(self, host: str, sni: str | None, method: str, path: str) -> LlmApi | None:
        if method != "POST":
            return None
        route = normal_path(path)
        names = {host.lower().rstrip(".")} | ({sni.lower().rstrip(".")} if sni else set())
        for api in self.config.apis:
            if api.host in names and route == normal_path(api.path):
                return api
        return None

    # -- the cap -----------------------------------------------------------------------

    def today(self) -> date:
        return datetime.now(self.tz).date()

    def spent_today(self, worker: str) -> Decimal:
        with self._lock:
            return micros_to_usd(self._spent.get((worker, self.today()), 0))

    def refusal(self, worker: str) -> str | None:
        """Why a new call from `worker` is refused (its day is spent), or None."""
        budget = self.config.budgets.get(worker)
        if budget is None:
            return None
        spent = self.spent_today(worker)
        if spent < budget:
            return None
        resets = datetime.combine(self.today() + timedelta(days=1), time.min, tzinfo=self.tz)
        return (f"autocode: the daily budget of {budget} USD for worker {worker} is spent "
                f"({spent} USD metered today); new model calls are refused until "
                f"{resets.isoformat()} ({self.config.timezone})")

    def worst_case(self, model: str | None, body: Any, request_bytes: int) -> Decimal:
        """The most a call can cost: its input estimated high from its size, its output at
        the bound it names (else the model's limit), at the model's price."""
        bound = None
        if isinstance(body, dict):
            for name in OUTPUT_BOUNDS:
                value = body.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    bound = value
                    break
        usage = Usage(model=model, input_tokens=-(-request_bytes // BYTES_PER_INPUT_TOKEN_BOUND),
                      output_tokens=bound or self.config.output_limit_tokens)
        return self.prices.cost(usage)[0]

    def reserve(self, flow_id: str, worker: str, worst_usd: Decimal,
                task: tuple[str, Decimal | None] | None = None) -> Refused | None:
        """Holds a call's worst case against what is left of the worker's day, and of its
        task's budget when it runs one, or says why it does not fit (None: held). Calls
        started at once can then never add up past a cap: each one's share is taken before
        it is forwarded, and given back, down to what it really cost, when it ends
        (`charge`) or never happens (`release`)."""
        budget = self.config.budgets.get(worker)
        task_id, task_budget = task if task is not None else (None, None)
        spent_before = None
        if task_id is not None and task_id not in self._task_spent:
            spent_before = usd_to_micros(self._ledger.spent_by_task(task_id))
        key, amount = (worker, self.today()), usd_to_micros(worst_usd)
        with self._lock:
            if spent_before is not None:
                self._task_spent.setdefault(task_id, spent_before)
            if budget is not None:
                spent, held = self._spent.get(key, 0), self._held.get(key, 0)
                if spent + held + amount > usd_to_micros(budget):
                    return Refused(self._too_large(
                        f"the daily budget of {budget} USD for worker {worker}", spent, held,
                        amount, usd_to_micros(budget), "metered today"))
            if task_id is not None and task_budget is not None:
                spent = self._task_spent[task_id]
                held = self._task_held.get(task_id, 0)
                if spent + held + amount > usd_to_micros(task_budget):
                    return Refused(self._too_large(
                        f"the budget of {task_budget} USD for task {task_id}", spent, held,
                        amount, usd_to_micros(task_budget), "metered for it"), task_id)
            self._held[key] = self._held.get(key, 0) + amount
            if task_id is not None:
                self._task_held[task_id] = self._task_held.get(task_id, 0) + amount
            self._reservations[flow_id] = (key, amount, task_id)
        return None

    def _too_large(self, cap: str, spent: int, held: int, amount: int, limit: int,
                   spent_where: str) -> str:
        left = max(0, limit - spent - held)
        resets = datetime.combine(self.today() + timedelta(days=1), time.min, tzinfo=self.tz)
        when = (f"wait until {resets.isoformat()} ({self.config.timezone})"
                if "daily" in cap else "give the task a larger --budget")
        return (f"autocode: {cap} is spent for a call this large: {micros_to_usd(spent)} USD "
                f"{spent_where} and {micros_to_usd(held)} USD held by calls in flight leave "
                f"{micros_to_usd(left)} USD, and this call could cost up to "
                f"{micros_to_usd(amount)} USD (its input and max_tokens at its model's "
                f"price); ask for fewer tokens, or {when}")

    def release(self, flow_id: str) -> None:
        with self._lock:
            self._release(flow_id)

    def _release(self, flow_id: str) -> None:
        reserved = self._reservations.pop(flow_id, None)
        if reserved is not None:
            key, amount, task_id = reserved
            self._held[key] = self._held.get(key, 0) - amount
            if task_id is not None:
                self._task_held[task_id] = self._task_held.get(task_id, 0) - amount

    def held_today(self, worker: str) -> Decimal:
        with self._lock:
            return micros_to_usd(self._held.get((worker, self.today()), 0))

    # -- charging ------------------------------------------------------------------------

    def charge(self, flow_id: str, worker: str, provider: str, usage: Usage,
               task_id: str | None = None) -> Charge:
        """Prices the call, adds it to the worker's day (and its task's spend) and gives
        back its reservation."""
        cost, unknown = self.prices.cost(usage)
        charge = Charge(flow_id, worker, provider, usage, cost, unknown, datetime.now(UTC),
                        task_id)
        key = (worker, charge.at.astimezone(self.tz).date())
        with self._lock:
            self._release(flow_id)
            if task_id is not None and task_id in self._task_spent:
                self._task_spent[task_id] += usd_to_micros(cost)
            self._spent[key] = self._spent.get(key, 0) + usd_to_micros(cost)
            spent = self._spent[key]
        budget = self.config.budgets.get(worker)
        if budget is not None and key not in self._warned and \
                micros_to_usd(spent) >= budget * self.config.warn_share:
            self._warned.add(key)
            self.log.warning("worker %s has spent %s of its %s USD daily budget (metered)",
                             worker, micros_to_usd(spent), budget)
        self._queue.put(charge)
        return charge

    def _write_loop(self) -> None:
        while True:
            charge = self._queue.get()
            if charge is None:
                return
            while True:
                try:
                    self._ledger.charge(
                        idempotency_key=f"metered:{charge.flow_id}", worker_id=charge.worker,
                        agent=self.config.agents.get(charge.worker, "unknown"),
                        task_id=charge.task_id or "-", amount_usd=charge.cost_usd,
                        source="metered",
                        at=charge.at, detail=charge.record(self.config.prices_taken_on))
                    break
                except Exception:
                    # The traffic record holds the charge too; keep trying, in order.
                    self.log.exception("metered charge for flow %s not yet in the ledger",
                                       charge.flow_id)
                    threading.Event().wait(1.0)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._ledger.close()


def normal_path(path: str) -> str:
    """A request path as a server resolves it: no query, percent-escapes decoded, repeated
    slashes and dot segments folded, no trailing slash; so /v1/%6Dessages or
    //v1/./messages/ cannot slip past the table as another path."""
    route = unquote(path.split("?", 1)[0].split("#", 1)[0])
    route = posixpath.normpath("/" + re.sub(r"/+", "/", route).lstrip("/"))
    return route.rstrip("/") or "/"


def error_answer(provider: str, message: str) -> tuple[int, dict[str, Any]]:
    """A refused call in its provider's own shape: Anthropic answers a reached spend limit
    400 invalid_request_error; OpenAI an exhausted quota 429 insufficient_quota."""
    if provider == "anthropic":
        return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                "message": message}}
    return 429, {"error": {"message": message, "type": "insufficient_quota", "param": None,
                           "code": "insufficient_quota"}}


def rate_limited_answer(provider: str | None, retry_after: int) -> tuple[int, dict[str, Any]]:
    message = (f"autocode: this worker's request rate at the egress proxy is over its limit; "
               f"retry after {retry_after} s")
    if provider == "anthropic":
        return 429, {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    return 429, {"error": {"message": message, "type": "rate_limit_exceeded", "param": None,
                           "code": "rate_limit_exceeded"}}


class RateLimiter:
    """Per worker: a token bucket of requests per second and a count of open flows. Used
    from the proxy's event loop only (every hook runs there), so it takes no lock."""

    def __init__(self, per_second: float, burst: int, max_concurrent: int):
        self.per_second = per_second
        self.burst = float(max(burst, 1))
        self.max_concurrent = max_concurrent
        self._tokens: dict[str, tuple[float, float]] = {}
        self._open: dict[str, int] = {}

    def admit(self, worker: str, now: float) -> int | None:
        """None if admitted (and counted open), else seconds to wait."""
        open_flows = self._open.get(worker, 0)
        if self.max_concurrent and open_flows >= self.max_concurrent:
            return 1
        if self.per_second:
            tokens, last = self._tokens.get(worker, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.per_second)
            if tokens < 1:
                self._tokens[worker] = (tokens, now)
                return max(1, int((1 - tokens) / self.per_second + 0.999))
            self._tokens[worker] = (tokens - 1, now)
        self._open[worker] = open_flows + 1
        return None

    def done(self, worker: str) -> None:
        self._open[worker] = max(0, self._open.get(worker, 0) - 1)


# -- the `metering` section of the traffic config -------------------------------------------

_METERING_KEYS = {"ledger", "timezone", "apis", "prices", "prices_taken_on",
                  "unknown_model_price", "workers", "warn_share", "inject_stream_usage",
                  "rate_limit", "output_limit_tokens"}
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$|^[0-9a-f:.]+$")


def _amount(p, field_name: str, value: Any, allow_zero: bool = True) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        p.add(field_name, f"must be a number, got {value!r}", "write e.g. \"3.00\"")
        return None
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        p.add(field_name, f"must be a number, got {value!r}", "write e.g. \"3.00\"")
        return None
    if not amount.is_finite() or amount < 0 or (amount == 0 and not allow_zero):
        p.add(field_name, f"must be a {'non-negative' if allow_zero else 'positive'} finite "
              f"number, got {value!r}", "write e.g. \"3.00\"")
        return None
    return amount


def _price(p, field_name: str, raw: Any) -> Price | None:
    if not isinstance(raw, dict) or not {"input", "output"} <= set(raw):
        p.add(field_name, "must give USD per million tokens for at least input and output",
              "write e.g. {input: \"3\", output: \"15\", cache_read: \"0.3\", "
              "cache_write: \"3.75\"}")
        return None
    unknown = set(raw) - {"input", "output", "cache_read", "cache_write"}
    for name in sorted(unknown):
        p.add(f"{field_name}.{name}", "is not a price", "use input, output, cache_read, "
              "cache_write")
    values = {k: _amount(p, f"{field_name}.{k}", raw.get(k, 0)) for k in
              ("input", "output", "cache_read", "cache_write")}
    if None in values.values() or unknown:
        return None
    return Price(**values)


def parse_apis(p, field_name: str, raw: Any) -> list[LlmApi]:
    """A list of {host, path, provider}: the LLM APIs whose calls are metered."""
    if not isinstance(raw, list):
        p.add(field_name, "must be a list of {host, path, provider}",
              "write e.g. [{host: api.anthropic.com, path: /v1/messages, provider: anthropic}]")
        return []
    apis = []
    for n, entry in enumerate(raw):
        where = f"{field_name}[{n}]"
        if not isinstance(entry, dict):
            p.add(where, "must be a mapping", "write {host: ..., path: ..., provider: ...}")
            continue
        host, path, provider = entry.get("host"), entry.get("path"), entry.get("provider")
        if not (isinstance(host, str) and _HOST.match(host.lower())):
            p.add(f"{where}.host", f"must be a host name or address, got {host!r}",
                  "write e.g. host: api.anthropic.com")
            continue
        if not (isinstance(path, str) and path.startswith("/")):
            p.add(f"{where}.path", f"must be a path starting with /, got {path!r}",
                  "write e.g. path: /v1/messages")
            continue
        if provider not in PROVIDERS:
            p.add(f"{where}.provider", f"must be one of {', '.join(PROVIDERS)}, got "
                  f"{provider!r}", "name the usage format the API answers in")
            continue
        apis.append(LlmApi(host.lower(), path, provider))
    return apis


def parse_prices(p, field_name: str, raw: Any) -> dict[str, Price]:
    """Model name -> its price, USD per million tokens."""
    prices = {}
    if not isinstance(raw, dict):
        p.add(field_name, "must map model names to prices", "see the defaults")
        return prices
    for model, entry in raw.items():
        price = _price(p, f"{field_name}.{model}", entry)
        if price is not None:
            prices[str(model).lower()] = price
    return prices


def parse_price(p, field_name: str, raw: Any) -> Price | None:
    """One price: {input, output, cache_read, cache_write}, USD per million tokens."""
    return _price(p, field_name, raw)


def parse_taken_on(p, field_name: str, raw: Any) -> str | None:
    try:
        date.fromisoformat(str(raw))
    except ValueError:
        p.add(field_name, f"must be the date the prices were taken, got {raw!r}",
              "write e.g. \"2026-11-30\"")
        return None
    return str(raw)


def parse_warn_share(p, field_name: str, raw: Any) -> Decimal | None:
    share = _amount(p, field_name, raw, allow_zero=False)
    if share is not None and share > 1:
        p.add(field_name, f"must be at most 1, got {share}", "write e.g. 0.8")
        return None
    return share


RATE_LIMITS = (("requests_per_second", float), ("burst", int), ("max_concurrent", int))


def parse_rate_limit(p, field_name: str, raw: Any) -> dict[str, float | int]:
    """{requests_per_second, burst, max_concurrent}, each > 0; a missing one: no limit."""
    if raw is not None and not isinstance(raw, dict):
        p.add(field_name, "must map requests_per_second, burst and max_concurrent to "
              "numbers", "or be {} for no limit")
        return {key: kind(0) for key, kind in RATE_LIMITS}
    limit = raw or {}
    for name in sorted(set(limit) - {key for key, _ in RATE_LIMITS}, key=str):
        p.add(f"{field_name}.{name}", "is not a rate limit",
              f"use {', '.join(key for key, _ in RATE_LIMITS)}")
    rate = {}
    for key, kind in RATE_LIMITS:
        value = limit.get(key, 0)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if kind is int:
            ok = ok and isinstance(value, int)
        if key in limit and not ok:
            p.add(f"{field_name}.{key}", f"must be a number > 0, got {value!r}",
                  "leave it out for no limit")
        rate[key] = kind(value) if ok else kind(0)
    return rate


def parse_metering(p, raw: Any) -> MeteringConfig | None:
    """The `metering` section; its problems are added to `p` (autocode/problems.py)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        p.add("metering", "must be a mapping", "see autocode/traffic/metering.py")
        return None
    for name in sorted(set(raw) - _METERING_KEYS, key=str):
        p.add(f"metering.{name}", "is not a known field",
              f"remove it or use one of: {', '.join(sorted(_METERING_KEYS))}")
    ledger = raw.get("ledger")
    if not (isinstance(ledger, str) and ledger.startswith("/")):
        p.add("metering.ledger", f"must be an absolute file path, got {ledger!r}",
              "write e.g. /mnt/data/autocode/financial/metered/ledger.sqlite3")
    zone = raw.get("timezone", "UTC")
    try:
        ZoneInfo(str(zone))
    except (ValueError, KeyError, OSError):
        p.add("metering.timezone", f"is not an IANA time zone, got {zone!r}", "write e.g. UTC")
        zone = "UTC"
    apis = parse_apis(p, "metering.apis", raw.get("apis") or [])
    prices = parse_prices(p, "metering.prices", raw.get("prices") or {})
    unknown = parse_price(p, "metering.unknown_model_price", raw.get("unknown_model_price"))
    taken_on = raw.get("prices_taken_on")
    parse_taken_on(p, "metering.prices_taken_on", taken_on)
    budgets, agents = {}, {}
    raw_workers = raw.get("workers") or {}
    if not isinstance(raw_workers, dict):
        p.add("metering.workers", "must map worker names to their budget and agent",
              "write e.g. {worker1: {daily_budget_usd: \"25\", agent_type: aider}}")
        raw_workers = {}
    for worker, entry in raw_workers.items():
        if not isinstance(entry, dict):
            p.add(f"metering.workers.{worker}", "must be a mapping", "see above")
            continue
        budget = _amount(p, f"metering.workers.{worker}.daily_budget_usd",
                         entry.get("daily_budget_usd"), allow_zero=False)
        if budget is not None:
            budgets[str(worker)] = budget
        agents[str(worker)] = str(entry.get("agent_type", "unknown"))
    share = parse_warn_share(p, "metering.warn_share", raw.get("warn_share", "0.8"))
    rate = parse_rate_limit(p, "metering.rate_limit", raw.get("rate_limit") or {})
    limit = raw.get("output_limit_tokens", DEFAULT_OUTPUT_LIMIT)
    if not (isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit <= 10_000_000):
        p.add("metering.output_limit_tokens", f"must be a whole number of tokens > 0, got "
              f"{limit!r}", f"write e.g. {DEFAULT_OUTPUT_LIMIT}, the models' output limit")
        limit = DEFAULT_OUTPUT_LIMIT
    inject = raw.get("inject_stream_usage", True)
    if not isinstance(inject, bool):
        p.add("metering.inject_stream_usage", f"must be true or false, got {inject!r}",
              "write true or false")
    if unknown is None or not isinstance(ledger, str) or not ledger.startswith("/"):
        return None
    return MeteringConfig(
        ledger_path=Path(ledger), apis=tuple(apis), prices=prices,
        prices_taken_on=str(taken_on), unknown_model_price=unknown, budgets=budgets,
        agents=agents, timezone=str(zone), warn_share=share or Decimal("0.8"),
        inject_stream_usage=inject is True, output_limit_tokens=limit, **rate)
