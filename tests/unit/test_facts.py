"""The facts' shell commands, run by a real /bin/sh on real files here, and parsed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from infra.facts import Accounts, FileText, FolderState, PathStates, UnitState


def run_fact(fact_cls, **kwargs):
    fact = fact_cls()
    command = fact.command(**kwargs)
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    return fact.process(lines) if lines else (fact.default() if hasattr(fact, "default")
                                               else None)


def test_path_states_of_a_folder_a_file_a_link_and_a_missing_path(tmp_path):
    folder = tmp_path / "a dir with 'quotes' $HOME"
    folder.mkdir(mode=0o750)
    os.chmod(folder, 0o750)
    file = tmp_path / "f.txt"
    file.write_text("hello\n")
    os.chmod(file, 0o640)
    link = tmp_path / "l"
    link.symlink_to(file)
    missing = tmp_path / "nope"
    states = run_fact(PathStates, paths=(str(folder), str(file), str(link), str(missing)))
    assert states[str(folder)]["type"] == "directory"
    assert states[str(folder)]["mode"] == "750"
    assert states[str(file)] == {
        "type": "file", "user": "root" if os.geteuid() == 0 else states[str(file)]["user"],
        "group": states[str(file)]["group"], "mode": "640",
        "sha256": hashlib.sha256(b"hello\n").hexdigest(), "target": None}
    assert states[str(link)]["type"] == "link" and states[str(link)]["target"] == str(file)
    assert states[str(missing)] is None


def test_path_states_of_an_empty_file_has_its_digest(tmp_path):
    empty = tmp_path / "empty"
    empty.touch()
    states = run_fact(PathStates, paths=(str(empty),))
    assert states[str(empty)]["sha256"] == hashlib.sha256(b"").hexdigest()


def test_folder_state_lists_entries_including_hidden_ones(tmp_path):
    (tmp_path / "a.crt").write_text("A")
    (tmp_path / ".hidden").write_text("H")
    (tmp_path / "sub").mkdir()
    state = run_fact(FolderState, path=str(tmp_path))
    assert state["folder"]["type"] == "directory"
    assert set(state["entries"]) == {"a.crt", ".hidden", "sub"}
    assert state["entries"]["a.crt"]["sha256"] == hashlib.sha256(b"A").hexdigest()
    assert state["entries"]["sub"]["type"] == "directory"


def test_folder_state_of_a_missing_or_empty_folder(tmp_path):
    assert run_fact(FolderState, path=str(tmp_path / "none")) == {"folder": None,
                                                                 "entries": {}}
    state = run_fact(FolderState, path=str(tmp_path))
    assert state["folder"] is not None and state["entries"] == {}


def test_file_text_quotes_its_path(tmp_path):
    path = tmp_path / "it's; rm -rf x"
    path.write_text("content\n")
    assert run_fact(FileText, path=str(path)) == "content\n"


def test_unit_state_reads_unit_file_and_marker(tmp_path):
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\n")
    marker = tmp_path / "marker"
    marker.write_text("abc\n")
    state = run_fact(UnitState, unit="autocode-no-such.service", path=str(unit),
                     marker=str(marker))
    assert state["unit"] == hashlib.sha256(b"[Service]\n").hexdigest()
    assert state["started"] == "abc"
    assert state["active"] != "active"


@pytest.mark.skipif(os.geteuid() != 0, reason="reads root's account")
def test_accounts_fact_reads_users_groups_and_primary_group():
    state = run_fact(Accounts, names=("root", "autocode-surely-missing"))
    assert state["users"]["root"]["group"] == "root"
    assert state["users"]["root"]["home"] == "/root"
    assert "root" in state["groups"]
    assert "autocode-surely-missing" not in state["users"]


class _Host:
    """Just what fact_once touches of a pyinfra Host: its name, the run's state, get_fact."""

    def __init__(self, name: str, state, readings: dict):
        self.name, self.state, self.readings, self.calls = name, state, readings, 0

    def get_fact(self, cls, **kwargs):
        self.calls += 1
        return self.readings[self.name]


def test_fact_once_keeps_each_hosts_reading_apart():
    """Two hosts asking the same fact with the same arguments (the same rules file path on
    orchestrator and workers) each get their own reading, read once per stage."""
    from types import SimpleNamespace

    from infra.facts import fact_once

    state = SimpleNamespace(current_stage="prepare")
    readings = {"orchestrator": {"/x": "orchestrator's"}, "worker1": {"/x": "worker1's"}}
    orch, worker = _Host("orchestrator", state, readings), _Host("worker1", state, readings)
    for _ in range(3):
        assert fact_once(orch, PathStates, paths=("/x",)) == {"/x": "orchestrator's"}
        assert fact_once(worker, PathStates, paths=("/x",)) == {"/x": "worker1's"}
    assert (orch.calls, worker.calls) == (1, 1)
    state.current_stage = "execute"  # a run reads again what its operations may have changed
    fact_once(worker, PathStates, paths=("/x",))
    assert worker.calls == 2


def test_certificate_state_reads_expiry_names_chain_and_key(tmp_path):
    from infra.facts import CertificateState

    def sh(command):
        subprocess.run(["sh", "-c", command], cwd=tmp_path, check=True, capture_output=True)

    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key "
       "-out ca.crt -days 30 -subj /CN=ca -addext basicConstraints=critical,CA:TRUE")
    sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout s.key "
       "-out s.csr -subj /CN=s -addext subjectAltName=DNS:orch,IP:10.0.1.1")
    sh("openssl x509 -req -in s.csr -CA ca.crt -CAkey ca.key -set_serial 7 -days 10 "
       "-copy_extensions copy -out s.crt")
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout o.key "
       "-out o.crt -days 30 -subj /CN=other")
    paths = {name: str(tmp_path / name) for name in ("s.crt", "s.key", "ca.crt", "o.key",
                                                     "o.crt")}
    state = run_fact(CertificateState, cert=paths["s.crt"], key=paths["s.key"],
                     ca_cert=paths["ca.crt"])
    assert state["sans"] == ["DNS:orch", "IPAddress:10.0.1.1"]
    assert state["verifies"] and state["key_matches"]
    assert 9 * 86400 < state["end"] - time.time() < 11 * 86400
    other = run_fact(CertificateState, cert=paths["s.crt"], key=paths["o.key"],
                     ca_cert=paths["o.crt"])
    assert not other["verifies"] and not other["key_matches"]
    assert run_fact(CertificateState, cert=str(tmp_path / "none.crt"), key=paths["s.key"],
                    ca_cert=paths["ca.crt"]) is None


def test_unit_states_reads_several_units_in_one_command(tmp_path):
    from infra.facts import UnitStates

    unit = tmp_path / "a.service"
    unit.write_text("[Unit]\n")
    marker = tmp_path / "a.marker"
    marker.write_text("digest-a\n")
    states = run_fact(UnitStates, units=(
        ("autocode-no-such-a.service", str(unit), str(marker)),
        ("autocode-no-such-b.service", str(tmp_path / "none"), str(tmp_path / "none"))))
    a, b = states["autocode-no-such-a.service"], states["autocode-no-such-b.service"]
    assert a["unit"] == hashlib.sha256(b"[Unit]\n").hexdigest() and a["started"] == "digest-a"
    assert b["unit"] is None and b["started"] is None
    assert a["active"] in ("inactive", "unknown", None)
