"""pyinfra facts for state our components own on the hosts."""

from __future__ import annotations

import json

from pyinfra.api import FactBase
from pyinfra.facts.files import Link

# iptables-save output, minus comments and packet counters: what the kernel enforces.
_NORMALISE = "grep -v '^#' | sed -E 's/\\[[0-9]+:[0-9]+\\]//g' | sha256sum | cut -c1-64"


def live_ruleset_digest_command(family: int) -> str:
    save = "iptables-save" if family == 4 else "ip6tables-save"
    return f"{save} | {_NORMALISE}"


class FirewallState(FactBase):
    """The live ruleset's digest, and what the last load recorded in its marker file:
    the digest of the rules file it loaded and of the live ruleset right after loading.
    Any difference means the file changed or someone changed the rules by hand."""

    def command(self, family: int, marker: str) -> str:
        return (f"{live_ruleset_digest_command(family)}; "
                f"cat {marker} 2>/dev/null || true")

    def process(self, output):
        lines = [line for line in output if line.strip()]
        marker = lines[1].split() if len(lines) > 1 else []
        return {
            "live": lines[0].strip() if lines else None,
            "file": marker[0] if len(marker) == 2 else None,
            "loaded": marker[1] if len(marker) == 2 else None,
        }


class DefaultGateways(FactBase):
    """IPv4 default routes' gateways, from `ip -j route`."""

    default = list

    def command(self) -> str:
        return "ip -j -4 route show default"

    def process(self, output):
        try:
            routes = json.loads("\n".join(output) or "[]")
        except ValueError:
            return []
        return [r.get("gateway") for r in routes if r.get("gateway")]


class FileDigest(FactBase):
    """sha256 of a file, or None when it does not exist."""

    def command(self, path: str) -> str:
        return f"sha256sum {path} 2>/dev/null | cut -c1-64 || true"

    def process(self, output):
        return output[0].strip() if output and output[0].strip() else None


class FileText(FactBase):
    """A text file's contents, or None when it does not exist or is empty."""

    def command(self, path: str) -> str:
        return f"cat {path} 2>/dev/null || true"

    def process(self, output):
        text = "\n".join(output).strip()
        return text + "\n" if text else None


def links_to(host, link: str, target: str) -> bool:
    """Whether `link` on the host is a symlink pointing at exactly `target`."""
    info = host.get_fact(Link, path=link)
    return bool(info) and info.get("link_target") == target
