"""The task service on the orchestrator: autocode-control (autocode/control/, docs/control.md).

Operators reach its API with the token made once on the control machine (kept 0600 beside
the inventory; the host holds only its SHA-256) from the management networks; workers reach
theirs with client certificates of the platform CA. Its certificate is signed by the
platform CA; its configuration is checked by `autocode-control check` before it replaces
the one in use. Tasks and bare repositories live under `<data_root>/control` (in the
backups). Beside the inventory the deploy writes `autocode-control.json` and a copy of the
platform CA: what `autocode task` reads. Operators push repositories over the SSH access the
deploy uses, git-receive-pack running as the service's account.
"""

from __future__ import annotations

import yaml
from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt

from infra.component import Component
from infra.components import Catalogue
from infra.control import endpoint_file_written, operator_token, operator_token_kept
from infra.facts import FileText, fact_once, management_networks, q
from infra.operations import (
    checked_config,
    digest,
    directory,
    file_content,
    signed_certificate,
    systemd_unit,
)
from infra.render import render
from infra.settings import HostSettings
from settings.base import Base
from settings.control import (
    CONFIG,
    CONTROL_USER,
    PKI_DIR,
    TLS_CERT,
    TLS_KEY,
    TOKEN_SHA256,
    UNIT,
    Control,
)
from settings.inventory import Addresses
from settings.metering import LEDGER
from settings.mitmproxy import PROXY_USER
from settings.network import Network
from settings.platform_ca import CA_CERT, CA_KEY
from settings.runtime import Runtime, host_install_digest

CA_COPY = "autocode-control-ca.crt"

COMPONENT = Component(
    name="control",
    settings=Control,
    system_users={"orchestrator": (CONTROL_USER,)},
    # Setgid folders: what the service writes there (the running tasks) is the proxy's to
    # read, and what the proxy writes (over-budget marks, per-task traffic) the service's.
    data_tree={"orchestrator": {
        "control": (CONTROL_USER, PROXY_USER, "2750"),
        "control/over-budget": (PROXY_USER, CONTROL_USER, "2750"),
        "control/traffic": (PROXY_USER, CONTROL_USER, "2750"),
    }},
    worker_ports=lambda control: [control.control_worker_port],
    # Both: the workers' port is the workers' and the management networks' only.
    management_ports=lambda control: [control.control_operator_port,
                                      control.control_worker_port],
    runtime_extras={"orchestrator": ("control",)},
)


def control_yaml(settings: HostSettings, workers: dict[str, dict], networks: list[str]) -> str:
    """The service's configuration (autocode/control/config.py), built as data."""
    control, base = settings[Control], settings[Base]
    doc = {
        "data_root": base.data_root,
        "operator_port": control.control_operator_port,
        "worker_port": control.control_worker_port,
        "tls_cert": TLS_CERT, "tls_key": TLS_KEY, "ca_cert": CA_CERT,
        "operator_token_sha256_file": TOKEN_SHA256,
        "management_networks": networks,
        "workers": workers,
        # Strings: the service reads amounts as exact Decimals, never through a float.
        "default_budget_usd": str(control.control_default_budget_usd),
        "lease_s": control.control_lease_s,
        # The proxy's, read-only: each task's metered cost and tokens.
        "metered_ledger": f"{base.data_root}/{LEDGER}",
    }
    header = "# Managed by autocode (tasks/control.py); see autocode/control/config.py.\n"
    return header + yaml.safe_dump(doc, sort_keys=False)


def inventory_workers() -> dict[str, dict]:
    """Each worker as the service knows it: the address its requests come from, its agent
    and its daily budget."""
    out = {}
    for worker in inventory.get_group("workers"):
        runtime = Runtime.of(worker)
        out[worker.name] = {"address": str(Addresses.of(worker).ssh_hostname),
                            "agent_type": runtime.agent_type,
                            "daily_budget_usd": str(runtime.daily_budget_usd)}
    return out


