"""Spend metering on real hosts: LLM API calls from workers, over HTTPS through the
orchestrator's proxy to the lab's LLM fixture, charged in the central ledger to the
micro-dollar of the usage the clients received; a spent day refused in each provider's
shape while other traffic flows, the real agent CLIs stopping on it; the daily report."""

from __future__ import annotations

import json
import shlex
import time
import uuid
from decimal import ROUND_CEILING, Decimal

import pytest
import yaml

from infra.inventory_file import group_defaults
from tasks import metering
from testing.deploy import Pyinfra
from testing.figures import record

pytestmark = pytest.mark.lab
ORCH = group_defaults("orchestrator")
WORKERS = group_defaults("workers")
LEDGER = f"{ORCH['data_root']}/{metering.LEDGER}"
VENV = f"{ORCH['install_dir']}/venv"
RUN = uuid.uuid4().hex[:8]
PRICES = {"anthropic": ("claude-sonnet-4-lab", Decimal(3), Decimal(15)),
          "openai": ("gpt-4o-lab", Decimal("2.50"), Decimal(10))}

# Run on a worker as the agent: N calls of each kind; prints, per call, what the client
# itself received: status, and the usage the answer carried (JSON or the SSE stream).
CLIENT = r'''
import json, sys, urllib.request, urllib.error
base, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kinds = [("anthropic", "/messages", False), ("anthropic", "/messages", True),
         ("openai", "/chat/completions", False), ("openai", "/chat/completions", True)]
models = {"anthropic": "claude-sonnet-4-lab", "openai": "gpt-4o-lab"}
out = []
for i in range(n):
    for provider, path, stream in kinds:
        body = {"model": models[provider], "max_tokens": 64, "stream": stream, "messages": [
            {"role": "user", "content": f"Create the file {tag}-{i}.txt containing exactly: x"}]}
        request = urllib.request.Request(base + path, json.dumps(body).encode(), {
            "content-type": "application/json", "x-api-key": "k", "authorization": "Bearer k",
            "anthropic-version": "2023-06-01"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, raw = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            out.append({"provider": provider, "status": error.code,
                        "body": json.loads(error.read() or b"{}"),
                        "retry": error.headers.get("x-should-retry")})
            continue
        if not stream:
            usage = json.loads(raw)["usage"]
        else:
            events = [json.loads(l[6:]) for l in raw.splitlines() if l.startswith("data: {")]
            if provider == "anthropic":
                start = [e for e in events if e["type"] == "message_start"][0]
                last = [e for e in events if e["type"] == "message_delta"][-1]
                usage = {"input_tokens": start["message"]["usage"]["input_tokens"],
                         "output_tokens": last["usage"]["output_tokens"]}
            else:
                usage = [e for e in events if e.get("usage")][-1]["usage"]
        out.append({"provider": provider, "status": status,
                    "in": usage.get("input_tokens", usage.get("prompt_tokens")),
                    "out": usage.get("output_tokens", usage.get("completion_tokens"))})
print(json.dumps(out))
'''


def calls_from(ssh, lab, host: str, n: int, tag: str) -> list[dict]:
    base = f"https://{lab.internet.uplink_addr}/v1"
    command = (f"runuser -u {WORKERS['service_user']} -- python3 -c {shlex.quote(CLIENT)} "
               f"{base} {n} {tag}")
    return json.loads(ssh(host, command).stdout.strip().splitlines()[-1])


def central_charges(ssh) -> list[dict]:
    code = ("import json; from autocode.budget import BudgetLedger; "
            f"print(json.dumps(BudgetLedger({LEDGER!r}).charges()))")
    return json.loads(ssh("orchestrator", f"{VENV}/bin/python -c {shlex.quote(code)}").stdout)


def cost_micros(call: dict) -> int:
    _, price_in, price_out = PRICES[call["provider"]]
    usd = (call["in"] * price_in + call["out"] * price_out) / 1_000_000
    return int((usd * 1_000_000).to_integral_value(rounding=ROUND_CEILING))


def spend_the_day(ssh, lab, host: str) -> None:
    """Calls from `host` until the proxy refuses one: its day is then spent."""
    for n in range(20):
        if any(c["status"] != 200 for c in calls_from(ssh, lab, host, 1, f"spend-{n}-{RUN}")):
            return
    raise AssertionError(f"{host}: never refused; is its budget the tight one?")


