"""The seed's "Ray Serve Deployment": `ModelService`, load-balanced over the GPUs with one
replica per GPU (2 replicas x 1 GPU on 2 x A5000), `async generate(prompt, max_tokens) ->
str`, a thin class over the same vLLM engine the OpenAI app runs. For models that fit one
GPU (tensor_parallel_size 1); the OpenAI-compatible app (app.py) is what workers use.

    from autocode.serving.model_service import model_service
    handle = serve.run(model_service("qwen-2.5-coder-14b", "/mnt/.../weights", replicas=2,
                                     engine_kwargs={"max_model_len": 16384,
                                                    "gpu_memory_utilization": 0.9}))
    text = await handle.generate.remote("def fib(n):", 64)

Imports Ray and vLLM: only in the serving venv.
"""

from __future__ import annotations

import uuid
from typing import Any

from ray import serve


@serve.deployment(num_replicas=2, ray_actor_options={"num_gpus": 1})
class ModelService:
    def __init__(self, model_name: str, model_path: str,
                 engine_kwargs: dict[str, Any] | None = None):
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.model_name = model_name
        args = AsyncEngineArgs(model=model_path, served_model_name=[model_name],
                               **(engine_kwargs or {}))
        self.engine = AsyncLLMEngine.from_engine_args(args)

    async def generate(self, prompt: str, max_tokens: int = 256, **sampling: Any) -> str:
        """The seed's call; `sampling`: any other vLLM SamplingParams (temperature, ...)."""
        from vllm import SamplingParams

        final = None
        params = SamplingParams(max_tokens=max_tokens, **sampling)
        async for output in self.engine.generate(prompt, params,
                                                 request_id=uuid.uuid4().hex):
            final = output
        return final.outputs[0].text if final is not None else ""

    def replica(self) -> str:
        """Which replica answered (tests: both take requests)."""
        return serve.get_replica_context().replica_id.unique_id


def model_service(model_name: str, model_path: str, replicas: int = 2, gpus: bool = True,
                  engine_kwargs: dict[str, Any] | None = None):
    """The bound deployment: `replicas` x one GPU each, or CPU only (`gpus` False)."""
    options: dict[str, Any] = {"num_replicas": replicas}
    if not gpus:
        options["ray_actor_options"] = {"num_gpus": 0, "num_cpus": 1}
    return ModelService.options(**options).bind(model_name, model_path, engine_kwargs)
