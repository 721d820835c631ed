"""pyinfra operations for state our components own: one small function each, deciding
from facts whether anything needs doing, so a converged host reports no change."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from .facts import DefaultGateways, FirewallState, live_ruleset_digest_command


@operation()
def firewall_ruleset(path: str, content_digest: str, family: int = 4):
    """Load the ruleset at `path` (whose content hashes to `content_digest`) when it differs
    from the one last loaded, or when the live rules drifted from what was loaded.

    The file is checked with `iptables-restore --test` first and loaded in one atomic
    restore; then copied to `<path>.good`, which is what the boot unit restores, so a bad
    file never replaces the last good ruleset at boot.
    """
    marker = f"{path}.loaded"
    state = host.get_fact(FirewallState, family=family, marker=marker)
    if state["file"] == content_digest and state["loaded"] == state["live"]:
        host.noop(f"IPv{family} ruleset {path} is loaded and unchanged")
        return
    restore = "iptables-restore" if family == 4 else "ip6tables-restore"
    yield f"{restore} --test {path}"
    yield f"{restore} {path}"
    yield f"cp {path} {path}.good"
    yield (f"printf '%s %s\\n' {content_digest} "
           f"\"$({live_ruleset_digest_command(family)})\" > {marker}")


@operation()
def default_gateway(gateway: str):
    """Make `gateway` the only IPv4 default route."""
    if host.get_fact(DefaultGateways) == [gateway]:
        host.noop(f"default route is via {gateway}")
        return
    yield f"ip -4 route replace default via {gateway}"


@operation()
def barrier(description: str):
    """A no-op that orders hosts: called from one line for every host, it is one node in
    pyinfra's operation graph, so each host's operations before it run before any host's
    operations after it."""
    host.noop(description)
    return
    yield  # an operation is a generator
