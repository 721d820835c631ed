"""pyinfra operations every component uses, for state our components own: one small
function each, deciding from facts whether anything needs doing, so a converged host
reports no change. Every path and name that reaches a command is quoted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Mapping
from io import BytesIO, StringIO
from pathlib import Path, PurePosixPath

from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, OperationError, operation

from .facts import (
    Accounts,
    CertificateState,
    DefaultGateways,
    FileText,
    FirewallState,
    FolderState,
    PathStates,
    Sysctls,
    UnitStates,
    fact_once,
    live_ruleset_digest_command,
    q,
    read_items,
    reads,
)

UNIT_DIR = "/etc/systemd/system"
# What each unit was last (re)started with; root's, and kept across reboots.
UNIT_MARKERS = "/var/lib/autocode-deploy/units"
STAGING = "/run/autocode-deploy"


def digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def _unit_items(units) -> tuple[tuple[str, str, str], ...]:
    """UnitStates' items: each unit with its file and its start record."""
    return tuple((u, f"{UNIT_DIR}/{u}", f"{UNIT_MARKERS}/{u}") for u in units)


def _mode(mode: str | int) -> str:
    return str(mode).lstrip("0") or "0"


def _attributes(path: str, state: dict, user: str, group: str, mode: str):
    if (state["user"], state["group"]) != (user, group):
        yield f"chown {q(user)}:{q(group)} {q(path)}"
    if _mode(state["mode"]) != _mode(mode):
        yield f"chmod {q(mode)} {q(path)}"


def _upload(text: str | bytes, dest: str, user: str, group: str, mode: str):
    """Write a file: to a staging name beside it, then renamed over it with its owner and
    mode already set, so no reader ever sees a half-written or too-open file."""
    staged = f"{dest}.autocode-new"
    src = StringIO(text) if isinstance(text, str) else BytesIO(text)
    yield f"rm -f {q(staged)} && install -m 600 /dev/null {q(staged)}"
    yield FileUploadCommand(src, staged, remote_temp_filename=staged)
    yield f"chown {q(user)}:{q(group)} {q(staged)} && chmod {q(mode)} {q(staged)}"
    yield f"mv -f {q(staged)} {q(dest)}"


@reads(PathStates, lambda a: a["batch"] or (a["path"],))
@operation()
def directory(path: str, user: str, group: str, mode: str, batch: tuple[str, ...] = ()):
    """A folder with this owner and mode.

    + path: the folder
    + user, group, mode: its owner and mode
    + batch: paths (including this one) whose state is read in one fact, once per run, so
      a whole tree costs one round trip; each of them must be changed only by its own call
    """
    paths = tuple(batch) or (path,)
    if path not in paths:
        raise OperationError(f"directory {path}: batch must include the path itself")
    state = read_items(host, PathStates, paths=paths).get(path)
    if state is None:
        yield f"install -d -o {q(user)} -g {q(group)} -m {q(mode)} {q(path)}"
        return
    if state["type"] != "directory":
        raise OperationError(f"{path} is a {state['type']}, not a folder; move it away and "
                             "apply again")
    changes = list(_attributes(path, state, user, group, mode))
    if not changes:
        host.noop(f"folder {path} is as wanted")
    yield from changes


@reads(PathStates, lambda a: a["batch"] or (a["path"],))
@operation()
def file_content(path: str, text: str, user: str = "root", group: str = "root",
                 mode: str = "644", batch: tuple[str, ...] = ()):
    """A file holding exactly `text`, with this owner and mode.

    + path: the file on the host
    + text: its whole content
    + user, group, mode: its owner and mode
    + batch: paths (including this one) read with one fact, as for `directory`
    """
    paths = tuple(batch) or (path,)
    state = read_items(host, PathStates, paths=paths).get(path)
    # A symlink is replaced by the file (resolv.conf often is one); a folder is not.
    if state is not None and state["type"] not in ("file", "link"):
        raise OperationError(f"{path} is a {state['type']}, not a file; move it away and "
                             "apply again")
    if state is None or state["sha256"] != digest(text):
        yield from _upload(text, path, user, group, mode)
        return
    changes = list(_attributes(path, state, user, group, mode))
    if not changes:
        host.noop(f"file {path} is as wanted")
    yield from changes


