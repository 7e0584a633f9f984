"""Issue 6 end to end: aescbc -> KMS v2 -> KEK rotation on a fresh lab, and the refusal while a plugin is down.

On a fresh lab holding a few hundred plaintext Secrets, in restart mode
(kubecrypt_automatic_reload=false, the fast one):

1. ``enable`` with aescbc;
2. ``enable`` with kms (the lab's KMS v2 plugin, lab/kms_plugin.py): every
   Secret ends up under ``k8s:enc:kms:v2:lab-kms:`` with the KMS's key ID, and
   the aescbc key is pruned from every node's config;
3. the KMS rotates its KEK (a new key ID) and ``rotate`` rewrites: every Secret
   is under the new key ID.

After each step every apiserver returns every Secret with the data it was
created with.  What is stored is read raw from etcd with etcdctl and the key
ID is decoded with the protobuf runtime from the upstream
EncryptedObject definition, not with the collection's own parser.

Then, with the plugin of cp2 stopped, ``rotate`` and ``rewrite`` refuse to
start and name cp2, and nothing on the nodes changes.

The wall time of each step is printed (``pytest -s``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from labcheck import apiserver_secrets, check
from labctl import NODES, REPO, create_secrets, etcdctl_env, kubectl, lab_path, reset_lab, run_playbook, wait_for

SECRETS = 300
NAMESPACE = "kms-e2e"
KMS_NAME = "lab-kms"
KMS_PREFIX = b"k8s:enc:kms:v2:%s:" % KMS_NAME.encode()
RESTART = {"kubecrypt_automatic_reload": False}
UPSTREAM_PROTO_DIR = os.path.join(REPO, "tests", "unit", "plugins", "module_utils", "fixtures")

WALL_TIMES = []


@pytest.fixture(scope="module")
def kms_lab(lab):
    """A fresh lab for this module; afterwards a fresh one again, storing plaintext, for the modules after it."""
    reset_lab()
    yield
    if WALL_TIMES:
        print("\nkms wall times: " + "; ".join(WALL_TIMES))
    reset_lab()


def timed(what, function, *args, **kwargs):
    started = time.monotonic()
    result = function(*args, **kwargs)
    WALL_TIMES.append("%s %.0fs" % (what, time.monotonic() - started))
    print("\n%s: %.0fs" % (what, time.monotonic() - started))
    return result


def playbook(name, **extra_vars):
    result = run_playbook("kubecrypt.at_rest.%s" % name, extra_vars=dict(RESTART, **extra_vars))
    assert result.returncode == 0, "%s failed:\n%s" % (name, result.stdout[-6000:])
    return result.stdout


# ---------------------------------------------------------------------------
# Looking from outside the collection


def _encrypted_object_class():
    """EncryptedObject compiled from the verbatim upstream api.proto (grpcio-tools, in memory)."""
    import grpc
    sys.path.insert(0, UPSTREAM_PROTO_DIR)
    try:
        return grpc.protos("kmsv2_encrypted_object.proto").EncryptedObject
    finally:
        sys.path.remove(UPSTREAM_PROTO_DIR)


def stored_secrets():
    """{etcd key: raw value} of every Secret of the test namespace, read with etcdctl."""
    result = subprocess.run([lab_path("bin", "etcdctl"), "get", "/registry/secrets/%s/" % NAMESPACE, "--prefix",
                             "-w", "json"], env=etcdctl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=120, check=True)
    return dict((base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")))
                for kv in json.loads(result.stdout).get("kvs") or [])


def kms_key_ids():
    """{key ID: count} over the test namespace's Secrets; values that are not kms v2 count under their prefix."""
    encrypted_object = _encrypted_object_class()
    counts = {}
    for value in stored_secrets().values():
        if value.startswith(KMS_PREFIX):
            envelope = encrypted_object.FromString(value[len(KMS_PREFIX):])
            label = envelope.keyID
        else:
            label = "not kms v2: %r" % value[:24]
        counts[label] = counts.get(label, 0) + 1
    return counts


def assert_every_apiserver_reads_every_secret(expect):
    report = check(expect, NAMESPACE)
    assert report["ok"], json.dumps(report, indent=1)
    assert report["secrets_served"] == dict((node, SECRETS) for node in NODES), report
    for node, ip in NODES.items():
        served = apiserver_secrets(ip, NAMESPACE)
        wrong = [name for name, data in served.items()
                 if base64.b64decode(data["password"]).decode() != "value-%s" % name.rsplit("-", 1)[1]]
        assert not wrong, "%s returns other data for %s" % (node, wrong[:5])


