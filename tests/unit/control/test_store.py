"""The task store on a real SQLite file: lifecycle, queue order, leases, concurrency."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from autocode.control import store as s
from autocode.control.store import NotYourTask, TaskNotFound, TaskStore, TransitionRefused


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def spec(agent="claude-code", worker=None, prompt="do it"):
    return {"prompt": prompt, "repo": "app", "base_commit": "a" * 40, "agent_type": agent,
            "worker": worker, "budget_usd": "1", "timeout_s": None}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    db = TaskStore(tmp_path / "tasks.sqlite3", lease_s=60, clock=clock)
    yield db
    db.close()


def test_a_task_runs_through_its_lifecycle(store):
    task = store.submit(spec())
    assert task["status"] == s.QUEUED and task["id"].startswith("t-")
    claim = store.claim("worker1", "claude-code")
    assert claim.task_id == task["id"]
    assert store.get(task["id"])["status"] == s.CLAIMED
    assert store.start("worker1", task["id"])["status"] == s.RUNNING
    assert store.heartbeat("worker1", task["id"]) == {"lease_expires_at": pytest.approx(
        store.clock() + 60), "cancel": False}
    ended = store.finish("worker1", task["id"], s.SUCCEEDED, "", {"result_commit": "b" * 40})
    assert ended["status"] == s.SUCCEEDED and ended["result"] == {"result_commit": "b" * 40}
    with pytest.raises(TransitionRefused, match="already ended"):
        store.finish("worker1", task["id"], s.FAILED, "", {})


def test_claims_go_oldest_first_by_agent_type_or_pin_and_one_at_a_time(store, clock):
    first = store.submit(spec())
    clock.now += 1
    aider = store.submit(spec(agent="aider"))
    pinned = store.submit(spec(worker="worker2"))
    second = store.submit(spec())
    assert store.claim("worker1", "claude-code").task_id == first["id"]
    assert store.claim("worker1", "claude-code") is None  # holds one already
    assert store.claim("worker2", "claude-code").task_id == pinned["id"]
    assert store.claim("worker3", "claude-code").task_id == second["id"]
    assert store.claim("worker4", "claude-code") is None
    assert store.claim("worker5", "aider").task_id == aider["id"]


def test_a_lease_that_runs_out_interrupts_the_task_and_nothing_reruns_it(store, clock):
    task = store.submit(spec())
    store.claim("worker1", "claude-code")
    store.start("worker1", task["id"])
    clock.now += 59
    store.heartbeat("worker1", task["id"])
    clock.now += 61
    assert store.expire_leases() == [task["id"]]
    record = store.get(task["id"])
    assert record["status"] == s.INTERRUPTED and "not re-run" in record["reason"]
    assert store.claim("worker2", "claude-code") is None
    with pytest.raises(TransitionRefused, match="interrupted"):
        store.heartbeat("worker1", task["id"])
    retried = store.retry(task["id"])
    assert retried["retry_of"] == task["id"] and retried["spec"] == record["spec"]
    assert store.claim("worker2", "claude-code").task_id == retried["id"]


def test_leases_start_again_when_the_service_restarts(tmp_path, clock):
    path = tmp_path / "tasks.sqlite3"
    first = TaskStore(path, lease_s=60, clock=clock)
    task = first.submit(spec())
    first.claim("worker1", "claude-code")
    first.close()
    clock.now += 300  # the service was down for five minutes
    again = TaskStore(path, lease_s=60, clock=clock)
    assert again.extend_leases() == 1
    assert again.expire_leases() == []
    assert again.start("worker1", task["id"])["status"] == s.RUNNING
    again.close()


def test_cancel_queued_at_once_running_by_request_ended_refused(store):
    queued = store.submit(spec())
    assert store.cancel(queued["id"])["status"] == s.CANCELLED
    running = store.submit(spec())
    store.claim("worker1", "claude-code")
    store.start("worker1", running["id"])
    assert store.cancel(running["id"])["cancel_requested"] is True
    assert store.heartbeat("worker1", running["id"])["cancel"] is True
    store.finish("worker1", running["id"], s.CANCELLED, "cancelled by an operator", {})
    with pytest.raises(TransitionRefused, match="already ended"):
        store.cancel(running["id"])
    with pytest.raises(TransitionRefused, match="only an ended task"):
        store.retry(store.submit(spec())["id"])


def test_another_workers_task_and_an_unknown_id_answer_alike(store):
    task = store.submit(spec())
    store.claim("worker1", "claude-code")
    for worker, task_id in (("worker2", task["id"]), ("worker1", "t-000000-0000000000")):
        for call in (lambda w, t: store.start(w, t), lambda w, t: store.heartbeat(w, t),
                     lambda w, t: store.finish(w, t, s.SUCCEEDED, "", {}),
                     lambda w, t: store.append_log(w, t, 0, b"x")):
            with pytest.raises(NotYourTask, match="is not held by"):
                call(worker, task_id)
    with pytest.raises(TaskNotFound):
        store.get("t-000000-0000000000")


def test_the_log_appends_in_order_takes_a_resent_chunk_once_and_refuses_a_gap(store):
    task = store.submit(spec())
    store.claim("worker1", "claude-code")
    assert store.append_log("worker1", task["id"], 0, b"hello ") == 6
    assert store.append_log("worker1", task["id"], 0, b"hello ") == 6  # a retried request
    assert store.append_log("worker1", task["id"], 6, b"world\n") == 12
    with pytest.raises(TransitionRefused, match="starts at 20"):
        store.append_log("worker1", task["id"], 20, b"?")
    assert store.read_log(task["id"]) == (b"hello world\n", 12)
    assert store.read_log(task["id"], 8) == (b"rld\n", 12)
    assert store.read_log(task["id"], 12) == (b"", 12)


def test_twenty_tasks_four_workers_claiming_at_once_each_runs_once(tmp_path):
    db = TaskStore(tmp_path / "tasks.sqlite3", lease_s=60)
    ids = [db.submit(spec(prompt=f"task {n}"))["id"] for n in range(20)]
    ran: list[tuple[str, str]] = []
    running: Counter = Counter()
    overlap = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        while True:
            claim = db.wait_for_claim(worker, "claude-code", 0.2)
            if claim is None:
                return
            with lock:
                running[worker] += 1
                overlap.append(running[worker] > 1)
                ran.append((worker, claim.task_id))
            db.start(worker, claim.task_id)
            db.finish(worker, claim.task_id, s.SUCCEEDED, "", {})
            with lock:
                running[worker] -= 1

    threads = [threading.Thread(target=work, args=(f"worker{n}",)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(task_id for _, task_id in ran) == sorted(ids)  # each once, none lost
    assert not any(overlap)
    # Claimed in submission order: no task claimed before one queued ahead of it.
    claimed_at = {r["id"]: r["claimed_at"] for r in db.list(limit=100)}
    times = [claimed_at[task_id] for task_id in ids]
    assert times == sorted(times)
    db.close()


def test_a_waiting_claim_wakes_when_a_task_is_queued(store):
    got = []
    waiter = threading.Thread(target=lambda: got.append(
        store.wait_for_claim("worker1", "claude-code", 10)))
    waiter.start()
    threading.Event().wait(0.2)
    task = store.submit(spec())
    waiter.join(5)
    assert got and got[0].task_id == task["id"]