@operation()
def synced_folder(path: str, files: Mapping[str, str | Path], user: str = "root",
                  group: str = "root", mode: str = "644", folder_mode: str = "755",
                  then: tuple[str, ...] = (), then_creates: Mapping[str, str] | None = None):
    """A folder holding exactly these files: missing or different ones written, others
    removed, owners and modes set; then `then` when anything changed.

    + path: the folder
    + files: file name -> its content (text) or a control-machine Path to copy
    + user, group, mode: owner and mode of every file (and owner of the folder)
    + folder_mode: the folder's mode
    + then: commands to run after any change (e.g. rebuilding a trust store)
    + then_creates: links those commands make {link: target}; one missing means they have
      to run again whatever changed (an earlier run stopped before them)
    """
    state = host.get_fact(FolderState, path=path)
    commands: list = []
    folder = state["folder"]
    if folder is None:
        commands.append(f"install -d -o {q(user)} -g {q(group)} -m {q(folder_mode)} {q(path)}")
    elif folder["type"] != "directory":
        raise OperationError(f"{path} is a {folder['type']}, not a folder; move it away and "
                             "apply again")
    else:
        commands += _attributes(path, folder, user, group, folder_mode)
    entries = state["entries"]
    for name, content in sorted(files.items()):
        if "/" in name or name in ("", ".", ".."):
            raise OperationError(f"{path}: {name!r} is not a file name")
        data = content.read_bytes() if isinstance(content, Path) else content
        target = f"{path}/{name}"
        have = entries.get(name)
        if have is None or have["type"] != "file" or have["sha256"] != digest(data):
            if have is not None and have["type"] != "file":
                commands.append(f"rm -rf -- {q(target)}")
            commands += _upload(data, target, user, group, mode)
        else:
            commands += _attributes(target, have, user, group, mode)
    for name in sorted(set(entries) - set(files)):
        commands.append(f"rm -rf -- {q(path + '/' + name)}")
    links_missing = False
    if then_creates:
        links = fact_once(host, PathStates, paths=tuple(sorted(then_creates)))
        links_missing = any((links.get(link) or {}).get("target") != target
                            for link, target in then_creates.items())
    if commands or links_missing:
        yield from commands
        yield from then
    else:
        host.noop(f"{path} holds exactly its {len(files)} files")


@reads(PathStates, lambda a: a["batch"] or (a["path"],))
@operation()
def made_once(path: str, command: str, user: str, group: str, mode: str,
              batch: tuple[str, ...] = ()):
    """A file that a command makes once and nothing replaces afterwards (a CA's key): made
    when missing, its owner and mode kept.

    + path: the file the command makes
    + command: makes it; runs only when the file is missing
    + user, group, mode: its owner and mode
    + batch: paths (including this one) read with one fact, as for `directory`
    """
    state = read_items(host, PathStates, paths=tuple(batch) or (path,)).get(path)
    if state is None:
        yield command
        yield f"chown {q(user)}:{q(group)} {q(path)} && chmod {q(mode)} {q(path)}"
        return
    changes = list(_attributes(path, state, user, group, mode))
    if not changes:
        host.noop(f"{path} exists")
    yield from changes


