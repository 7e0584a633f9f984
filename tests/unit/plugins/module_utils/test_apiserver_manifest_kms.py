"""apiserver_manifest: the mounts of the KMS v2 plugins' socket directories (kms_socket_dirs)."""

from __future__ import annotations

import os

import pytest
import yaml

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.apiserver_manifest import (
    ManifestError,
    OptionError,
    update_manifest,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CONFIG = "/etc/kubernetes/enc/encryption-config.yaml"
SOCKETS = "/var/run/kmsplugin"


def kubeadm_manifest():
    with open(os.path.join(FIXTURES, "kube-apiserver.yaml"), encoding="utf-8") as handle:
        return handle.read()


def present(text, **kwargs):
    return update_manifest(text, encryption_config=CONFIG, **kwargs)


def mounts(text):
    pod = yaml.safe_load(text)
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "kube-apiserver")
    volumes = dict((volume["name"], volume) for volume in pod["spec"]["volumes"])
    return dict((mount["mountPath"], (mount["name"], volumes[mount["name"]]["hostPath"], mount.get("readOnly")))
                for mount in container["volumeMounts"])


def test_a_socket_directory_is_mounted_at_its_own_path_and_writable():
    after, changes = present(kubeadm_manifest(), kms_socket_dirs=[SOCKETS])
    assert mounts(after)[SOCKETS] == ("kubecrypt-kms-socket", {"path": SOCKETS, "type": "DirectoryOrCreate"}, None)
    assert any("kubecrypt-kms-socket" in change for change in changes.descriptions)
    again, changes = present(after, kms_socket_dirs=[SOCKETS])
    assert again == after and not changes


def test_two_directories_get_two_volumes():
    after, dummy = present(kubeadm_manifest(), kms_socket_dirs=[SOCKETS, "/run/other-kms"])
    assert mounts(after)[SOCKETS][0] == "kubecrypt-kms-socket"
    assert mounts(after)["/run/other-kms"][0] == "kubecrypt-kms-socket-2"


def test_omitting_the_option_leaves_socket_mounts_alone():
    with_socket, dummy = present(kubeadm_manifest(), kms_socket_dirs=[SOCKETS])
    after, changes = present(with_socket)
    assert after == with_socket and not changes


def test_an_empty_list_removes_them_and_gives_back_the_bytes_before():
    before, dummy = present(kubeadm_manifest())
    with_socket, dummy = present(before, kms_socket_dirs=[SOCKETS])
    after, changes = present(with_socket, kms_socket_dirs=[])
    assert after == before
    assert changes.descriptions == ["removed volume kubecrypt-kms-socket of the KMS plugin socket directory %s"
                                    % SOCKETS]


def test_a_moved_socket_replaces_the_old_mount():
    with_socket, dummy = present(kubeadm_manifest(), kms_socket_dirs=[SOCKETS])
    after, dummy = present(with_socket, kms_socket_dirs=["/run/kms-v2"])
    assert SOCKETS not in mounts(after)
    assert mounts(after)["/run/kms-v2"][0] == "kubecrypt-kms-socket"


def test_state_absent_removes_socket_mounts_too():
    original = kubeadm_manifest()
    with_socket, dummy = present(original, kms_socket_dirs=[SOCKETS])
    after, dummy = update_manifest(with_socket, encryption_config=CONFIG, state="absent")
    assert after == original


def test_a_directory_an_existing_mount_covers_is_not_mounted_again():
    # kubeadm mounts /etc/kubernetes/pki at the same path
    after, changes = present(kubeadm_manifest(), kms_socket_dirs=["/etc/kubernetes/pki/kms"])
    assert "/etc/kubernetes/pki/kms" not in mounts(after)
    assert not any("KMS" in change for change in changes.descriptions)


def test_a_foreign_mount_at_the_directory_is_refused():
    pod = yaml.safe_load(kubeadm_manifest())
    pod["spec"]["volumes"].append({"name": "kms", "hostPath": {"path": "/srv/kms", "type": "Directory"}})
    container = pod["spec"]["containers"][0]
    container["volumeMounts"].append({"name": "kms", "mountPath": SOCKETS})
    with pytest.raises(ManifestError, match="cannot mount the KMS plugin socket directory"):
        present(yaml.safe_dump(pod), kms_socket_dirs=[SOCKETS])


@pytest.mark.parametrize("directories", [["relative/dir"], ["/"], ["/var/run/kms/"], ["/var/../run"], "/var/run"])
def test_unusable_directories_are_refused(directories):
    with pytest.raises(OptionError, match="kms_socket_dirs"):
        present(kubeadm_manifest(), kms_socket_dirs=directories)
