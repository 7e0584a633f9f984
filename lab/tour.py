"""A short tour of the running lab: what runs, and how a Secret is stored."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

from labctl import LB, NODES, etcd_get_raw, kubectl  # noqa: E402  (shared with the tests)


def main():
    print("== what runs", flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, "lab.py"), "status"], check=False)
    print("\n== every endpoint serves")
    for ip in list(NODES.values()) + [LB]:
        ready = kubectl("get", "--raw", "/readyz", server=ip, check=False).stdout.strip()
        print("https://%s:6443/readyz  %s" % (ip, ready or "NOT READY"))
    print("\n== a Secret, as etcd stores it without encryption at rest")
    kubectl("-n", "default", "delete", "secret", "tour-secret", "--ignore-not-found")
    kubectl("-n", "default", "create", "secret", "generic", "tour-secret", "--from-literal=password=hunter2")
    raw = etcd_get_raw("/registry/secrets/default/tour-secret")
    print("/registry/secrets/default/tour-secret: %d bytes, starts with %r" % (len(raw), raw[:4]))
    print("the password is readable in etcd: %s" % ("yes" if b"hunter2" in raw else "no"))
    kubectl("-n", "default", "delete", "secret", "tour-secret", "--wait=false")


if __name__ == "__main__":
    main()
