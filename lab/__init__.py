"""The lab: real Debian 12 hosts on this machine for trying autocode and for its tests.

Each host is a systemd-nspawn container booted from a debootstrapped root, with systemd
as PID 1, sshd and iptables, in a network namespace the lab wires itself:

    control machine --(bridge aclab-up, NAT)-- orchestrator, internet
    orchestrator  --(switch namespace aclab-wseg)-- worker1..N

The worker segment's bridge lives in its own namespace, so the control machine has no
interface on it: the orchestrator is the workers' only way out, by construction.
"""
