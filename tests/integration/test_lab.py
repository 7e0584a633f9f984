"""The lab behaves like the HA control plane the collection is built for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from labctl import (LAB, LB, NODES, REPO, etcd_get_raw, kubectl, kubelet_state, manifests_dir, pod_process,
                    readyz, wait_for, write_atomically)

pytestmark = pytest.mark.usefixtures("fresh_lab")


def test_every_endpoint_is_ready():
    for ip in list(NODES.values()) + [LB]:
        assert readyz(ip), "https://%s:6443/readyz is not ok" % ip


def test_etcd_has_three_started_members():
    from labctl import etcdctl_env
    result = subprocess.run([os.path.join(LAB, "bin", "etcdctl"), "member", "list", "-w", "json"],
                            env=etcdctl_env(), stdout=subprocess.PIPE, check=True, timeout=30)
    members = json.loads(result.stdout)["members"]
    assert sorted(m["name"] for m in members) == ["cp1", "cp2", "cp3"]
    assert all(m.get("clientURLs") for m in members), "a member has not started"


def test_secret_through_lb_is_read_by_every_apiserver_and_stored_plaintext():
    name = "lab-plain-%s" % uuid.uuid4().hex[:8]
    kubectl("create", "secret", "generic", name, "-n", "default", "--from-literal=password=lab-value")
    try:
        for node, ip in NODES.items():
            result = kubectl("get", "secret", name, "-n", "default", "-o", "json", server=ip)
            data = json.loads(result.stdout)["data"]
            assert data == {"password": "bGFiLXZhbHVl"}, "%s returned %r" % (node, data)
        raw = etcd_get_raw("/registry/secrets/default/%s" % name)
        assert raw.startswith(b"k8s\x00"), "not stored as plaintext protobuf: %r" % raw[:32]
        assert b"lab-value" in raw
    finally:
        kubectl("delete", "secret", name, "-n", "default", "--wait=false")


def _processes():
    return {node: {pod: pod_process(node, pod) for pod in ("etcd", "kube-apiserver")} for node in NODES}


def test_editing_one_manifest_restarts_that_apiserver_only():
    path = os.path.join(manifests_dir("cp2"), "kube-apiserver.yaml")
    with open(path) as handle:
        original = handle.read()
    before = _processes()
    manifest = yaml.safe_load(original)
    manifest["metadata"]["annotations"]["lab.kubecrypt.io/restart-test"] = uuid.uuid4().hex
    try:
        write_atomically(path, yaml.safe_dump(manifest, sort_keys=False))
        wait_for(lambda: pod_process("cp2", "kube-apiserver")[0] not in (None, before["cp2"]["kube-apiserver"][0]),
                 what="cp2's apiserver to be restarted")
        wait_for(lambda: readyz(NODES["cp2"]), what="cp2's apiserver to be ready again")
        after = _processes()
        assert after["cp2"]["kube-apiserver"] != before["cp2"]["kube-apiserver"]
        for node in ("cp1", "cp3"):
            assert after[node] == before[node], "%s was restarted too" % node
        assert after["cp2"]["etcd"] == before["cp2"]["etcd"], "cp2's etcd was restarted too"
    finally:
        write_atomically(path, original)
        wait_for(lambda: readyz(NODES["cp2"]) and kubelet_state("cp2")["pods"]["kube-apiserver"]["source"]
                 == "kube-apiserver.yaml", what="cp2's apiserver back on the original manifest")


def test_a_comment_does_not_restart_a_pod():
    path = os.path.join(manifests_dir("cp3"), "etcd.yaml")
    with open(path) as handle:
        original = handle.read()
    before = pod_process("cp3", "etcd")
    try:
        write_atomically(path, "# touched by a test\n" + original)
        time.sleep(3)  # several stand-in polls
        assert pod_process("cp3", "etcd") == before
    finally:
        write_atomically(path, original)


def _sleep_pod(name):
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": {"containers": [{"name": name, "command": ["sleep", "600"]}]},
    })


def test_backup_file_is_a_pod_and_dot_file_is_not():
    directory = manifests_dir("cp1")
    backup = os.path.join(directory, "kube-apiserver.yaml.bak")
    dot_file = os.path.join(directory, ".kube-apiserver.yaml.tmp")
    try:
        with open(backup, "w") as handle:
            handle.write(_sleep_pod("backup-pod"))
        with open(dot_file, "w") as handle:
            handle.write(_sleep_pod("dot-file-pod"))
        wait_for(lambda: pod_process("cp1", "backup-pod")[0], what="the .bak file to run as a pod")
        pid = pod_process("cp1", "backup-pod")[0]
        # The stand-in execs the container command through unshare and sh.
        wait_for(lambda: _argv(pid)[:2] == [b"sleep", b"600"], what="the backup pod to run its command")
        time.sleep(2)
        assert "dot-file-pod" not in kubelet_state("cp1")["pods"]
    finally:
        for path in (backup, dot_file):
            if os.path.exists(path):
                os.unlink(path)
    wait_for(lambda: "backup-pod" not in kubelet_state("cp1")["pods"], what="the backup pod to be stopped")
    assert not _running(pid), "the backup pod's process %d still runs after its file was removed" % pid


def _argv(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as handle:
        argv = handle.read().split(b"\0")
    return [os.path.basename(argv[0])] + argv[1:]


def _running(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_copy_of_a_manifest_is_a_duplicate_pod_and_ignored_like_the_kubelet_does():
    directory = manifests_dir("cp1")
    with open(os.path.join(directory, "kube-apiserver.yaml")) as handle:
        original = handle.read()
    before = pod_process("cp1", "kube-apiserver")
    backup = os.path.join(directory, "kube-apiserver.yaml.bak")
    try:
        with open(backup, "w") as handle:
            handle.write(original)
        wait_for(lambda: "kube-apiserver.yaml.bak" in kubelet_state("cp1")["ignored"], what="the duplicate")
        assert "duplicate pod name" in kubelet_state("cp1")["ignored"]["kube-apiserver.yaml.bak"]
        assert pod_process("cp1", "kube-apiserver") == before
    finally:
        os.unlink(backup)


def test_lab_up_again_changes_nothing():
    before = _processes()
    started = time.monotonic()
    subprocess.run([sys.executable, os.path.join(REPO, "lab", "lab.py"), "up"], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert time.monotonic() - started < 60
    assert _processes() == before
