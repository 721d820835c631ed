"""Wiring the lab's topology: namespaces, veths, bridges, routes and the host's NAT.

Every object is named with the lab's prefix so that teardown can find it even when the
run that made it died half-way.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import PREFIX, LabConfig, Machine
from .sh import ok, run


def uplink_mtu() -> int:
    """Match the control machine's own uplink so big packets are not silently dropped."""
    route = run("ip", "-j", "route", "show", "default", check=False).stdout
    try:
        dev = json.loads(route)[0]["dev"]
        return min(1500, int(Path(f"/sys/class/net/{dev}/mtu").read_text()))
    except (ValueError, IndexError, KeyError, OSError):
        return 1500


def _netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def _link_exists(name: str, netns: str | None = None) -> bool:
    return ok(*(["ip", "-n", netns] if netns else ["ip"]), "link", "show", name)


def _ns(netns: str, *argv: str) -> None:
    run("ip", "-n", netns, *argv)


def _sysctl(netns: str | None, key: str, value: str) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    run(*prefix, "sysctl", "-q", "-w", f"{key}={value}")


# --- control machine ---------------------------------------------------------------

def ensure_host_side(cfg: LabConfig, mtu: int, state: dict) -> None:
    br = cfg.uplink_bridge
    if not _link_exists(br):
        run("ip", "link", "add", br, "type", "bridge")
        run("ip", "addr", "add", f"{cfg.bridge_addr}/{cfg.uplink_prefixlen}", "dev", br)
        run("ip", "-6", "addr", "add", f"{cfg.bridge_addr6}/64", "dev", br, "nodad")
    run("ip", "link", "set", br, "mtu", str(mtu), "up")

    # Remember the host's forwarding setting once, so `down` puts it back.
    state.setdefault("host_ip_forward", Path("/proc/sys/net/ipv4/ip_forward").read_text().strip())
    _sysctl(None, "net.ipv4.ip_forward", "1")
    _ensure_host_firewall(cfg)
    _ensure_route(cfg.worker_net, cfg.orchestrator.uplink_addr, br, v6=False)
    _ensure_route(cfg.worker_net6, cfg.orchestrator.uplink_addr6, br, v6=True)


def _ensure_route(net: str, via: str | None, dev: str, v6: bool) -> None:
    fam = ["-6"] if v6 else []
    run("ip", *fam, "route", "replace", net, "via", str(via), "dev", dev)


def _ensure_host_firewall(cfg: LabConfig) -> None:
    """NAT the uplink segment out; never forward or accept new traffic from workers.

    The workers' segment is not attached to this machine at all; these rules are the
    second wall, for traffic the orchestrator would route to us.
    """
    chain = cfg.nat_chain
    rules = {
        ("nat", "POSTROUTING"): [
            ["-s", cfg.uplink, "!", "-o", cfg.uplink_bridge, "-j", "MASQUERADE"],
        ],
        ("filter", "FORWARD"): [
            ["-s", cfg.worker_net, "-j", "DROP"],
            ["-i", cfg.uplink_bridge, "-j", "ACCEPT"],
            ["-o", cfg.uplink_bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
             "-j", "ACCEPT"],
        ],
        ("filter", "INPUT"): [
            ["-s", cfg.worker_net, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
             "-j", "ACCEPT"],
            ["-s", cfg.worker_net, "-j", "DROP"],
        ],
    }
    for (table, parent), chain_rules in rules.items():
        sub = f"{chain}-{parent[:3]}"
        if not ok("iptables", "-t", table, "-nL", sub):
            run("iptables", "-t", table, "-N", sub)
        run("iptables", "-t", table, "-F", sub)
        for rule in chain_rules:
            run("iptables", "-t", table, "-A", sub, *rule)
        if not ok("iptables", "-t", table, "-C", parent, "-j", sub):
            run("iptables", "-t", table, "-I", parent, "1", "-j", sub)
    # The worker segment has no IPv6 path out through us either.
    sub6 = f"{chain}-FOR"
    if not ok("ip6tables", "-nL", sub6):
        run("ip6tables", "-N", sub6)
    run("ip6tables", "-F", sub6)
    run("ip6tables", "-A", sub6, "-s", cfg.worker_net6, "-j", "DROP")
    if not ok("ip6tables", "-C", "FORWARD", "-j", sub6):
        run("ip6tables", "-I", "FORWARD", "1", "-j", sub6)


def remove_host_firewall(cfg: LabConfig) -> None:
    for table, parent in (("nat", "POSTROUTING"), ("filter", "FORWARD"), ("filter", "INPUT")):
        sub = f"{cfg.nat_chain}-{parent[:3]}"
        while ok("iptables", "-t", table, "-D", parent, "-j", sub):
            pass
        if ok("iptables", "-t", table, "-nL", sub):
            run("iptables", "-t", table, "-F", sub)
            run("iptables", "-t", table, "-X", sub)
    sub6 = f"{cfg.nat_chain}-FOR"
    while ok("ip6tables", "-D", "FORWARD", "-j", sub6):
        pass
    if ok("ip6tables", "-nL", sub6):
        run("ip6tables", "-F", sub6)
        run("ip6tables", "-X", sub6)


# --- the worker segment's switch -----------------------------------------------------

