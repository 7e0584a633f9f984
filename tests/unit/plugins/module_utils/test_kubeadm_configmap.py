"""The kubeadm-config ConfigMap is changed by read, modify, write with the resourceVersion read."""

from __future__ import annotations

import copy
import os

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.k8s import ApiError
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.kubeadm_config import (
    CONFIGMAP_PATH,
    update_configmap,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CONFIG = "/etc/kubernetes/enc/encryption-config.yaml"


def _configmap(resource_version="100"):
    with open(os.path.join(FIXTURES, "kubeadm-config-v1beta4.yaml")) as handle:
        text = handle.read()
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubeadm-config", "namespace": "kube-system", "resourceVersion": resource_version},
            "data": {"ClusterConfiguration": text}}


class _Client(object):
    """Answers like the API server: GET returns the stored object, PUT checks resourceVersion."""

    def __init__(self, stored, conflicts=0):
        self.stored = stored
        self.conflicts = conflicts
        self.puts = []

    def request(self, method, path, body=None, **kwargs):
        assert path == CONFIGMAP_PATH
        if self.stored is None:
            raise ApiError(404, "NotFound", path, method)
        if method == "GET":
            return 200, {}, copy.deepcopy(self.stored)
        self.puts.append(body)
        if self.conflicts:
            self.conflicts -= 1
            self.stored["metadata"]["resourceVersion"] = str(int(self.stored["metadata"]["resourceVersion"]) + 1)
            raise ApiError(409, "Conflict", path, method)
        assert body["metadata"]["resourceVersion"] == self.stored["metadata"]["resourceVersion"]
        self.stored = body
        return 200, {}, body


def test_records_the_flag_and_is_idempotent():
    client = _Client(_configmap())
    found, before, after, dummy = update_configmap(client, CONFIG, True, "present")
    assert found and before != after
    assert "encryption-provider-config" in client.stored["data"]["ClusterConfiguration"]
    found, before, after, dummy = update_configmap(client, CONFIG, True, "present")
    assert before == after and len(client.puts) == 1


def test_a_cluster_without_kubeadm_config_is_left_alone():
    assert update_configmap(_Client(None), CONFIG, True, "present")[0] is False


def test_check_mode_writes_nothing():
    client = _Client(_configmap())
    found, before, after, dummy = update_configmap(client, CONFIG, True, "present", check_mode=True)
    assert before != after and client.puts == []


def test_a_conflict_is_read_again_and_retried():
    client = _Client(_configmap(), conflicts=2)
    update_configmap(client, CONFIG, True, "present")
    assert len(client.puts) == 3
    assert "encryption-provider-config" in client.stored["data"]["ClusterConfiguration"]


def test_endless_conflicts_fail_without_writing():
    client = _Client(_configmap(), conflicts=10)
    original = client.stored["data"]["ClusterConfiguration"]
    with pytest.raises(ApiError):
        update_configmap(client, CONFIG, True, "present")
    assert client.stored["data"]["ClusterConfiguration"] == original
