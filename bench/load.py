"""Closed-loop load generator: N keep-alive connections to the proxy, one request in flight
each, absolute-form requests (what any HTTP proxy client sends): GETs, or POSTs of a body
(an LLM API call, answered as JSON or a chunked SSE stream). Bounded by time and count."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    other_status: int = 0
    errors: int = 0
    measured: int = 0
    measured_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.measured / self.measured_seconds if self.measured_seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in head.lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _connection(proxy_port: int, target: str, result: LoadResult, t_measure: float,
                      t_end: float, budget: list[int], body: bytes | None = None) -> None:
    if body is None:
        request = (f"GET {target} HTTP/1.1\r\nHost: {target.split('/')[2]}\r\n"
                   "User-Agent: autocode-bench\r\n\r\n").encode()
    else:
        request = (f"POST {target} HTTP/1.1\r\nHost: {target.split('/')[2]}\r\n"
                   "User-Agent: autocode-bench\r\nContent-Type: application/json\r\n"
                   "x-api-key: bench\r\nanthropic-version: 2023-06-01\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        while budget[0] > 0:
            now = time.perf_counter()
            if now >= t_end:
                break
            budget[0] -= 1
            result.sent += 1
            writer.write(request)
            try:
                status = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                result.errors += 1
                return
            done = time.perf_counter()
            if status == 200:
                result.ok += 1
            else:
                result.other_status += 1
            if now >= t_measure:
                result.measured += 1
                result.latencies_ms.append((done - now) * 1000)
    finally:
        writer.close()


async def run_load(proxy_port: int, target: str, concurrency: int, warmup: float,
                   duration: float, max_requests: int, body: bytes | None = None) -> LoadResult:
    result = LoadResult()
    start = time.perf_counter()
    t_measure, t_end = start + warmup, start + warmup + duration
    budget = [max_requests]
    await asyncio.gather(*(
        _connection(proxy_port, target, result, t_measure, t_end, budget, body)
        for _ in range(concurrency)))
    result.measured_seconds = min(time.perf_counter(), t_end) - t_measure
    return result