def ensure_switch(cfg: LabConfig, mtu: int) -> None:
    ns = cfg.switch_netns
    if not _netns_exists(ns):
        run("ip", "netns", "add", ns)
    if not _link_exists(cfg.worker_bridge, ns):
        _ns(ns, "link", "add", cfg.worker_bridge, "type", "bridge")
    _ns(ns, "link", "set", cfg.worker_bridge, "mtu", str(mtu), "up")
    # A switch, not a router: no addresses, no forwarding, no IPv6 of its own.
    _sysctl(ns, "net.ipv4.ip_forward", "0")
    _sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")


# --- one machine's namespace ---------------------------------------------------------

def ensure_machine_net(cfg: LabConfig, m: Machine, mtu: int) -> None:
    ns = m.netns
    fresh = not _netns_exists(ns)
    if fresh:
        run("ip", "netns", "add", ns)
    _ns(ns, "link", "set", "lo", "up")
    # Accept no router advertisements: the lab's routes are static, like a VM's.
    _sysctl(ns, "net.ipv6.conf.default.accept_ra", "0")
    _sysctl(ns, "net.ipv6.conf.all.accept_ra", "0")

    ifaces = []
    if m.uplink_addr:
        host_end = f"{PREFIX}-u-{m.short}"
        if not _link_exists("eth0", ns):
            run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
        run("ip", "link", "set", host_end, "master", cfg.uplink_bridge, "mtu", str(mtu), "up")
        ifaces.append(("eth0", m.uplink_addr, cfg.uplink_prefixlen, m.uplink_addr6))
    if m.worker_addr:
        inner = "eth1" if m.uplink_addr else "eth0"
        switch_end = f"p-{m.short}"
        if not _link_exists(inner, ns):
            _ns(cfg.switch_netns, "link", "add", switch_end, "type", "veth", "peer",
                "name", inner, "netns", ns)
        _ns(cfg.switch_netns, "link", "set", switch_end, "master", cfg.worker_bridge,
            "mtu", str(mtu), "up")
        ifaces.append((inner, m.worker_addr, cfg.worker_prefixlen, m.worker_addr6))

    for name, addr, plen, addr6 in ifaces:
        _ns(ns, "link", "set", name, "mtu", str(mtu), "up")
        _ns(ns, "addr", "replace", f"{addr}/{plen}", "dev", name)
        _ns(ns, "-6", "addr", "replace", f"{addr6}/64", "dev", name, "nodad")
    if m.role == "internet":
        _ns(ns, "addr", "replace", f"{cfg.internet_spare_addr}/{cfg.uplink_prefixlen}",
            "dev", "eth0")

    if m.role == "worker":
        # The orchestrator is the workers' only router, as on the production network.
        _ns(ns, "route", "replace", "default", "via", str(cfg.orchestrator.worker_addr))
        _ns(ns, "-6", "route", "replace", "default", "via", str(cfg.orchestrator.worker_addr6))
    else:
        _ns(ns, "route", "replace", "default", "via", cfg.bridge_addr)
        _ns(ns, "-6", "route", "replace", "default", "via", cfg.bridge_addr6)

    # Only on a new host: once deployed, a host's firewall and sysctls are the deploy's.
    if fresh and m.role == "orchestrator":
        _ensure_orchestrator_router(cfg, ns)
    elif fresh:
        # A new namespace inherits the control machine's forwarding; hosts are not routers.
        _sysctl(ns, "net.ipv4.ip_forward", "0")


# Kernel defaults of a new network namespace, as a VM's kernel has them at boot.
_BOOT_SYSCTLS = {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.send_redirects": "1",
                 "net.ipv4.conf.default.send_redirects": "1",
                 "net.ipv6.conf.all.forwarding": "0"}


def reset_for_cold_boot(ns: str, role: str) -> None:
    """What a reboot wipes on a VM but a network namespace outlives a container's reboot:
    the firewall (both families), the kernel's forwarding settings and, on a worker, the
    default route the deploy made. The addresses stay: the lab's network hands them out,
    as a VM's static configuration or DHCP would. A host comes back only with what its own
    boot restores."""
    # No table at all, as at boot (an emptied table would still show in iptables-save).
    run("ip", "netns", "exec", ns, "nft", "flush", "ruleset")
    for key, value in _BOOT_SYSCTLS.items():
        _sysctl(ns, key, value)
    if role == "worker":
        for family in ("-4", "-6"):
            run("ip", "-n", ns, family, "route", "flush", "default", check=False)


def _ensure_orchestrator_router(cfg: LabConfig, ns: str) -> None:
    """Until the deploy installs its own ruleset, route and NAT the workers like a cloud
    router would, so that they can install packages."""
    _sysctl(ns, "net.ipv4.ip_forward", "1")
    nat = ["-s", cfg.worker_net, "-o", "eth0", "-j", "MASQUERADE"]
    exec_ = ["ip", "netns", "exec", ns, "iptables", "-t", "nat"]
    if not ok(*exec_, "-C", "POSTROUTING", *nat):
        run(*exec_, "-A", "POSTROUTING", *nat)


def remove_all(cfg: LabConfig) -> None:
    """Delete every namespace, link and route of the lab, whoever made them."""
    for ns_path in Path("/run/netns").glob(f"{PREFIX}-*") if Path("/run/netns").exists() else []:
        run("ip", "netns", "delete", ns_path.name, check=False)  # takes its veths along
    links = json.loads(run("ip", "-j", "link", "show", check=False).stdout or "[]")
    for link in links:
        if link.get("ifname", "").startswith(PREFIX):
            run("ip", "link", "delete", link["ifname"], check=False)
    run("ip", "route", "delete", cfg.worker_net, check=False)
    run("ip", "-6", "route", "delete", cfg.worker_net6, check=False)
    remove_host_firewall(cfg)
