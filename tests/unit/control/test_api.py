"""autocode-control for real: its process, its two TLS listeners, the clients of both sides."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import requests

from autocode.control.client import ControlError
from tests.unit.control.conftest import TOKEN, WORKERS, write_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"
URL_SPEC = {"prompt": "Fix the failing test", "repo": "https://git.example.org/app.git",
            "agent_type": "claude-code"}


@pytest.fixture(scope="module")
def shared_control(tmp_path_factory):
    service = write_config(tmp_path_factory.mktemp("control")).start()
    service.repo("app")
    yield service
    service.kill()


def plain_session(control) -> requests.Session:
    """requests without our client: trust_env off, or REQUESTS_CA_BUNDLE beats `verify`."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(control.tls["ca"])
    return session


def refused(call, status: int, field: str | None = None, match: str = "") -> ControlError:
    with pytest.raises(ControlError) as caught:
        call()
    assert caught.value.status == status, caught.value
    if field is not None:
        assert caught.value.field == field, caught.value
    assert match in str(caught.value)
    return caught.value


def test_a_task_goes_from_submit_to_claim_to_its_end(control):
    operator, worker = control.operator(), control.worker("worker1")
    control.repo("app")
    task = operator.submit({**URL_SPEC, "repo": "app", "base_commit": COMMIT, "budget_usd": 1.5})
    assert task["status"] == "queued" and task["spec"]["budget_usd"] == "1.5"
    claimed = worker.claim()
    assert claimed["id"] == task["id"] and claimed["spec"]["base_commit"] == COMMIT
    assert operator.get(task["id"])["worker"] == "worker1"
    worker.start(task["id"])
    assert worker.log(task["id"], 0, b"working\n") == 8
    assert operator.log(task["id"]) == (b"working\n", 8, "running")
    assert worker.heartbeat(task["id"])["cancel"] is False
    worker.finish(task["id"], "succeeded", result={"result_commit": "f" * 40})
    record = operator.get(task["id"])
    assert record["status"] == "succeeded" and record["result"]["result_commit"] == "f" * 40
    assert [t["id"] for t in operator.list(status=["succeeded"])] == [task["id"]]
    assert worker.claim() is None


