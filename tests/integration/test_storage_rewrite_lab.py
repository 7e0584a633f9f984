"""storage_rewrite against a real kube-apiserver (one of the tests' own, on the lab's etcd), checked in etcd.

The apiserver first stores secrets in plaintext (identity first, the secretbox
key only readable), then restarts with the secretbox key first: every secret
is stale until the rewrite.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.storage_rewrite import resources_fingerprint
from labctl import etcdctl_env, lab_path
from standalone_k8s import StandaloneApiserver, run_module, secretbox_config

SECRETS = 23
KEY = base64.b64encode(os.urandom(32)).decode()
PLAINTEXT = b"k8s\x00"
ENCRYPTED = b"k8s:enc:secretbox:v1:k1:"


def _objects(kind, count, prefix):
    items = []
    for index in range(count):
        value = b"value %d" % index
        items.append({"apiVersion": "v1", "kind": kind,
                      "metadata": {"name": "%s-%02d" % (prefix, index), "namespace": "default"},
                      "data": {"value": base64.b64encode(value).decode() if kind == "Secret" else value.decode()}})
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _resource_versions(apiserver, resource):
    listing = json.loads(apiserver.kubectl("get", resource, "-n", "default", "-o", "json").stdout)
    return dict((item["metadata"]["name"], item["metadata"]["resourceVersion"]) for item in listing["items"])


def _raw(apiserver, resource, name):
    return apiserver.etcd_get_raw(apiserver.etcd_key(resource, "default", name))


@pytest.fixture(scope="module")
def stale(lab):
    config = secretbox_config([("k1", KEY)], identity_first=True)
    apiserver = StandaloneApiserver(ip="127.0.0.31", encryption_config=config)
    try:
        apiserver.start()
        apiserver.kubectl("apply", "-f", "-", input=_objects("Secret", SECRETS, "rw"))
        apiserver.kubectl("apply", "-f", "-", input=_objects("ConfigMap", 3, "cm"))
        for index in range(SECRETS):
            assert _raw(apiserver, "secrets", "rw-%02d" % index).startswith(PLAINTEXT)
        apiserver.write_encryption_config(secretbox_config([("k1", KEY)]))
        apiserver.restart()
        yield apiserver
    finally:
        apiserver.cleanup()


def test_rewrite_in_batches_writes_stale_objects_only(stale):
    params = stale.auth_params(resources=["secrets", "configmaps"], namespace="default", page_size=4,
                               batch_size=10, concurrency=3)

    # Check mode: a server-side dry run, nothing is written.
    before = _resource_versions(stale, "secrets")
    assert len(before) == SECRETS
    check = run_module("storage_rewrite", params, check_mode=True)
    assert not check.get("failed"), check
    assert check["would_update"] == 10 and check["rewritten"] == 0 and check["changed"] is True
    assert _resource_versions(stale, "secrets") == before
    assert _raw(stale, "secrets", "rw-00").startswith(PLAINTEXT)

    # The real thing, in batches of 10, resumed with the continue token.
    token, runs = "", []
    while True:
        result = run_module("storage_rewrite", dict(params, continue_token=token))
        assert not result.get("failed"), result
        runs.append(result)
        token = result["continue_token"]
        if result["done"]:
            break
        assert token and len(runs) < 10
    assert [r["listed"] for r in runs] == [10, 10, 6]
    assert sum(r["rewritten"] for r in runs) == SECRETS
    assert sum(r["unchanged"] for r in runs) == 3  # the configmaps, not encrypted
    assert sum(r["errors"] + r["gone"] + r["conflicts"] for r in runs) == 0
    assert runs[-1]["resources_done"] == ["secrets", "configmaps"] and runs[-1]["continue_token"] == ""
    assert runs[1]["resources_done"] == [] and runs[2]["changed"] is True

    after = _resource_versions(stale, "secrets")
    for name, version in before.items():
        assert after[name] != version, name
        assert _raw(stale, "secrets", name).startswith(ENCRYPTED), name
    assert _raw(stale, "configmaps", "cm-00").startswith(PLAINTEXT)
    secret = json.loads(stale.kubectl("get", "secret", "-n", "default", "rw-07", "-o", "json").stdout)
    assert base64.b64decode(secret["data"]["value"]) == b"value 7"

    # Again: every object is current, so nothing is written and no resourceVersion moves.
    again = run_module("storage_rewrite", dict(params, batch_size=1000))
    assert not again.get("failed"), again
    everything = SECRETS + 3
    counts = (again["listed"], again["rewritten"], again["unchanged"], again["changed"])
    assert counts == (everything, 0, everything, False)
    assert _resource_versions(stale, "secrets") == after


def test_expired_continue_token_restarts_the_listing(stale):
    # An API continue token at revision 2, compacted here (a fresh lab may not
    # have compacted yet): the apiserver answers 410 Gone.
    _compact_etcd()
    api_token = base64.urlsafe_b64encode(json.dumps(
        {"v": "meta.k8s.io/v1", "rv": 2, "start": "default/rw-05\u0000"}).encode()).decode().rstrip("=")
    module_token = base64.urlsafe_b64encode(json.dumps({"v": 1, "i": 0, "c": api_token, "f": _fingerprint()},
                                                       separators=(",", ":"), sort_keys=True).encode()
                                            ).decode().rstrip("=")
    result = run_module("storage_rewrite", stale.auth_params(namespace="default", continue_token=module_token))
    assert not result.get("failed"), result
    assert result["restarted_listings"] == ["secrets"]
    assert result["listed"] == SECRETS and result["done"] is True


def test_bad_token_and_unknown_resource_fail_cleanly(stale):
    bad = run_module("storage_rewrite", stale.auth_params(continue_token="garbage"))
    assert bad["failed"] and "not a continue token" in bad["msg"]
    unknown = run_module("storage_rewrite", stale.auth_params(resources=["secrets", "nonexistents"]))
    assert unknown["failed"] and "nonexistents" in unknown["msg"]


def _fingerprint():
    return resources_fingerprint(["secrets"], "default")


def _compact_etcd():
    """Compact the lab's etcd at its current revision (history only; no key is lost)."""
    etcdctl = lab_path("bin", "etcdctl")
    status = subprocess.run([etcdctl, "get", "/", "--prefix", "--keys-only", "--limit", "1", "-w", "json"],
                            env=etcdctl_env(), stdout=subprocess.PIPE, check=True, timeout=60)
    revision = json.loads(status.stdout)["header"]["revision"]
    subprocess.run([etcdctl, "compact", str(revision)], env=etcdctl_env(), stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, check=True, timeout=60)
