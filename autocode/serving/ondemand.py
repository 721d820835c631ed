"""On-demand models one at a time, where the GPU plan says they do not fit together.

Two halves that meet in a small state folder (`state_dir`, on the one host Ray runs on):

- `OnDemandGate`, in the ingress: a request for an on-demand model is held (not sent to
  its deployment, so Ray Serve does not start loading it) while another on-demand model
  of the same group is in use or still loaded. It writes the model it waits for to
  `<state_dir>/wanted`; it sends the request on once the other model has no request in
  flight and its policy reports it unloaded (`<state_dir>/replicas/<name>` says 0).
- `OnDemandPolicy`, Ray Serve's custom autoscaling policy of each on-demand deployment
  (run by the Serve controller): 1 replica while requests come, 0 after `idle_s` without
  any, and 0 at once, without waiting out the idle time, when another model is wanted and
  this one has nothing in flight. It reports its replica count for the gate.

Why a gate in the ingress and not only a policy: Ray Serve 2.60 starts a replica of a
deployment that has none the moment a request reaches it (the "cold start" path bypasses
custom policies), so the only way to keep a second model from loading is to not send it
the request yet.

Nothing here imports Ray: the unit tests drive both halves directly.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

WANTED = "wanted"
REPLICAS = "replicas"
LAST_BUSY = "autocode_last_busy"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class OnDemandPolicy:
    """`autoscaling_config.policy` of one on-demand model's deployment (a class policy:
    Ray makes one per deployment with `policy_kwargs` and calls it each control loop)."""

    def __init__(self, state_dir: str, model: str, idle_s: float, exclusive: bool = True):
        self.state_dir = Path(state_dir)
        self.model = model
        self.idle_s = float(idle_s)
        self.exclusive = bool(exclusive)
        self._reported: int | None = None

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        state = dict(ctx.policy_state or {})
        now = ctx.current_time or time.time()
        busy = ctx.total_num_requests > 0
        if busy or LAST_BUSY not in state:
            state[LAST_BUSY] = now
        current = ctx.current_num_replicas
        wanted = _read(self.state_dir / WANTED) if self.exclusive else None
        if busy:
            desired = 1
        elif current == 0:
            desired = 0
        elif wanted and wanted != self.model:
            desired = 0  # another model waits for the memory: unload now, idle or not
        elif now - state[LAST_BUSY] >= self.idle_s:
            desired = 0
        else:
            desired = 1
        if current != self._reported:
            _write_atomically(self.state_dir / REPLICAS / self.model, str(current))
            self._reported = current
        return desired, state


class OnDemandGate:
    """In the ingress: which on-demand model of an exclusive group may receive requests.

    `enter(model)` returns once `model` may be sent requests (at once when it is not an
    exclusive on-demand model, or already the one in use); it raises TimeoutError after
    `wait_s`. Every `enter` is paired with one `leave` when the answer has been sent."""

    def __init__(self, state_dir: str | Path, exclusive_models: set[str],
                 poll_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 still_running: Callable[[str], Awaitable[bool]] | None = None):
        """`still_running(model)`: whether any replica of the model exists in any state
        (a stopping one still holds its memory); the ingress asks Ray Serve."""
        self.state_dir = Path(state_dir)
        self.still_running = still_running
        self.exclusive = set(exclusive_models)
        self.poll_s = poll_s
        self.clock = clock
        self.active: str | None = None
        self.in_flight: dict[str, int] = {}
        self._changed = asyncio.Condition()

    async def loaded(self, model: str) -> bool:
        """Whether `model`'s replica may still hold memory: its policy has not said 0, or
        a replica of it is still there (stopping: Ray counts only running ones for the
        policy, and a stopping engine has not freed its memory yet)."""
        if _read(self.state_dir / REPLICAS / model) not in (None, "0"):
            return True
        return bool(self.still_running and await self.still_running(model))

    async def enter(self, model: str, wait_s: float) -> None:
        if model not in self.exclusive:
            return
        deadline = self.clock() + wait_s
        async with self._changed:
            while True:
                if self.active in (None, model):
                    self.active = model
                    self.in_flight[model] = self.in_flight.get(model, 0) + 1
                    return
                other = self.active
                if not self.in_flight.get(other):
                    _write_atomically(self.state_dir / WANTED, model)
                    if not await self.loaded(other):
                        self.active = None  # the other is gone: this one goes next
                        continue
                left = deadline - self.clock()
                if left <= 0:
                    raise TimeoutError(f"{model!r} waits for {other!r} to unload")
                try:
                    # Woken when a request ends; polled for the other's unloading.
                    await asyncio.wait_for(self._changed.wait(), min(self.poll_s, left))
                except TimeoutError:
                    pass

    async def leave(self, model: str) -> None:
        if model not in self.exclusive:
            return
        async with self._changed:
            self.in_flight[model] = max(0, self.in_flight.get(model, 0) - 1)
            self._changed.notify_all()