@reads(PathStates, lambda a: (a["path"], *sorted(a["then_creates"] or {})))
@operation()
def file_from_host(source: str, source_path: str, path: str, user: str = "root",
                   group: str = "root", mode: str = "644", must_contain: str | None = None,
                   then: tuple[str, ...] = (), then_creates: Mapping[str, str] | None = None):
    """A copy of a file that another host of the inventory makes (e.g. a CA certificate
    generated on the orchestrator), read from it over its own connection.

    + source: the inventory name of the host that has the file
    + source_path: its path there
    + path, user, group, mode: the copy here
    + must_contain: text the file must hold, checked before it is written (e.g. a PEM
      header), so a wrong or empty file is never installed
    + then, then_creates: as for `synced_folder`
    """
    source_host = host.state.inventory.get_host(source)
    text = fact_once(source_host, FileText, path=source_path)
    mine = read_items(host, PathStates, paths=(path, *sorted(then_creates or {})))
    links_missing = any((mine.get(link) or {}).get("target") != target
                        for link, target in (then_creates or {}).items())
    if text is None:
        # Not there when planned: an earlier operation of this run makes it on the source.
        yield FunctionCommand(_copy_between_hosts,
                              (source, source_path, path, user, group, mode, must_contain), {})
        yield from then
        return
    if must_contain and must_contain not in text:
        raise OperationError(f"{source_path} on {source} does not contain {must_contain!r}")
    have = mine.get(path)
    if have is not None and have["sha256"] == digest(text):
        changes = list(_attributes(path, have, user, group, mode))
        if not changes and not links_missing:
            host.noop(f"{path} is the same as {source_path} on {source}")
            return
        yield from changes
    else:
        yield from _upload(text, path, user, group, mode)
    yield from then


def _copy_between_hosts(state, host, source, source_path, path, user, group, mode,
                        must_contain) -> None:
    source_host = state.inventory.get_host(source)
    ok, output = source_host.run_shell_command(f"cat -- {q(source_path)}")
    text = "\n".join(output.stdout_lines).strip() + "\n" if ok else ""
    if not ok or (must_contain and must_contain not in text):
        raise OperationError(f"could not read {source_path} on {source}, or it does not "
                             f"contain {must_contain!r}")
    staged = f"{path}.autocode-new"
    if not host.put_file(StringIO(text), staged):
        raise OperationError(f"could not write {staged} on {host.name}")
    ok, _ = host.run_shell_command(f"chown {q(user)}:{q(group)} {q(staged)} && "
                                   f"chmod {q(mode)} {q(staged)} && mv -f {q(staged)} {q(path)}")
    if not ok:
        raise OperationError(f"could not install {path} on {host.name}")


