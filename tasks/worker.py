"""The worker agent: /etc/autocode/worker.yaml and the seed's autocode-worker.service.

worker.yaml is built as data from the worker's settings (settings/worker.py) and checked
with the runtime's own parser twice: on the control machine before any host is contacted
(every value whose validity does not depend on the host), and on the worker by
`autocode-worker check` on the new file before it replaces the old one. A bad value
therefore fails the deploy with the field named, and the running service keeps the last
good config.

With `worker_runner: systemd` the unit runs the agent; with `nomad` the Nomad job does
(tasks/nomad.py) and the unit is stopped and disabled, so one inbox never has two readers.

With `task_source: orchestrator` (the default) the worker claims its tasks from
autocode-control with a client certificate of the platform CA (its key made here, 0640 to
the worker's account, never leaving the host; the request signed on the orchestrator), and
its agent runs as `autocode-agent`, an account of its own: the unit gives the worker
CAP_SETUID, CAP_SETGID, CAP_CHOWN (the work tree handed over and back),
CAP_DAC_READ_SEARCH (to hand back what the agent made private) and CAP_KILL (a cancel or a
timeout kills the agent's process group), and the agent holds none of them
(autocode/agents/process.py `as_account`).
"""

from __future__ import annotations

import yaml
from pyinfra import host, inventory
from pyinfra.api import deploy

from infra.component import Component
from infra.components import Catalogue
from infra.facts import q
from infra.operations import (
    certificate_signed_on_host,
    checked_config,
    digest,
    directory,
    file_content,
    system_accounts,
    systemd_unit,
    unit_removed,
)
from infra.render import render
from infra.settings import HostSettings
from settings.agent_clis import AgentClis
from settings.base import Base
from settings.control import Control
from settings.inventory import Addresses
from settings.mitmproxy import AGENT_ENV
from settings.nomad import Nomad
from settings.platform_ca import CA_CERT, CA_KEY, TRUSTED_CA
from settings.runtime import Runtime, host_install_digest
from settings.vault import WORKER_ENV
from settings.worker import (
    AGENT_HOME,
    AGENT_USER,
    CONFIG_NAME,
    CONTROL_CERT,
    CONTROL_CLIENT_DIR,
    CONTROL_KEY,
    UNIT,
    Worker,
    config_path,
    worker_yaml,
)

CLEANUP_UNITS = ("autocode-worker-cleanup.service", "autocode-worker-cleanup.timer")
TMPFILES = "/etc/tmpfiles.d/autocode-worker.conf"

COMPONENT = Component(name="worker", settings=Worker, runtime_extras={"worker": ()})


def tmpfiles_rules(days: int, tmp: str = "/tmp", var_tmp: str = "/var/tmp") -> str:
    return render("worker/autocode-tmpfiles.conf.j2", days=days, tmp=tmp, var_tmp=var_tmp)


def render_config(settings: HostSettings, name: str) -> str:
    header = f"# Managed by autocode (tasks/worker.py) for {name}; see autocode/config.py.\n"
    return header + yaml.safe_dump(worker_yaml(settings, name), sort_keys=False)


@deploy("Worker agent")
def worker(catalogue: Catalogue) -> None:
    settings = HostSettings.of(host)
    base, worker_settings = settings[Base], settings[Worker]
    systemd_runner = settings[Nomad].worker_runner == "systemd"
    if not systemd_runner:
        unit_removed(name=f"{UNIT} (Nomad runs the agent)", unit=UNIT)
    venv = base.runtime_venv
    path = config_path(base)
    text = render_config(settings, host.name)
    user = base.service_user
    restart_when = []
    if worker_settings.claims:
        restart_when += claim_credentials(settings)
    check_command = f"runuser -u {q(user)} -- {q(venv)}/bin/autocode-worker check --config {{}}"
    config_op = checked_config(name=f"Config {path}", path=path, text=text, user="root",
                               group=user, mode="640", check_command=check_command)
    cleanup = f"{venv}/bin/autocode-worker cleanup --config {path}"
    systemd_unit(name="Unit autocode-worker-cleanup.service",
                 unit="autocode-worker-cleanup.service", running=False, enabled=False,
                 batch=CLEANUP_UNITS,
                 text=render("worker/autocode-worker-cleanup.service.j2", command=cleanup,
                             user=user, data_root=base.data_root))
    systemd_unit(name="Unit autocode-worker-cleanup.timer", unit="autocode-worker-cleanup.timer",
                 batch=CLEANUP_UNITS,
                 text=render("worker/autocode-worker-cleanup.timer.j2",
                             calendar=worker_settings.task_cleanup_calendar))
    file_content(name=f"Temporary areas' cleanup {TMPFILES}", path=TMPFILES,
                 text=tmpfiles_rules(worker_settings.tmp_cleanup_days), mode="644")
    if not systemd_runner:
        return
    clis, agent_type = settings[AgentClis], settings[Runtime].agent_type
    inputs = {CONFIG_NAME: digest(text), "runtime": host_install_digest(host, catalogue) or "",
              "agent CLIs": digest(repr(sorted(clis.pins(agent_type).items())))}
    orchestrator_url = worker_settings.url_of_orchestrator(
        settings[Addresses].orchestrator_address, settings[Control].control_worker_port)
    systemd_unit(
        name=f"Unit {UNIT}", unit=UNIT,
        text=render("worker/autocode-worker.service.j2", user=user, venv=venv, config=path,
                    install_dir=base.install_dir, data_root=base.data_root,
                    home=base.service_home, orchestrator_url=orchestrator_url,
                    path=f"{clis.npm_prefix(base.install_dir)}/bin:"
                         f"{clis.node_bin_dir(base.install_dir)}:/usr/local/bin:/usr/bin:/bin",
                    env_files=(AGENT_ENV, WORKER_ENV), claims=worker_settings.claims,
                    agent_home=AGENT_HOME),
        inputs=inputs, restart_when=(config_op, *restart_when), settle_s=3,
        check_command=check_command.format(q(path)))


def claim_credentials(settings: HostSettings) -> list:
    """The agent's own account and home, and the worker's client certificate for
    autocode-control (the operations whose change restarts the worker)."""
    base = settings[Base]
    system_accounts(name=f"Agent account {AGENT_USER}", users=(AGENT_USER,),
                    homes={AGENT_USER: AGENT_HOME})
    directory(name=f"Agent home {AGENT_HOME}", path=AGENT_HOME, user=AGENT_USER,
              group=AGENT_USER, mode="700")
    directory(name=f"Folder {CONTROL_CLIENT_DIR}", path=CONTROL_CLIENT_DIR, user="root",
              group=base.service_user, mode="750")
    orchestrator = inventory.get_group("orchestrator")[0]
    return [certificate_signed_on_host(
        name="Worker's client certificate for autocode-control", signer=orchestrator.name,
        signer_ca_cert=CA_CERT, signer_ca_key=CA_KEY, cert=CONTROL_CERT, key=CONTROL_KEY,
        ca_cert=TRUSTED_CA, common_name=host.name,
        names=(host.name, str(settings[Addresses].ssh_hostname)),
        user=base.service_user, group=base.service_user,
        # One worker at a time: the signings share the orchestrator's connection.
        _serial=True)]
