"""kubeadm_config: the KMS v2 plugins' socket directories as extraVolumes (kms_socket_dirs)."""

from __future__ import annotations

import os

import pytest
import yaml

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.apiserver_manifest import OptionError
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.kubeadm_config import (
    KubeadmConfigError,
    update_cluster_configuration,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CONFIG = "/etc/kubernetes/enc/encryption-config.yaml"
SOCKETS = "/var/run/kmsplugin"


def fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        return handle.read()


def present(text, **kwargs):
    return update_cluster_configuration(text, encryption_config=CONFIG, **kwargs)


def volumes(text):
    config = next(document for document in yaml.safe_load_all(text)
                  if isinstance(document, dict) and document.get("kind") == "ClusterConfiguration")
    return dict((volume["name"], volume) for volume in config["apiServer"].get("extraVolumes") or [])


@pytest.mark.parametrize("name", ["kubeadm-config-v1beta3.yaml", "kubeadm-config-v1beta4.yaml", "kubeadm-init.conf"])
def test_a_socket_directory_is_recorded_writable_and_removed_again(name):
    before, dummy = present(fixture(name))
    with_socket, changes = present(before, kms_socket_dirs=[SOCKETS])
    volume = volumes(with_socket)["kubecrypt-kms-socket"]
    assert (volume["hostPath"], volume["mountPath"], volume["pathType"], volume["readOnly"]) == (
        SOCKETS, SOCKETS, "DirectoryOrCreate", False)
    assert present(with_socket, kms_socket_dirs=[SOCKETS])[0] == with_socket
    assert present(with_socket)[0] == with_socket
    assert present(with_socket, kms_socket_dirs=[])[0] == before
    assert update_cluster_configuration(with_socket, encryption_config=CONFIG, state="absent")[0] == \
        update_cluster_configuration(before, encryption_config=CONFIG, state="absent")[0]


def test_a_directory_under_the_certificates_dir_is_not_recorded_again():
    after, changes = present(fixture("kubeadm-config-v1beta4.yaml"), kms_socket_dirs=["/etc/kubernetes/pki/kms"])
    assert not any("KMS" in change for change in changes.descriptions)


def test_a_foreign_volume_at_the_directory_is_refused():
    text = fixture("kubeadm-config-v1beta4.yaml")
    config = yaml.safe_load(text)
    config.setdefault("apiServer", {})["extraVolumes"] = [
        {"name": "kms", "hostPath": "/srv/kms", "mountPath": SOCKETS, "pathType": "Directory"}]
    with pytest.raises(KubeadmConfigError, match="cannot mount the KMS plugin socket directory"):
        present(yaml.safe_dump(config), kms_socket_dirs=[SOCKETS])


def test_unusable_directories_are_refused():
    with pytest.raises(OptionError, match="kms_socket_dirs"):
        present(fixture("kubeadm-config-v1beta4.yaml"), kms_socket_dirs=["relative"])
