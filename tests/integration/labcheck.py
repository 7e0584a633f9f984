"""An independent check of the lab: raw etcd values through etcdctl, and every
apiserver's view through kubectl -- deliberately not the collection's own scan
module, so that the collection is checked by something it did not write.

    python tests/integration/labcheck.py --expect secretbox [--namespace NS]

prints one JSON object and exits 0 when every Secret in etcd is stored with the
expected provider (``identity`` for plaintext, or a provider type, or
``type:key``) and every apiserver returns every Secret with the same data.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from labctl import NODES, etcdctl_env, kubectl, lab_path  # noqa: E402

PLAINTEXT_MARKERS = (b"k8s\x00", b"{")


def stored_provider(value):
    """``identity`` for plaintext, ``type:key`` for ``k8s:enc:type:v1:key:``, else ``unknown``."""
    if value.startswith(PLAINTEXT_MARKERS):
        return "identity"
    if value.startswith(b"k8s:enc:"):
        parts = value.split(b":", 5)
        if len(parts) == 6:
            return "%s:%s" % (parts[2].decode(), parts[4].decode())
    return "unknown"


def etcd_secrets(prefix="/registry/secrets/"):
    """{etcd key: provider notation} of every Secret, read raw with etcdctl."""
    result = subprocess.run([lab_path("bin", "etcdctl"), "get", prefix, "--prefix", "-w", "json"],
                            env=etcdctl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300,
                            check=True)
    answer = json.loads(result.stdout or b"{}")
    return {base64.b64decode(kv["key"]).decode(): stored_provider(base64.b64decode(kv.get("value", "")))
            for kv in answer.get("kvs") or []}


def apiserver_secrets(ip, namespace=None):
    """{namespace/name: data} as one apiserver returns them."""
    scope = ["-n", namespace] if namespace else ["-A"]
    result = kubectl("get", "secrets", *scope, "-o", "json", server=ip)
    return {"%s/%s" % (item["metadata"]["namespace"], item["metadata"]["name"]): item.get("data") or {}
            for item in json.loads(result.stdout)["items"]}


def check(expect, namespace=None):
    stored = etcd_secrets()
    by_provider = {}
    for notation in stored.values():
        by_provider[notation] = by_provider.get(notation, 0) + 1

    def matches(notation):
        return notation == expect or notation.split(":", 1)[0] == expect

    offending = sorted(key for key, notation in stored.items() if not matches(notation))
    views = {node: apiserver_secrets(ip, namespace) for node, ip in NODES.items()}
    reference = views["cp1"]
    disagree = sorted(node for node, view in views.items() if view != reference)
    etcd_names = {key[len("/registry/secrets/"):] for key in stored}
    if namespace:
        etcd_names = {name for name in etcd_names if name.startswith(namespace + "/")}
    missing = sorted(etcd_names - set(reference))
    return {
        "expect": expect,
        "secrets_in_etcd": len(stored),
        "by_provider": by_provider,
        "offending": len(offending),
        "offending_sample": offending[:10],
        "apiservers_agree": not disagree,
        "apiservers_disagreeing": disagree,
        "secrets_served": {node: len(view) for node, view in views.items()},
        "unreadable": missing[:10],
        "ok": not offending and not disagree and not missing,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", required=True, help="identity, a provider type, or type:key")
    parser.add_argument("--namespace", help="compare the apiservers' view of this namespace only")
    args = parser.parse_args()
    report = check(args.expect, args.namespace)
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