@reads(UnitStates, lambda a: _unit_items(a["batch"] or (a["unit"],)))
@operation()
def systemd_unit(unit: str, text: str | None = None, inputs: Mapping[str, str] | None = None,
                 restart_when: tuple = (), check_command: str | None = None,
                 enabled: bool = True, running: bool = True, batch: tuple[str, ...] = (),
                 settle_s: int = 0):
    """A systemd unit: its file written (after `systemd-analyze verify` passed on it) when
    `text` is given, systemd reloaded when it changed, the unit enabled and running, and
    restarted whenever it or any of its inputs changed since it was last (re)started here.

    + unit: the unit's name, e.g. autocode-mitmproxy.service
    + text: the unit file; None for a unit a package ships (only its inputs are ours)
    + inputs: what the service reads at start, as name -> digest (a config file's text
      digest, the runtime's install digest, ...); recorded on the host after each
      (re)start, so a run that stopped between writing a config and restarting the service
      finishes the job the next time
    + restart_when: operations writing files the service reads; when one changed something
      (say it repaired a file edited by hand) the service restarts even though the digests
      it was started with are the same
    + check_command: validates the service's configuration before a (re)start, e.g.
      `dnsmasq --test`; the restart does not happen when it fails
    + enabled, running: wanted states
    + batch: units (including this one) whose state is read in one fact, once per run;
      each of them must be changed only by its own call
    + settle_s: after a (re)start, seconds after which the unit must still be active: a
      service that dies at start (and Restart= would retry for ever) fails the deploy
      with its last journal lines
    """
    path = f"{UNIT_DIR}/{unit}"
    marker = f"{UNIT_MARKERS}/{unit}"
    want_unit = digest(text) if text is not None else None
    want_started = digest("\n".join([want_unit or "package unit",
                                     *(f"{k}={v}" for k, v in sorted((inputs or {}).items()))]))
    units = tuple(batch) or (unit,)
    if unit not in units:
        raise OperationError(f"systemd_unit {unit}: batch must include the unit itself")
    state = read_items(host, UnitStates, units=_unit_items(units))[unit]
    changed = text is not None and state["unit"] != want_unit
    if changed:
        staged = f"{STAGING}/{unit}"
        yield f"install -d -m 700 {STAGING}"
        yield FileUploadCommand(StringIO(text), staged, remote_temp_filename=staged)
        yield f"systemd-analyze verify {q(staged)}"
        yield f"install -m 644 -o root -g root {q(staged)} {q(path)} && rm -f {q(staged)}"
        yield "systemctl daemon-reload"
    if enabled and (changed or state["enabled"] != "enabled"):
        yield f"systemctl enable {q(unit)}"
    # A plan asks whether they will change; a run, whether they did.
    inputs_rewritten = any(op.changed for op in restart_when)
    restart = running and (changed or state["started"] != want_started or inputs_rewritten)
    start = running and not restart and state["active"] != "active"
    if (restart or start) and check_command:
        yield check_command
    if restart:
        yield f"systemctl restart {q(unit)}"
    elif start:
        yield f"systemctl start {q(unit)}"
    if (restart or start) and settle_s:
        yield (f"sleep {int(settle_s)}; systemctl is-active --quiet {q(unit)} || {{ echo "
               f"{q(f'{unit} did not stay up after its start; its journal:')} >&2; "
               f"journalctl -u {q(unit)} -n 20 --no-pager -o cat >&2; exit 1; }}")
    if restart:  # recorded once it is up: a start that failed is tried again next time
        yield (f"install -d -m 700 {UNIT_MARKERS} && "
               f"printf '%s\\n' {q(want_started)} > {q(marker)}")
    elif not start and not changed and (not enabled or state["enabled"] == "enabled"):
        host.noop(f"{unit} is as wanted")


def _san(name: str) -> str:
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        return f"DNS:{name}"


@reads(PathStates, lambda a: a["batch"] or (a["cert"], a["key"]))
@operation()
def signed_certificate(cert: str, key: str, ca_cert: str, ca_key: str, common_name: str,
                       names: tuple[str, ...], user: str, group: str, days: int = 365,
                       renew_days: int = 30, batch: tuple[str, ...] = ()):
    """A server certificate signed by a CA whose key is on this host: (re)made when it is
    missing, expires within `renew_days`, names other hosts than `names`, does not verify
    against the CA, or does not match its key. The key is made anew with it, on the host,
    and never leaves it.

    + cert, key: where they live; the key is 0640 owner `user`, group `group`
    + ca_cert, ca_key: the signing CA on this host
    + common_name: the certificate's subject CN
    + names: DNS names and IP addresses it is valid for (subject alternative names)
    + user, group: owner of both files (the service that presents them reads the key)
    + days: validity of a new certificate
    + renew_days: how long before expiry a re-apply renews it
    + batch: paths (including both files) read with one fact, as for `directory`
    """
    sans = [_san(n) for n in dict.fromkeys(names)]
    if (yield from _certificate_kept(cert, key, ca_cert, names, sans, user, group,
                                     renew_days, batch)):
        return
    new_key, new_cert, csr, ext = (f"{key}.autocode-new", f"{cert}.autocode-new",
                                   f"{cert}.csr", f"{cert}.ext")
    yield _new_key_and_request(new_key, csr, common_name, sans)
    yield f"printf {q(_EXTENSIONS)} > {q(ext)}"
    yield (f"openssl x509 -req -in {q(csr)} -CA {q(ca_cert)} -CAkey {q(ca_key)} "
           f"-set_serial 0x$(openssl rand -hex 16) -days {int(days)} -copy_extensions copy "
           f"-extfile {q(ext)} -out {q(new_cert)} 2>/dev/null")
    yield from _install_certificate(cert, key, new_cert, new_key, (csr, ext), user, group)


