"""One reading per host for a whole run (infra/facts.py `reads`, `read_items`): while
nothing has changed on a host, every operation's items come from one fact; after the first
change each operation reads its own again, so nothing is answered from before a change."""

from __future__ import annotations

from pyinfra.api.operation import add_op
from pyinfra.api.state import StateStage
from pyinfra.connectors.util import CommandOutput

from infra.facts import PathStates, UnitStates
from infra.operations import directory, file_content, systemd_unit, unit_removed
from testing.operations import FakeDeploy, fact, path_state

FOLDER = path_state("directory", mode="755")
UNIT_ITEMS = tuple((u, f"/etc/systemd/system/{u}", f"/var/lib/autocode-deploy/units/{u}")
                   for u in ("a.service", "b.service"))


def folder(path):
    return {"path": path, "user": "root", "group": "root", "mode": "755"}


def executing(facts) -> FakeDeploy:
    """A run as `pyinfra -y` makes it: operations added without being run (no change
    check), then executed."""
    deploy = FakeDeploy(facts, stage=StateStage.Execute)
    deploy.state.check_for_changes = False
    return deploy


def readings(deploy, cls):
    return [asked for _, asked in deploy.asked if asked.startswith(f"fact({cls.__name__}")]


def test_operations_on_an_unchanged_host_share_one_reading_of_all_their_items():
    every = ("/srv/a", "/srv/b", "/srv/c")
    deploy = executing({fact(PathStates, paths=every): dict.fromkeys(every, FOLDER)})
    for path in every[1:]:  # added to the plan (and so registered) before the first runs
        add_op(deploy.state, directory, host=deploy.host, **folder(path))
    for path in every:
        assert deploy.run(directory, **folder(path)).commands == []
    assert readings(deploy, PathStates) == [f"fact(PathStates, paths={every!r})"]


def test_after_a_change_each_operation_reads_its_own_items_again():
    deploy = executing({fact(PathStates, paths=("/srv/a", "/srv/b")): {"/srv/b": FOLDER},
                        fact(PathStates, paths=("/srv/b",)): {}})
    add_op(deploy.state, directory, host=deploy.host, **folder("/srv/b"))
    made = deploy.run(directory, **folder("/srv/a"))
    assert made.commands == ["install -d -o root -g root -m 755 /srv/a"]
    made.meta.set_complete(True, made.commands, CommandOutput([]))
    # /srv/b was there when read for both; read again, it is gone (say, the change took it).
    assert deploy.run(directory, **folder("/srv/b")).commands == [
        "install -d -o root -g root -m 755 /srv/b"]
    assert readings(deploy, PathStates)[-1] == "fact(PathStates, paths=('/srv/b',))"


def test_units_share_one_reading_and_a_plan_reads_as_before():
    state = {"unit": None, "enabled": "enabled", "active": "active", "started": None}
    deploy = executing({fact(UnitStates, units=UNIT_ITEMS): {"a.service": state,
                                                             "b.service": state}})
    add_op(deploy.state, unit_removed, host=deploy.host, unit="b.service")
    deploy.run(systemd_unit, unit="a.service", running=False, enabled=True)
    deploy.run(unit_removed, unit="b.service")
    assert readings(deploy, UnitStates) == [f"fact(UnitStates, units={UNIT_ITEMS!r})"]
    # A plan (--dry) runs each operation as it is added, before the later ones registered:
    # each reads its own items, as it always did.
    plan = FakeDeploy({fact(PathStates, paths=("/srv/a",)): {},
                       fact(PathStates, paths=("/srv/b",)): {}})
    plan.run(file_content, path="/srv/a", text="x")
    plan.run(file_content, path="/srv/b", text="y")
    assert readings(plan, PathStates) == ["fact(PathStates, paths=('/srv/a',))",
                                          "fact(PathStates, paths=('/srv/b',))"]
