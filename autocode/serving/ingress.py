"""The OpenAI ingress with graceful degradation: a request whose model does not answer within
`load_wait_s` (an on-demand model still loading, or one that failed to load and that Ray
Serve keeps retrying) gets 503 with Retry-After, or, when the model has a fallback, the
fallback's answer with `X-Autocode-Fallback: <model>` saying so. Other models are not
touched: each is its own deployment, and a failing one only fails its own requests.

Built on ray.serve.llm's OpenAiIngress (Ray 2.60), through its documented
`ingress_cls_config`; `_process_llm_request` is that class's own step for completions and
chat, so a Ray upgrade must re-run tests/unit/serving/test_serving_cpu.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import JSONResponse
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress

FALLBACK_HEADER = "X-Autocode-Fallback"


class AutocodeIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, load_wait_s: float = 300.0,
                 retry_after_s: int = 30, fallbacks: dict[str, str] | None = None,
                 **kwargs: Any):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self._load_wait_s = float(load_wait_s)
        self._retry_after_s = int(retry_after_s)
        self._fallbacks = dict(fallbacks or {})

    async def _process_llm_request(self, body, call_method, raw_request=None):
        model = getattr(body, "model", None)
        try:
            return await asyncio.wait_for(
                super()._process_llm_request(body, call_method, raw_request),
                self._load_wait_s)
        except TimeoutError:
            fallback = self._fallbacks.get(model)
        if fallback:
            try:
                response = await asyncio.wait_for(super()._process_llm_request(
                    body.model_copy(update={"model": fallback}), call_method, raw_request),
                    self._load_wait_s)
                response.headers[FALLBACK_HEADER] = fallback
                return response
            except TimeoutError:
                pass
        return JSONResponse(
            status_code=503, headers={"Retry-After": str(self._retry_after_s)},
            content={"error": {
                "message": f"model {model!r} is not available now (loading, or it could not "
                           f"be loaded); retry after {self._retry_after_s} s",
                "type": "ServiceUnavailable", "code": 503}})