_EXTENSIONS = ("basicConstraints=critical,CA:FALSE\n"
               "keyUsage=critical,digitalSignature,keyEncipherment\n"
               "extendedKeyUsage=serverAuth,clientAuth\n")


def _certificate_kept(cert, key, ca_cert, names, sans, user, group, renew_days, batch):
    """True (after yielding any owner or mode fixes) when the certificate here is valid for
    exactly these names, verifies against the CA, matches its key and is not due."""
    want_sans = sorted(s.replace("IP:", "IPAddress:") for s in sans)
    state = host.get_fact(CertificateState, cert=cert, key=key, ca_cert=ca_cert)
    fresh = (state is not None and state["verifies"] and state["key_matches"]
             and state["sans"] == want_sans and state["end"] > time.time() + renew_days * 86400)
    if not fresh:
        return False
    files = read_items(host, PathStates, paths=tuple(batch) or (cert, key))
    changes = [*_attributes(cert, files[cert], user, group, "644"),
               *_attributes(key, files[key], user, group, "640")]
    if not changes:
        host.noop(f"{cert} is valid for {', '.join(names)} and not due for renewal")
    yield from changes
    return True


def _new_key_and_request(new_key: str, csr: str, common_name: str, sans: list[str]) -> str:
    return (f"umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
            f"-nodes -keyout {q(new_key)} -out {q(csr)} -subj {q('/CN=' + common_name)} "
            f"-addext {q('subjectAltName=' + ','.join(sans))} 2>/dev/null")


def _install_certificate(cert, key, new_cert, new_key, leftovers, user, group):
    yield (f"chown {q(user)}:{q(group)} {q(new_key)} {q(new_cert)} && chmod 640 {q(new_key)} "
           f"&& chmod 644 {q(new_cert)}")
    yield (f"mv -f {q(new_key)} {q(key)} && mv -f {q(new_cert)} {q(cert)} && "
           f"rm -f {' '.join(q(p) for p in leftovers)}")


@operation()
def certificate_signed_on_host(signer: str, signer_ca_cert: str, signer_ca_key: str,
                               cert: str, key: str, ca_cert: str, common_name: str,
                               names: tuple[str, ...], user: str, group: str, days: int = 365,
                               renew_days: int = 30, batch: tuple[str, ...] = ()):
    """A certificate for this host signed by a CA whose key is on another host of the
    inventory (the platform CA on the orchestrator), (re)made when `signed_certificate`
    would. The key is made here and never leaves this host: only the signing request goes
    to the signer and only the certificate comes back.

    + signer: the inventory name of the host with the CA key
    + signer_ca_cert, signer_ca_key: the CA's certificate and key on the signer
    + cert, key: where they live here; the key is 0640 owner `user`, group `group`
    + ca_cert: the CA certificate as this host has it, to check the certificate against
    + common_name, names, user, group, days, renew_days, batch: as for signed_certificate
    """
    sans = [_san(n) for n in dict.fromkeys(names)]
    if (yield from _certificate_kept(cert, key, ca_cert, names, sans, user, group,
                                     renew_days, batch)):
        return
    new_key, new_cert, csr = f"{key}.autocode-new", f"{cert}.autocode-new", f"{cert}.csr"
    yield _new_key_and_request(new_key, csr, common_name, sans)
    yield FunctionCommand(_sign_on_host, (signer, signer_ca_cert, signer_ca_key, csr, new_cert,
                                          int(days)), {})
    yield from _install_certificate(cert, key, new_cert, new_key, (csr,), user, group)


