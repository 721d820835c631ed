"""The OpenAI ingress: graceful degradation, a queue bound, on-demand models one at a time,
and each answer charged to the worker that asked.

- A request whose model does not answer within `load_wait_s` (an on-demand model still
  loading, one that failed to load and that Ray Serve keeps retrying, or one waiting for
  another on-demand model to unload), or whose model already has `max_queued` requests in
  flight here, gets its fallback's answer (`X-Autocode-Fallback: <model>`), else 503 with
  Retry-After; `X-Autocode-Degraded` says why (`unavailable` or `queue-full`). Other
  models are not touched: each is its own deployment, and a failing one only fails its
  own requests.
- On-demand models that do not fit together go through the gate (ondemand.py).
- Every answer's usage is charged (accounting.py); a streamed request that did not ask
  for usage is made to (`stream_options.include_usage`), as the proxy's metering does.

Built on ray.serve.llm's OpenAiIngress (Ray 2.60), through its documented
`ingress_cls_config`; `_process_llm_request` is that class's own step for completions and
chat, so a Ray upgrade must re-run tests/unit/serving/test_serving_cpu.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress

from autocode.serving.accounting import Accounting
from autocode.serving.ondemand import OnDemandGate

FALLBACK_HEADER = "X-Autocode-Fallback"
DEGRADED_HEADER = "X-Autocode-Degraded"


class Degraded(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class AutocodeIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, load_wait_s: float = 300.0,
                 retry_after_s: int = 30, fallbacks: dict[str, str] | None = None,
                 max_queued: int = 64, on_demand: dict[str, Any] | None = None,
                 accounting: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self._load_wait_s = float(load_wait_s)
        self._retry_after_s = int(retry_after_s)
        self._fallbacks = dict(fallbacks or {})
        self._max_queued = int(max_queued)
        self._in_flight: dict[str, int] = {}
        on_demand = on_demand or {}
        self._gate = OnDemandGate(on_demand.get("state_dir") or "/nonexistent",
                                  set(on_demand.get("exclusive") or ()),
                                  still_running=self._replicas_exist)
        self._accounting = Accounting(**accounting) if accounting else None

    async def _replicas_exist(self, model: str) -> bool:
        """Whether Ray Serve still has a replica of `model`'s deployment in any state."""
        def status() -> bool:
            app = serve.get_replica_context().app_name
            deployments = serve.status().applications[app].deployments
            deployment = deployments.get(f"LLMServer:{model}")
            return bool(deployment and any(deployment.replica_states.values()))
        return await asyncio.to_thread(status)

    async def _process_llm_request(self, body, call_method, raw_request=None):
        model = getattr(body, "model", None)
        address = raw_request.client.host if raw_request is not None and \
            raw_request.client else None
        if getattr(body, "stream", False) and hasattr(body, "stream_options") and \
                not (body.stream_options and body.stream_options.include_usage):
            body = type(body).model_validate({**body.model_dump(exclude_unset=True),
                                              "stream_options": {"include_usage": True}})
        try:
            return await self._answer(body, call_method, raw_request, model, address)
        except Degraded as degraded:
            fallback = self._fallbacks.get(model)
            if fallback:
                try:
                    response = await self._answer(
                        body.model_copy(update={"model": fallback}), call_method,
                        raw_request, fallback, address)
                    response.headers[FALLBACK_HEADER] = fallback
                    response.headers[DEGRADED_HEADER] = degraded.reason
                    return response
                except Degraded:
                    pass
            return JSONResponse(
                status_code=503, headers={"Retry-After": str(self._retry_after_s),
                                          DEGRADED_HEADER: degraded.reason},
                content={"error": {
                    "message": f"model {model!r} is not available now ("
                               + ("too many requests queued for it" if degraded.reason ==
                                  "queue-full" else "loading, or it could not be loaded")
                               + f"); retry after {self._retry_after_s} s",
                    "type": "ServiceUnavailable", "code": 503}})

    async def _answer(self, body, call_method, raw_request, model, address):
        """One model's answer; the in-flight count and the gate are held until its last
        byte is sent (a stream's end, or the client going away)."""
        if self._in_flight.get(model, 0) >= self._max_queued:
            raise Degraded("queue-full")
        self._in_flight[model] = self._in_flight.get(model, 0) + 1
        entered = released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._in_flight[model] -= 1
                if entered:
                    await self._gate.leave(model)

        try:
            began = asyncio.get_running_loop().time()
            try:
                await self._gate.enter(model, self._load_wait_s)
                entered = True
                left = self._load_wait_s - (asyncio.get_running_loop().time() - began)
                response = await asyncio.wait_for(
                    super()._process_llm_request(body, call_method, raw_request),
                    max(left, 1.0))
            except TimeoutError:
                raise Degraded("unavailable") from None
            return await self._charged(response, model, address, body, release)
        except BaseException:
            await release()
            raise

    async def _charged(self, response, model, address, body, release):
        request_bytes = len(body.model_dump_json())
        if isinstance(response, StreamingResponse):
            tap = self._accounting.tap(model, True) if self._accounting else None
            iterator = response.body_iterator

            async def tapped():
                try:
                    async for chunk in iterator:
                        if tap is not None:
                            tap(chunk.encode() if isinstance(chunk, str) else chunk)
                        yield chunk
                finally:
                    await release()
                    if tap is not None:
                        tap(b"")
                        self._accounting.charge(address, model, tap, request_bytes)

            response.body_iterator = tapped()
            return response
        await release()
        if self._accounting is not None and response.status_code == 200:
            tap = self._accounting.tap(model, False)
            tap(bytes(response.body))
            self._accounting.charge(address, model, tap, request_bytes)
        return response