def wait_for_charges(ssh, want: int, keys_before: set, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        new = [c for c in central_charges(ssh) if c["idempotency_key"] not in keys_before]
        if len(new) >= want or time.monotonic() > deadline:
            return new
        time.sleep(0.5)


def test_every_call_is_charged_to_its_worker_exactly(lab, ssh, converged):
    before = {c["idempotency_key"] for c in central_charges(ssh)}
    calls = {host: calls_from(ssh, lab, host, 3, f"{host}-{RUN}")
             for host in ("worker1", "worker3")}
    for made in calls.values():
        assert [c["status"] for c in made] == [200] * 12, made
    new = wait_for_charges(ssh, 24, before)
    assert len(new) == 24, new
    for host, made in calls.items():
        mine = [c for c in new if c["worker_id"] == host]
        assert len(mine) == 12  # two workers' spends never mix
        charged = sum(int(Decimal(c["amount_usd"]) * 1_000_000) for c in mine)
        assert charged == sum(cost_micros(c) for c in made), (host, mine)
        assert all(c["source"] == "metered" and not c["detail"]["estimated"]
                   and not c["detail"]["unknown_model"] for c in mine)
    total = sum(Decimal(c["amount_usd"]) for c in new)
    record("metered: 24 calls, 2 workers, ledger vs clients' usage",
           f"{total} USD, exact to the micro-dollar")


@pytest.fixture(scope="module")
def tight(lab, pyinfra, tmp_path_factory):
    """worker2 and worker4 with a day's budget too small for any call: the worst case of the
    smallest call (64 output tokens) is 0.0008 USD for the openai model and 0.0011 for the
    anthropic one, so the proxy refuses every call before it goes upstream; back to the
    lab's budgets after."""
    doc = yaml.safe_load(lab.inventory_file.read_text())
    doc["data"]["vault_keys_file"] = str(lab.inventory_file.with_name(
        f"{lab.inventory_file.stem}.vault-keys.json"))
    for index in (1, 3):
        doc["workers"][index]["daily_budget_usd"] = 0.0005
    inventory = tmp_path_factory.mktemp("metering") / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    result, _ = Pyinfra(inventory).run()
    assert result["results"]["totals"]["error"] == 0
    yield
    pyinfra.run()


def test_a_spent_day_is_refused_in_the_providers_shape_and_other_traffic_flows(
        lab, ssh, converged, tight):
    spend_the_day(ssh, lab, "worker4")
    refused = calls_from(ssh, lab, "worker4", 1, f"refused-{RUN}")
    anthropic = [c for c in refused if c["provider"] == "anthropic"]
    openai = [c for c in refused if c["provider"] == "openai"]
    assert {c["status"] for c in anthropic} == {400} and {c["status"] for c in openai} == {429}
    error = anthropic[0]["body"]
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "daily budget of 0.0005 USD for worker worker4 is spent" in \
        error["error"]["message"]
    assert openai[0]["body"]["error"]["code"] == "insufficient_quota"
    assert anthropic[0]["retry"] == "false"
    plain = ssh("worker4", f"runuser -u {WORKERS['service_user']} -- curl -sS -o /dev/null "
                f"-w '%{{http_code}}' https://{lab.internet.uplink_addr}/after-the-cap")
    assert plain.stdout == "200"
    # Another worker's calls are not affected.
    assert {c["status"] for c in calls_from(ssh, lab, "worker3", 1, f"other-{RUN}")} == {200}


@pytest.mark.parametrize("host", ["worker4", "worker2"])
def test_the_real_agent_cli_stops_cleanly_on_the_refusal(lab, ssh, converged, tight, host):
    from tests.lab.test_workers import AGENT_OF, submit, wait_for_result
    task_id = f"capped-{AGENT_OF[host]}-{RUN}"
    spend_the_day(ssh, lab, host)
    started = time.monotonic()
    submit(ssh, host, {"id": task_id,
                       "prompt": "Create the file capped.txt containing exactly: no"})
    result = wait_for_result(ssh, host, task_id, timeout=240)["result"]
    elapsed = time.monotonic() - started
    assert result["status"] == "failed", result
    text = json.dumps(result)
    assert "budget" in text and ("insufficient_quota" in text or "is spent" in text), text
    assert ssh(host, f"test -e /mnt/data/autocode/worker-artifacts/{host}/projects/"
               f"{task_id}/capped.txt", check=False).returncode != 0
    record(f"capped {AGENT_OF[host]} stopped after", f"{elapsed:.1f} s")


def test_the_daily_report_matches_the_ledger(ssh, converged):
    charges = [c for c in central_charges(ssh) if c["source"] == "metered"]
    out = ssh("orchestrator", f"{VENV}/bin/autocode-budget report --data-root "
              f"{ORCH['data_root']} --timezone {ORCH['timezone']}")
    report = json.loads(out.stdout)
    assert Decimal(report["total_metered_usd"]) == sum(Decimal(c["amount_usd"])
                                                       for c in charges)
    by_worker = {w["worker"]: Decimal(w["metered_usd"]) for w in report["workers"]}
    for worker in {c["worker_id"] for c in charges}:
        assert by_worker[worker] == sum(Decimal(c["amount_usd"]) for c in charges
                                        if c["worker_id"] == worker)
    assert sum(g["requests"] for g in report["by_model"]) == len(charges)
    for path in report["files"]:
        ssh("orchestrator", f"test -s {path}")
    record("spend report", f"{len(report['workers'])} workers, {len(charges)} calls, "
           f"{report['total_metered_usd']} USD")