def _sign_on_host(state, host, signer, ca_cert, ca_key, csr, new_cert, days) -> None:
    signer_host = state.inventory.get_host(signer)
    ok, output = host.run_shell_command(f"cat -- {q(csr)}")
    request = "\n".join(output.stdout_lines).strip() + "\n" if ok else ""
    if "CERTIFICATE REQUEST" not in request:
        raise OperationError(f"could not read the signing request {csr} on {host.name}")
    # Named after the requesting host: signers of several hosts never mix them up.
    staged = f"{STAGING}/{host.name}"
    ok, _ = signer_host.run_shell_command(f"install -d -m 700 {STAGING}")
    if not ok or not signer_host.put_file(StringIO(request), f"{staged}.csr"):
        raise OperationError(f"could not send {host.name}'s signing request to {signer}")
    ok, output = signer_host.run_shell_command(
        f"printf {q(_EXTENSIONS)} > {q(staged + '.ext')} && "
        f"openssl x509 -req -in {q(staged + '.csr')} -CA {q(ca_cert)} -CAkey {q(ca_key)} "
        f"-set_serial 0x$(openssl rand -hex 16) -days {int(days)} -copy_extensions copy "
        f"-extfile {q(staged + '.ext')} 2>/dev/null; "
        f"status=$?; rm -f {q(staged + '.csr')} {q(staged + '.ext')}; exit $status")
    signed = "\n".join(output.stdout_lines).strip() + "\n" if ok else ""
    if "BEGIN CERTIFICATE" not in signed:
        raise OperationError(f"{signer} could not sign {host.name}'s certificate request")
    if not host.put_file(StringIO(signed), new_cert):
        raise OperationError(f"could not write {new_cert} on {host.name}")


@operation()
def system_accounts(users: tuple[str, ...], homes: Mapping[str, str] | None = None,
                    shell: str = "/usr/sbin/nologin"):
    """System accounts, each with a group of its own name and no login shell.

    + users: account names
    + homes: name -> home folder for the accounts that have one (created); the others
      get /nonexistent
    + shell: their shell
    """
    homes = homes or {}
    have = host.get_fact(Accounts, names=tuple(users))
    changes = []
    for name in users:
        home = homes.get(name, "/nonexistent")
        if name not in have["groups"]:
            changes.append(f"groupadd --system {q(name)}")
        user = have["users"].get(name)
        if user is None:
            create_home = "--create-home" if name in homes else "--no-create-home"
            changes.append(f"useradd --system --gid {q(name)} --shell {q(shell)} "
                           f"--home-dir {q(home)} {create_home} {q(name)}")
            continue
        fixes = []
        if user["shell"] != shell:
            fixes.append(f"--shell {q(shell)}")
        if user["home"] != home:
            fixes.append(f"--home {q(home)}")
        if user["group"] != name:
            fixes.append(f"--gid {q(name)}")
        if fixes:
            changes.append(f"usermod {' '.join(fixes)} {q(name)}")
    if not changes:
        host.noop(f"accounts {', '.join(users)} exist")
    yield from changes


@operation()
def sysctls(values: Mapping[str, int | str], persist_file: str):
    """Kernel settings, set now and persisted in one sysctl.d file.

    + values: key -> value
    + persist_file: the sysctl.d file that keeps them across reboots
    """
    text = "".join(f"{key} = {value}\n" for key, value in sorted(values.items()))
    have = host.get_fact(Sysctls, keys=tuple(sorted(values)), persist_file=persist_file)
    commands = [f"sysctl -q -w {q(f'{key}={value}')}" for key, value in sorted(values.items())
                if have.get(key) != str(value)]
    if have.get("file") != digest(text):
        commands += _upload(text, persist_file, "root", "root", "644")
    if not commands:
        host.noop(f"{len(values)} kernel settings are as wanted")
    yield from commands


@operation()
def firewall_ruleset(path: str, content_digest: str, family: int = 4):
    """Load the ruleset at `path` (whose content hashes to `content_digest`) when it differs
    from the one last loaded, or when the live rules drifted from what was loaded.

    The file is checked with `iptables-restore --test` first and loaded in one atomic
    restore; then copied to `<path>.good`, which is what the boot unit restores, so a bad
    file never replaces the last good ruleset at boot.

    + path: the complete ruleset file on the host
    + content_digest: sha256 of the text written there
    + family: 4 or 6
    """
    marker = f"{path}.loaded"
    state = host.get_fact(FirewallState, family=family, marker=marker)
    if state["file"] == content_digest and state["loaded"] == state["live"]:
        host.noop(f"IPv{family} ruleset {path} is loaded and unchanged")
        return
    restore = "iptables-restore" if family == 4 else "ip6tables-restore"
    yield f"{restore} --test {q(path)}"
    yield f"{restore} {q(path)}"
    yield f"cp {q(path)} {q(path + '.good')}"
    yield (f"printf '%s %s\\n' {q(content_digest)} "
           f"\"$({live_ruleset_digest_command(family)})\" > {q(marker)}")


