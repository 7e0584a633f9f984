"""apiserver_wait against real kube-apiservers: a lab node, and one of the tests' own that reloads and restarts."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time

import pytest

from labctl import NODES, lab_path, pod_process
from standalone_k8s import StandaloneApiserver, run_module, secretbox_config

KEYS = dict((name, base64.b64encode(os.urandom(32)).decode()) for name in ("k1", "k2", "k3"))


def _config(*names):
    return secretbox_config([(name, KEYS[name]) for name in names])


def _sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def apiserver(lab):
    server = StandaloneApiserver(ip="127.0.0.32", encryption_config=_config("k1"), automatic_reload=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def test_info_call_on_a_lab_node(lab):
    node = "cp2"
    result = run_module("apiserver_wait", {
        "kubeconfig": lab_path("nodes", node, "etc", "kubernetes", "admin.conf"),
        "host": "https://%s:6443" % NODES[node], "wait_timeout": 30})
    assert not result.get("failed"), result
    assert result["ready"] is True and result["changed"] is False
    assert result["config_hash"] is None  # the lab runs without encryption
    assert result["method"] == "metrics" and result["server_version"] == "v1.37.2"
    _pid, started_at = pod_process(node, "kube-apiserver")
    assert abs(result["process_start_time"] - started_at) < 5


def test_config_hash_is_served_from_start_up(apiserver):
    current = open(apiserver.config_path).read()
    result = run_module("apiserver_wait", apiserver.auth_params(config_sha256=_sha256(current), wait_timeout=30))
    assert not result.get("failed"), result
    assert result["config_hash"] == "sha256:" + _sha256(current)
    wrong = run_module("apiserver_wait", apiserver.auth_params(config_sha256="0" * 64, wait_timeout=3,
                                                               wait_sleep=1))
    assert wrong["failed"]
    assert "within 3s" in wrong["msg"] and "sha256:" + _sha256(current) in wrong["msg"]
    assert wrong["config_hash"] == "sha256:" + _sha256(current)


def test_automatic_reload_is_seen_without_restart(apiserver):
    before = run_module("apiserver_wait", apiserver.auth_params(wait_timeout=30))
    new = apiserver.write_encryption_config(_config("k2", "k1")).decode()
    result = run_module("apiserver_wait", apiserver.auth_params(
        expect="reload", previous_start_time=before["process_start_time"], config_sha256=_sha256(new),
        wait_timeout=180, wait_sleep=2))
    assert not result.get("failed"), result
    assert result["restarted"] is False and result["config_hash"] == "sha256:" + _sha256(new)
    assert result["process_start_time"] == before["process_start_time"]


def test_restart_is_required_and_seen(apiserver):
    before = run_module("apiserver_wait", apiserver.auth_params(wait_timeout=30))
    new = apiserver.write_encryption_config(_config("k3", "k2", "k1")).decode()
    outcome = {}

    def wait():
        outcome["result"] = run_module("apiserver_wait", apiserver.auth_params(
            expect="restart", previous_start_time=before["process_start_time"], config_sha256=_sha256(new),
            wait_timeout=180, wait_sleep=1))

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(3)
    apiserver.restart()
    waiter.join(240)
    result = outcome["result"]
    assert not result.get("failed"), result
    assert result["restarted"] is True and result["ready"] is True
    assert result["process_start_time"] > before["process_start_time"]
    assert result["config_hash"] == "sha256:" + _sha256(new)
    assert result["elapsed"] >= 3

    # A reload was expected, but the process is a new one: fail at once, not after the timeout.
    wrong = run_module("apiserver_wait", apiserver.auth_params(
        expect="reload", previous_start_time=before["process_start_time"], config_sha256=_sha256(new),
        wait_timeout=120))
    assert wrong["failed"] and "restarted" in wrong["msg"] and wrong["elapsed"] < 30


def test_canary_is_written_through_this_node_and_read_from_etcd(apiserver):
    write_key = _first_key(apiserver)
    params = apiserver.auth_params(method="canary", expected_write_provider="secretbox:%s" % write_key,
                                   etcd_prefix=apiserver.prefix, wait_timeout=30, **apiserver.etcd)
    result = run_module("apiserver_wait", params)
    assert not result.get("failed"), result
    assert result["method"] == "canary" and result["observed_write_provider"] == "secretbox:%s" % write_key
    assert result["canary"] == {"namespace": "kube-system", "name": "kubecrypt-canary-127.0.0.32-6443"}
    raw = apiserver.etcd_get_raw(apiserver.etcd_key("secrets", "kube-system", "kubecrypt-canary-127.0.0.32-6443"))
    assert raw.startswith(("k8s:enc:secretbox:v1:%s:" % write_key).encode())

    wrong = run_module("apiserver_wait", dict(params, expected_write_provider="secretbox:other", wait_timeout=3,
                                              wait_sleep=1))
    assert wrong["failed"]
    assert "a canary secret written with secretbox:other (last: secretbox:%s)" % write_key in wrong["msg"]

    # Check mode writes nothing.
    check = run_module("apiserver_wait", dict(params, canary_name="kubecrypt-canary-check-mode"), check_mode=True)
    assert not check.get("failed"), check
    assert check["observed_write_provider"] is None and "canary" not in check
    assert apiserver.etcd_get_raw(apiserver.etcd_key("secrets", "kube-system", "kubecrypt-canary-check-mode")) == b""


def test_a_node_that_does_not_answer_fails_with_what_was_seen(lab):
    result = run_module("apiserver_wait", {"kubeconfig": lab_path("admin.conf"), "host": "https://127.0.0.39:6443",
                                           "wait_timeout": 3, "wait_sleep": 1})
    assert result["failed"] and result["ready"] is False
    assert "did not serve the expected configuration within 3s" in result["msg"]
    assert "connection refused" in result["msg"]


def _first_key(apiserver):
    text = open(apiserver.config_path).read()
    for name in ("k3", "k2", "k1"):
        if "name: %s" % name in text:
            return name
    raise AssertionError("no key in the config")