def config_providers(node):
    """The provider elements of the secrets group in the node's EncryptionConfiguration (types and names only)."""
    with open(lab_path("nodes", node, "etc", "kubernetes", "enc", "encryption-config.yaml")) as handle:
        config = yaml.safe_load(handle)
    group = next(group for group in config["resources"] if "secrets" in group["resources"])
    described = []
    for element in group["providers"]:
        (kind, body), = element.items()
        if kind == "kms":
            described.append("kms:%s:%s" % (body["name"], body.get("apiVersion")))
        elif kind == "identity":
            described.append("identity")
        else:
            described.extend("%s:%s" % (kind, key["name"]) for key in body["keys"])
    return described


def kms_plugin(*args):
    result = subprocess.run([sys.executable, os.path.join(REPO, "lab", "kms_plugin.py")] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def keks():
    return json.loads(kms_plugin("keks", "--keks", lab_path("kms", "keks.json")))


def kms_health(node):
    result = kubectl("get", "--raw", "/readyz/kms-providers", server=NODES[node], check=False)
    return result.returncode == 0 and result.stdout.strip() == "ok"


def node_files(node):
    """sha256 of what a phase would change on a node: its config file and its manifests (the kubelet skips dot-files)."""
    root = lab_path("nodes", node, "etc", "kubernetes")
    digests = {}
    manifests = os.path.join(root, "manifests")
    for path in [os.path.join(root, "enc", "encryption-config.yaml")] + [
            os.path.join(manifests, name) for name in sorted(os.listdir(manifests)) if not name.startswith(".")]:
        with open(path, "rb") as handle:
            digests[path] = hashlib.sha256(handle.read()).hexdigest()
    return digests


# ---------------------------------------------------------------------------


def test_aescbc_then_kms_then_kek_rotation(kms_lab):
    create_secrets(SECRETS, NAMESPACE)
    first_kek = keks()["current"]

    timed("enable aescbc", playbook, "enable", kubecrypt_provider="aescbc")
    assert_every_apiserver_reads_every_secret("aescbc")

    timed("enable kms (aescbc -> kms v2)", playbook, "enable", kubecrypt_provider="kms")
    assert kms_key_ids() == {first_kek: SECRETS}
    for node in NODES:
        assert config_providers(node) == ["kms:%s:v2" % KMS_NAME], "%s still holds the local key" % node
    assert_every_apiserver_reads_every_secret("kms:%s" % KMS_NAME)

    new_kek = kms_plugin("rotate", "--keks", lab_path("kms", "keks.json"))
    assert new_kek != first_kek and keks()["key_ids"] == sorted([first_kek, new_kek])
    output = timed("rotate (KEK rotation rewrite)", playbook, "rotate")
    assert "under key ID hash sha256:%s" % hashlib.sha256(new_kek.encode()).hexdigest() in output
    assert kms_key_ids() == {new_kek: SECRETS}
    for node in NODES:
        assert config_providers(node) == ["kms:%s:v2" % KMS_NAME]
    assert_every_apiserver_reads_every_secret("kms:%s" % KMS_NAME)

    # A second run finds nothing stale and rewrites nothing.
    output = timed("rotate again (nothing to rewrite)", playbook, "rotate")
    assert "Rewrite in batches" not in output
    assert kms_key_ids() == {new_kek: SECRETS}
    timed("verify", playbook, "verify")


def test_refuses_to_start_a_phase_while_a_plugin_is_down(kms_lab):
    assert all(kms_health(node) for node in NODES), "the chain above left a KMS plugin down"
    manifests = lab_path("nodes", "cp2", "etc", "kubernetes", "manifests")
    stopped = os.path.join(manifests, ".kms-plugin.yaml.stopped-by-test")
    before = dict((node, node_files(node)) for node in NODES)
    os.rename(os.path.join(manifests, "kms-plugin.yaml"), stopped)  # the kubelet stops the pod
    try:
        wait_for(lambda: not kms_health("cp2"), timeout=90, what="cp2's apiserver to notice its KMS plugin is down")
        for name in ("rotate", "rewrite"):
            started = time.monotonic()
            result = run_playbook("kubecrypt.at_rest.%s" % name, extra_vars=RESTART)
            WALL_TIMES.append("%s refused %.0fs" % (name, time.monotonic() - started))
            assert result.returncode != 0, result.stdout[-4000:]
            assert "The KMS plugin is not healthy on cp2 (cp2: HTTP 500" in result.stdout, result.stdout[-4000:]
            assert "Nothing was changed" in result.stdout
            assert dict((node, node_files(node)) for node in NODES) == dict(
                before, cp2=dict((path, digest) for path, digest in before["cp2"].items()
                                 if not path.endswith("/kms-plugin.yaml"))), "a refused run changed a node"
    finally:
        os.rename(stopped, os.path.join(manifests, "kms-plugin.yaml"))
    wait_for(lambda: kms_health("cp2"), timeout=120, what="cp2's KMS plugin to be back")
    assert dict((node, node_files(node)) for node in NODES) == before
    assert_every_apiserver_reads_every_secret("kms:%s" % KMS_NAME)