@operation()
def default_gateway(gateway: str):
    """Make `gateway` the only IPv4 default route.

    + gateway: the router's address
    """
    if host.get_fact(DefaultGateways) == [gateway]:
        host.noop(f"default route is via {gateway}")
        return
    yield f"ip -4 route replace default via {q(gateway)}"


@reads(PathStates, lambda a: (a["path"],))
@operation()
def checked_config(path: str, text: str, check_command: str, user: str, group: str,
                   mode: str):
    """A config file holding exactly `text`, put in place only after `check_command`
    (with `{}` standing for the new file) accepted it: a refused one stays beside it as
    `<path>.refused` for the operator, and the file in use is untouched.

    + path, text: the file and its content
    + check_command: validates a candidate, e.g. `tool check --config {}`
    + user, group, mode: owner and mode of the file
    """
    state = read_items(host, PathStates, paths=(path,)).get(path)
    if state is not None and state["sha256"] == digest(text) and \
            (state["user"], state["group"], _mode(state["mode"])) == (user, group, _mode(mode)):
        host.noop(f"{path} is as wanted")
        return
    candidate = f"{STAGING}/{path.strip('/').replace('/', '_')}"
    yield f"install -d -m 755 {STAGING}"
    yield from _upload(text, candidate, user, group, mode)
    refused = f"{path}.refused"
    yield (f"if {check_command.format(q(candidate))}; then mv -f {q(candidate)} {q(path)} && "
           f"rm -f {q(refused)}; else mv -f {q(candidate)} {q(refused)}; echo "
           f"{q(f'{path} was not changed: the new file is refused (kept as {refused})')} >&2; "
           "exit 1; fi")


@reads(UnitStates, lambda a: _unit_items((a["unit"],)))
@operation()
def unit_removed(unit: str):
    """A unit something else replaces (another runner): stopped, disabled, its file and
    start record removed.

    + unit: the unit's name
    """
    state = read_items(host, UnitStates, units=_unit_items((unit,)))[unit]
    if state["unit"] is None and state["active"] != "active":
        host.noop(f"{unit} is not installed")
        return
    yield f"systemctl disable --now {q(unit)}"
    yield f"rm -f {q(UNIT_DIR + '/' + unit)} {q(UNIT_MARKERS + '/' + unit)}"
    yield "systemctl daemon-reload"


@operation()
def pinned_install(item: str, want: str, have: str | None, commands: tuple[str, ...]):
    """Something installed at a pinned version (a CLI, Node): `commands` run when the
    version installed, as a fact read it, is not `want`.

    + item: what it is, for messages
    + want: the pinned version
    + have: the installed version, None when it is not installed
    + commands: how to install `want`
    """
    if have == want:
        host.noop(f"{item} {want} is installed")
        return
    yield from commands


@operation()
def barrier(description: str):
    """A no-op that orders hosts: called from one line for every host, it is one node in
    pyinfra's operation graph, so each host's operations before it run before any host's
    operations after it.

    + description: what the hosts wait for
    """
    host.noop(description)
    return
    yield  # an operation is a generator


def folder_paths(root: str, tree: Mapping[str, object]) -> list[tuple[str, str]]:
    """(relative, absolute) paths of a data tree, parents before children."""
    ordered = sorted(tree, key=lambda p: (p.count("/"), p) if p else (-1, ""))
    return [(rel, str(PurePosixPath(root) / rel) if rel else root) for rel in ordered]
