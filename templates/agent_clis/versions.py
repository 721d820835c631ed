# What agent CLIs a worker has installed: run by tasks/agent_clis.py's fact with one JSON
# argument, {name: [how, where...]}, it prints {name: version or null}. Installed means its
# program is executable and its package metadata names a version; nothing is started.
import glob
import json
import os
import subprocess
import sys


def package_json(path, program):
    try:
        with open(path) as handle:
            version = json.load(handle)["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if os.access(program, os.X_OK) else None


def python_dist(site_glob, dist, program):
    for folder in glob.glob(f"{site_glob}/{dist}-*.dist-info"):
        version = os.path.basename(folder)[len(dist) + 1:-len(".dist-info")]
        if os.access(program, os.X_OK):
            return version
    return None


def deb(package):
    out = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", package],
                         capture_output=True, text=True)
    status, _, version = out.stdout.partition(" ")
    return version.strip() or None if out.returncode == 0 and status.startswith("ii") else None


def version_folder(link):
    # The vendor's installer links its program into a folder named by the version.
    target = os.path.realpath(link)
    return os.path.basename(os.path.dirname(target)) if os.access(target, os.X_OK) and \
        os.path.islink(link) else None


READERS = {"package-json": package_json, "python-dist": python_dist, "deb": deb,
           "version-folder": version_folder}
spec = json.loads(sys.argv[1])
print(json.dumps({name: READERS[how](*where) for name, (how, *where) in spec.items()}))