def test_a_waiting_claim_is_answered_when_a_task_arrives(control):
    operator, worker = control.operator(), control.worker("worker3")
    got = []
    waiter = threading.Thread(target=lambda: got.append(worker.claim(wait_s=5)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.5)
    task = operator.submit({**URL_SPEC, "agent_type": "aider", "budget_usd": 1})
    waiter.join(10)
    assert got and got[0]["id"] == task["id"]
    print(f"\nsubmit to claim: {time.monotonic() - started - 0.5:.3f} s")


def test_cancel_reaches_the_worker_and_retry_makes_a_new_task(control):
    operator, worker = control.operator(), control.worker("worker2")
    task = operator.submit({**URL_SPEC, "worker": "worker2"})
    worker.claim()
    worker.start(task["id"])
    assert operator.cancel(task["id"])["cancel_requested"] is True
    assert worker.heartbeat(task["id"])["cancel"] is True
    worker.finish(task["id"], "cancelled", "cancelled by an operator")
    refused(lambda: operator.cancel(task["id"]), 409, match="already ended")
    again = operator.retry(task["id"])
    assert again["id"] != task["id"] and again["retry_of"] == task["id"]
    assert again["status"] == "queued" and again["spec"] == task["spec"]


def test_a_lease_that_runs_out_marks_the_task_interrupted(control):
    operator, worker = control.operator(), control.worker("worker1")
    task = operator.submit(URL_SPEC)
    worker.claim()
    worker.start(task["id"])
    deadline = time.monotonic() + 15  # lease 5 s, checked every 1.25 s
    while operator.get(task["id"])["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.25)
    record = operator.get(task["id"])
    assert record["status"] == "interrupted" and "lease" in record["reason"]
    refused(lambda: worker.finish(task["id"], "succeeded"), 409, match="interrupted")
    assert worker.claim() is None  # never re-run by itself


def test_a_task_survives_kill_9_of_the_service_and_its_worker_still_reports(control):
    operator, worker = control.operator(), control.worker("worker1")
    running = operator.submit({**URL_SPEC, "worker": "worker2"})
    queued = operator.submit(URL_SPEC)
    other = control.worker("worker2")
    assert other.claim()["id"] == running["id"]
    other.start(running["id"])
    control.kill()
    time.sleep(6)  # longer than the lease: the service was down, not the worker
    control.start()
    other.heartbeat(running["id"])
    other.finish(running["id"], "succeeded")
    assert operator.get(running["id"])["status"] == "succeeded"
    assert worker.claim()["id"] == queued["id"]


@pytest.mark.parametrize("spec, field, match", [
    ({"prompt": "  "}, "prompt", "empty"),
    ({"agent_type": "cursor"}, "agent_type", "no worker runs agent type 'cursor'"),
    ({"agent_type": None, "worker": "worker9"}, "worker", "worker1, worker2, worker3"),
    ({"agent_type": "aider", "worker": "worker1"}, "agent_type", "runs claude-code"),
    ({"agent_type": None}, "agent_type", "neither"),
    ({"budget_usd": 0}, "budget_usd", "not a positive amount"),
    ({"budget_usd": -1}, "budget_usd", "not a positive amount"),
    ({"budget_usd": "NaN"}, "budget_usd", "finite number; a positive amount"),
    ({"budget_usd": "Infinity"}, "budget_usd", "finite number; a positive amount"),
    ({"budget_usd": True}, "budget_usd", "a positive amount"),
    ({"budget_usd": 11}, "budget_usd", "over the daily budget"),
    ({"agent_type": "aider", "budget_usd": 4}, "budget_usd", "(3 USD)"),
    ({"repo": "../etc"}, "repo", "neither"),
    ({"repo": "http://git.example.org/app.git"}, "repo", "neither"),
    ({"repo": "app"}, "base_commit", "full commit"),
    ({"repo": "absent", "base_commit": COMMIT}, "repo", "no repository 'absent'"),
    ({"base_commit": "HEAD"}, "base_commit", "full commit id"),
    ({"colour": "blue"}, "colour", "Extra inputs"),
    ({"timeout_s": 0}, "timeout_s", "greater than or equal to 1"),
])
def test_bad_input_is_refused_naming_the_field_and_queues_nothing(shared_control, spec, field,
                                                                  match):
    control = shared_control  # nothing is queued by any of them, so one service serves all
    operator = control.operator()
    error = refused(lambda: operator.submit({**URL_SPEC, **spec}), 422, field, match)
    assert error.fix or error.status == 422
    assert operator.list() == []


def test_malformed_and_oversize_bodies_are_refused(control):
    session = plain_session(control)
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    response = session.post(control.operator_url + "/v1/tasks", data=b"{not json",
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "the body is not valid JSON"
    big = json.dumps({**URL_SPEC, "prompt": "x" * 70000})
    response = session.post(control.operator_url + "/v1/tasks", data=big,
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "65536" in response.json()["error"]
    # The same without a length: streamed in chunks.
    response = session.post(control.operator_url + "/v1/tasks",
                            data=(big[i:i + 8192].encode() for i in range(0, len(big), 8192)),
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert control.operator().list() == []


def test_the_operator_api_wants_the_token_and_a_management_network(control):
    error = refused(lambda: control.operator(token="wrong").list(), 401, "Authorization",
                    "autocode-control.token")
    assert "Bearer" in error.fix
    refused(lambda: control.operator(token="").list(), 401)
    refused(lambda: control.operator(source="127.0.0.2").list(), 403, "management_networks")
    refused(lambda: control.operator().get("t-000000-0000000000"), 404, "id")
    # Without the token nothing of a task leaks, not even whether its id exists.
    refused(lambda: control.operator(token="wrong").get("t-000000-0000000000"), 401)


def test_a_worker_is_its_certificate_and_its_address_together(control):
    operator = control.operator()
    task = operator.submit({**URL_SPEC, "worker": "worker1"})
    # worker1's certificate from worker2's address; a stranger CA's worker1; no certificate.
    refused(lambda: control.worker("worker1", source="127.0.0.3").claim(), 403,
            "client certificate")
    # Nor from elsewhere claiming worker1's address in a header.
    spoofing = control.worker("worker1", source="127.0.0.1")
    spoofing.session.headers["X-Forwarded-For"] = "127.0.0.2"
    refused(lambda: spoofing.claim(), 403, "client certificate")
    management = control.operator(source="127.0.0.2")
    management.session.headers["X-Forwarded-For"] = "127.0.0.1"
    refused(lambda: management.list(), 403, "management_networks")
    # (TLS 1.3 sends the refusal of a client certificate after the handshake: a reset.)
    refused(lambda: control.worker("worker1", tls=control.stranger).claim(), 0)
    anonymous = plain_session(control)
    with pytest.raises(requests.exceptions.RequestException):
        anonymous.post(control.worker_url + "/v1/worker/claim")
    # worker2 can neither claim, report on nor write the log of worker1's task.
    worker2 = control.worker("worker2")
    assert worker2.claim() is None
    control.worker("worker1").claim()
    for call in (lambda: worker2.start(task["id"]), lambda: worker2.heartbeat(task["id"]),
                 lambda: worker2.finish(task["id"], "succeeded"),
                 lambda: worker2.log(task["id"], 0, b"x")):
        refused(call, 403, match="not held by worker2")
    # Nor reach the operators' side with its certificate and no token.
    refused(lambda: control.operator(token="", source="127.0.0.3").list(), 403)
    # The worker side has no operator routes at all.
    refused(lambda: control.worker("worker1")._call("GET", "/v1/tasks"), 404)


def test_both_listeners_describe_themselves_in_openapi(control):
    session = plain_session(control)
    paths = session.get(control.operator_url + "/openapi.json").json()["paths"]
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/log",
            "/v1/tasks/{task_id}/cancel", "/v1/tasks/{task_id}/retry"} <= set(paths)
    worker = control.worker("worker1")
    paths = worker._call("GET", "/openapi.json").json()["paths"]
    assert "/v1/worker/claim" in paths and "/v1/tasks" not in paths


def test_bad_configuration_is_reported_whole_before_anything_binds(tmp_path):
    control = write_config(tmp_path, lease_s=1, operator_port=70000, colour="blue",
                           management_networks=["10.0.0.0/33"])
    run = subprocess.run([sys.executable, "-m", "autocode.control.server", "check",
                          "--config", str(control.config_path)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    for expected in ("operator_port", "lease_s", "colour: unknown setting",
                     "management_networks"):
        assert expected in run.stderr, run.stderr


def test_the_proxy_learns_each_workers_task_and_a_spent_task_budget_stops_it(tmp_path):
    """running-tasks.json follows every claim and end; the proxy's over-budget marker for a
    task makes the next heartbeat a cancel and the end refused_budget; the task's record
    carries its metered spend from the proxy's ledger."""
    from autocode.budget import BudgetLedger
    from autocode.control.running import mark_over_budget
    ledger_path = tmp_path / "metered.sqlite3"
    control = write_config(tmp_path, metered_ledger=str(ledger_path)).start()
    try:
        operator, worker = control.operator(), control.worker("worker1")
        running = control.data_root / "control" / "running-tasks.json"
        task = operator.submit({**URL_SPEC, "budget_usd": "0.5"})
        assert json.loads(running.read_text())["workers"] == {}
        worker.claim()
        assert json.loads(running.read_text())["workers"] == {
            "worker1": {"task_id": task["id"], "budget_usd": "0.5"}}
        worker.start(task["id"])
        ledger = BudgetLedger(ledger_path)
        for n, (model, cost) in enumerate((("m-a", "0.1"), ("m-a", "0.2"), ("m-b", "0.15"))):
            ledger.charge(idempotency_key=f"metered:{n}", worker_id="worker1", agent="a",
                          task_id=task["id"], amount_usd=cost, source="metered",
                          detail={"model": model, "input_tokens": 10, "output_tokens": 5})
        ledger.charge(idempotency_key="metered:other", worker_id="worker1", agent="a",
                      task_id="t-other", amount_usd="9", source="metered")
        ledger.close()
        assert worker.heartbeat(task["id"])["cancel"] is False
        mark_over_budget(control.data_root / "control" / "over-budget", task["id"])
        assert worker.heartbeat(task["id"])["cancel"] is True
        worker.finish(task["id"], "cancelled", "cancelled: its process group was killed")
        record = operator.get(task["id"])
        assert record["status"] == "refused_budget"
        assert record["reason"].startswith("its budget of 0.5 USD is spent")
        assert record["metered"]["cost_usd"] == "0.45" and record["metered"]["calls"] == 3
        assert record["metered"]["models"]["m-a"] == {
            "calls": 2, "input_tokens": 20, "output_tokens": 10, "cost_usd": "0.3"}
        assert [r["metered_cost_usd"] for r in operator.list()] == ["0.45"]
        assert json.loads(running.read_text())["workers"] == {}
        from autocode.control.running import TaskTraffic
        summary = TaskTraffic(control.data_root / "control" / "traffic")
        for verdict in ("allowed", "allowed", "blocked"):
            summary.add({"task_id": task["id"], "host": "api.example.org", "verdict": verdict,
                         "reason": "not allowed" if verdict == "blocked" else None,
                         "request_bytes": 10, "response_bytes": 100})
        summary.flush(force=True)
        assert operator.get(task["id"])["hosts"] == {"api.example.org": {
            "requests": 3, "bytes_sent": 30, "bytes_received": 300, "refused": 1,
            "reasons": {"not allowed": 1}}}
    finally:
        control.kill()


def test_twenty_tasks_three_workers_over_the_api_each_runs_once_in_order(control):
    """Workers at their own addresses with their own certificates, claiming at once: every
    task runs once, no worker holds two, and each agent type's tasks are claimed in the order
    they were queued."""
    operator = control.operator()
    ids = {"claude-code": [], "aider": []}
    for n in range(20):
        kind = "aider" if n % 4 == 3 else "claude-code"
        ids[kind].append(operator.submit({**URL_SPEC, "agent_type": kind,
                                          "prompt": f"task {n}"})["id"])
    ran, errors, lock = [], [], threading.Lock()
    holding = {}

    def work(name: str) -> None:
        client = control.worker(name)
        try:
            while (task := client.claim()) is not None:
                with lock:
                    if holding.get(name):
                        errors.append(f"{name} holds two")
                    holding[name] = task["id"]
                    ran.append((name, task["id"]))
                client.start(task["id"])
                client.finish(task["id"], "succeeded")
                with lock:
                    holding[name] = None
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(name,)) for name in WORKERS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(task_id for _, task_id in ran) == sorted(ids["claude-code"] + ids["aider"])
    by_claim = sorted(operator.list(limit=100), key=lambda r: r["claimed_at"])
    for kind, queued in ids.items():
        assert [r["id"] for r in by_claim if r["agent_type"] == kind] == queued
    assert {name for name, t in ran if t in ids["aider"]} == {"worker3"}


def test_a_log_past_its_bound_is_refused_and_the_rest_stays_on_the_worker(tmp_path):
    control = write_config(tmp_path, max_log_bytes=2048).start()
    try:
        task = control.operator().submit(URL_SPEC)
        worker = control.worker("worker1")
        worker.claim()
        assert worker.log(task["id"], 0, b"x" * 2000) == 2000
        refused(lambda: worker.log(task["id"], 2000, b"y" * 100), 413, "log", "max_log_bytes")
        assert control.operator().log(task["id"])[1] == 2000
    finally:
        control.kill()