def endpoint(settings: HostSettings, data: dict) -> dict:
    """What `autocode task` needs: the operators' URL, the token file, and the git remote
    for repositories, over the deploy's own SSH access."""
    control, base, addresses = settings[Control], settings[Base], settings[Addresses]
    address = str(addresses.ssh_hostname)
    url_host = f"[{address}]" if ":" in address else address
    ssh = ["ssh", "-o", "BatchMode=yes", "-p", str(addresses.ssh_port or 22)]
    if data.get("ssh_key"):
        ssh += ["-i", str(data["ssh_key"]), "-o", "IdentitiesOnly=yes"]
    if data.get("ssh_known_hosts_file"):
        ssh += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}",
                "-o", "StrictHostKeyChecking=yes"]
    as_service = f"runuser -u {CONTROL_USER} --"
    return {
        "url": f"https://{url_host}:{control.control_operator_port}",
        "token_file": control.token_file().name
        if control.token_file().parent == control.endpoint_file().parent
        else str(control.token_file()),
        "git_remote": f"ssh://{data.get('ssh_user') or 'root'}@{url_host}:"
                      f"{addresses.ssh_port or 22}{base.data_root}/control/repos",
        "git_ssh_command": " ".join(q(part) for part in ssh),
        "receive_pack": f"{as_service} git-receive-pack",
        "upload_pack": f"{as_service} git-upload-pack",
    }


@deploy("Task service")
def orchestrator(catalogue: Catalogue) -> None:
    settings = HostSettings.of(host)
    control, base, addresses = settings[Control], settings[Base], settings[Addresses]
    apt.packages(name="git (the task repositories)", packages=["git"],
                 cache_time=base.apt_cache_seconds)
    directory(name=f"Folder {PKI_DIR}", path=PKI_DIR, user="root", group=CONTROL_USER,
              mode="750")
    names = (host.name, addresses.gateway(), str(addresses.ssh_hostname))
    cert_op = signed_certificate(
        name="Task service's TLS certificate", cert=TLS_CERT, key=TLS_KEY, ca_cert=CA_CERT,
        ca_key=CA_KEY, common_name=host.name, names=names, user=CONTROL_USER,
        group=CONTROL_USER)
    token = operator_token(host.state, control.token_file())
    operator_token_kept(name="Operator token beside the inventory", token=token)
    token_op = file_content(name="Operator token's SHA-256", path=TOKEN_SHA256,
                            text=token.sha256() + "\n", user="root", group=CONTROL_USER,
                            mode="640")
    venv = base.runtime_venv
    text = control_yaml(settings, inventory_workers(),
                        management_networks(settings[Network].management_networks))
    check = f"runuser -u {CONTROL_USER} -- {q(venv)}/bin/autocode-control check --config {{}}"
    config_op = checked_config(name=f"Config {CONFIG}", path=CONFIG, text=text, user="root",
                               group=CONTROL_USER, mode="640", check_command=check)
    systemd_unit(
        name=f"Unit {UNIT}", unit=UNIT,
        text=render("control/autocode-control.service.j2", user=CONTROL_USER, venv=venv,
                    config=CONFIG, state_dir=f"{base.data_root}/control",
                    # The proxy's ledger: financial/ is the autocode group's, the files
                    # the proxy's group's.
                    groups=f"{base.service_user} {PROXY_USER}"),
        inputs={"control.yaml": digest(text), "token": token.sha256(),
                "runtime": host_install_digest(host, catalogue) or ""},
        restart_when=(config_op, cert_op, token_op), settle_s=2,
        check_command=check.format(q(CONFIG)))
    endpoint_file_written(
        name=f"{control.endpoint_file().name} beside the inventory",
        path=str(control.endpoint_file()), endpoint=endpoint(settings, host.data.dict()),
        ca_copy=CA_COPY, ca_on_host=CA_CERT, ca_pem=fact_once(host, FileText, path=CA_CERT))
