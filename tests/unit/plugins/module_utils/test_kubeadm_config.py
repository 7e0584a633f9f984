# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import difflib
import os

import pytest
import yaml

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.apiserver_manifest import OptionError
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.kubeadm_config import (
    KubeadmConfigError,
    update_cluster_configuration,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CONFIG = "/etc/kubernetes/encryption/config.yaml"
V1BETA3 = "kubeadm-config-v1beta3.yaml"
V1BETA4 = "kubeadm-config-v1beta4.yaml"
INIT = "kubeadm-init.conf"  # several documents: ansible-test lints .yaml files as single documents
ALL = [V1BETA3, V1BETA4, INIT]


def fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        return handle.read()


def cluster_configuration(text):
    return next(d for d in yaml.safe_load_all(text) if d.get("kind") == "ClusterConfiguration")


def documents(text):
    """The text of each document, split at the '---' lines."""
    return text.split("\n---\n")


def assert_only_added_lines(before, after):
    matcher = difflib.SequenceMatcher(None, before.splitlines(True), after.splitlines(True), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        assert tag in ("equal", "insert"), "lines %d-%d were %s" % (i1 + 1, i2, tag)


def present(text, **kwargs):
    kwargs.setdefault("encryption_config", CONFIG)
    return update_cluster_configuration(text, **kwargs)


def absent(text, **kwargs):
    return update_cluster_configuration(text, state="absent", **kwargs)


def test_v1beta3_configmap_gets_map_extra_args():
    before = fixture(V1BETA3)
    after, changes = present(before)
    assert after == before.replace(
        "    authorization-mode: Node,RBAC\n",
        "    authorization-mode: Node,RBAC\n"
        "    encryption-provider-config: /etc/kubernetes/encryption/config.yaml\n"
        "    encryption-provider-config-automatic-reload: 'true'\n"
        "  extraVolumes:\n"
        "  - hostPath: /etc/kubernetes/encryption\n"
        "    mountPath: /etc/kubernetes/encryption\n"
        "    name: kubecrypt-encryption-config\n"
        "    pathType: DirectoryOrCreate\n"
        "    readOnly: true\n",
    )
    api_server = cluster_configuration(after)["apiServer"]
    # kubeadm's v1beta3 extraArgs is map[string]string: the value must load as a string
    assert api_server["extraArgs"]["encryption-provider-config-automatic-reload"] == "true"
    assert changes.api_version == "kubeadm.k8s.io/v1beta3"
    assert changes.flags == {
        "encryption-provider-config": CONFIG,
        "encryption-provider-config-automatic-reload": "true",
    }
    assert changes.volume_name == "kubecrypt-encryption-config"


def test_v1beta4_configmap_gets_list_extra_args():
    before = fixture(V1BETA4)
    after, changes = present(before)
    api_server = cluster_configuration(after)["apiServer"]
    assert api_server == {
        "extraArgs": [
            {"name": "encryption-provider-config", "value": CONFIG},
            {"name": "encryption-provider-config-automatic-reload", "value": "true"},
        ],
        "extraVolumes": [{
            "hostPath": "/etc/kubernetes/encryption",
            "mountPath": "/etc/kubernetes/encryption",
            "name": "kubecrypt-encryption-config",
            "pathType": "DirectoryOrCreate",
            "readOnly": True,
        }],
    }
    # `apiServer: {}` becomes a block; every other line stays
    removed = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line.startswith("- ")]
    assert removed == ["- apiServer: {}"]
    assert after.startswith("apiServer:\n  extraArgs:\n  - name: encryption-provider-config\n")
    assert changes.api_version == "kubeadm.k8s.io/v1beta4"


def test_multi_document_file_changes_only_the_cluster_configuration():
    before = fixture(INIT)
    after, changes = present(before)
    assert_only_added_lines(before, after)
    old, new = documents(before), documents(after)
    assert new[0] == old[0] and new[2] == old[2]
    assert "# keep the audit policy in sync with roles/audit" in new[1]
    api_server = cluster_configuration(after)["apiServer"]
    names = [arg["name"] for arg in api_server["extraArgs"]]
    assert names == sorted(names)
    # the new extra volume follows the key order of the one already there
    assert "  - name: kubecrypt-encryption-config\n    hostPath: /etc/kubernetes/encryption\n" in after
    assert api_server["extraVolumes"][0]["name"] == "audit-policy"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("options", [dict(), dict(automatic_reload=False)])
def test_idempotent_and_reversible(name, options):
    before = fixture(name)
    after, changes = present(before, **options)
    assert after != before and changes.descriptions
    again, changes = present(after, **options)
    assert again == after and changes.descriptions == []
    restored, changes = absent(after, encryption_config=CONFIG)
    assert restored == before
    assert changes.flags == {} and changes.volume_name is None
    assert absent(restored)[0] == before


def test_missing_api_server_is_added_and_removed_again():
    before = fixture(V1BETA3)
    before = before[before.index("apiVersion:"):]
    after, dummy = present(before)
    # kubeadm sorts the keys: apiServer goes before apiVersion
    assert after.startswith("apiServer:\n  extraArgs:\n")
    assert_only_added_lines(before, after)
    # an emptied apiServer stays, as kubeadm itself writes it (`apiServer: {}`)
    assert absent(after, encryption_config=CONFIG)[0] == "apiServer: {}\n" + before
    assert absent(before)[0] == before


def test_certificates_dir_covers_a_config_in_pki():
    after, changes = present(fixture(V1BETA4), encryption_config="/etc/kubernetes/pki/encryption.yaml")
    assert changes.volume_name == "k8s-certs"
    assert "extraVolumes" not in cluster_configuration(after)["apiServer"]


def test_custom_certificates_dir():
    before = fixture(V1BETA4).replace("certificatesDir: /etc/kubernetes/pki", "certificatesDir: /srv/pki")
    dummy, changes = present(before, encryption_config="/etc/kubernetes/pki/encryption.yaml")
    assert changes.volume_name == "kubecrypt-encryption-config"
    dummy, changes = present(before, encryption_config="/srv/pki/encryption/config.yaml")
    assert changes.volume_name == "k8s-certs"


def test_existing_extra_volume_covering_the_directory_is_reused():
    before = fixture(INIT).replace(
        "    pathType: File\n",
        "    pathType: File\n  - name: etc-kubernetes\n    hostPath: /etc/kubernetes\n"
        "    mountPath: /etc/kubernetes\n    readOnly: true\n")
    after, changes = present(before)
    assert changes.volume_name == "etc-kubernetes"
    assert len(cluster_configuration(after)["apiServer"]["extraVolumes"]) == 2


def test_extra_volume_name_collision():
    before = fixture(INIT).replace("  - name: audit-policy\n", "  - name: kubecrypt-encryption-config\n")
    dummy, changes = present(before)
    assert changes.volume_name == "kubecrypt-encryption-config-2"


def test_foreign_extra_volume_at_the_directory_is_refused():
    before = fixture(INIT)
    with pytest.raises(KubeadmConfigError, match="already has extraVolumes 'audit-policy'"):
        present(before, encryption_config="/etc/kubernetes/audit-policy.yaml/config.yaml")


def test_recorded_config_elsewhere_is_replaced():
    first, dummy = present(fixture(V1BETA3), encryption_config="/etc/kubernetes/enc-a/config.yaml")
    second, changes = present(first)
    assert changes.replaced_encryption_config == "/etc/kubernetes/enc-a/config.yaml"
    volumes = cluster_configuration(second)["apiServer"]["extraVolumes"]
    assert [v["hostPath"] for v in volumes] == ["/etc/kubernetes/encryption"]
    assert second == present(fixture(V1BETA3))[0]


def test_absent_refuses_a_config_recorded_elsewhere():
    first, dummy = present(fixture(V1BETA4), encryption_config="/etc/kubernetes/enc-a/config.yaml")
    with pytest.raises(KubeadmConfigError, match="refusing to remove"):
        absent(first, encryption_config=CONFIG)


@pytest.mark.parametrize("name", [V1BETA3, INIT])
def test_false_automatic_reload_is_set_true(name):
    once, dummy = present(fixture(name), automatic_reload=False)
    if name == V1BETA3:
        broken = once.replace("    encryption-provider-config: %s\n" % CONFIG,
                              "    encryption-provider-config: %s\n"
                              "    encryption-provider-config-automatic-reload: 'false'\n" % CONFIG)
    else:
        broken = once.replace("    value: %s\n" % CONFIG,
                              "    value: %s\n  - name: encryption-provider-config-automatic-reload\n"
                              "    value: 'false'\n" % CONFIG)
    dummy, changes = present(broken)
    assert changes.descriptions == ["set extraArgs encryption-provider-config-automatic-reload=true (was 'false')"]


def _v1beta4_with_duplicate():
    return fixture(INIT).replace(
        "  - name: audit-policy-file\n",
        "  - name: encryption-provider-config\n    value: /a/b.yaml\n"
        "  - name: encryption-provider-config\n    value: /a/c.yaml\n  - name: audit-policy-file\n")


@pytest.mark.parametrize("text, message", [
    (fixture(V1BETA3).replace("kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta2"),
     r"apiVersion 'kubeadm.k8s.io/v1beta2'; only kubeadm.k8s.io/v1beta3 and kubeadm.k8s.io/v1beta4 are supported"),
    (fixture(V1BETA3).replace("kind: ClusterConfiguration", "kind: InitConfiguration"),
     "holds no ClusterConfiguration document"),
    (fixture(V1BETA3) + "---\n" + fixture(V1BETA4), "holds 2 ClusterConfiguration documents"),
    (_v1beta4_with_duplicate(), "sets encryption-provider-config 2 times"),
    (fixture(V1BETA3).replace("    authorization-mode: Node,RBAC\n", "  - name: authorization-mode\n"),
     "not a map of flag names"),
    (fixture(INIT).replace("  - name: audit-log-path\n    value: /var/log/kubernetes/audit/audit.log\n",
                           "  - --audit-log-path=/var/log/kubernetes/audit/audit.log\n"),
     "not a list of {name, value}"),
    (fixture(V1BETA3).replace("  timeoutForControlPlane: 4m0s\n", "  extraVolumes: /srv\n"),
     "extraVolumes that is not a list"),
    (fixture(V1BETA4).replace("apiServer: {}", "apiServer: [1]"), "apiServer that is not a mapping"),
    ("kind: ClusterConfiguration\napiVersion: [\n", "is not valid YAML"),
])
def test_refusals(text, message):
    with pytest.raises(KubeadmConfigError, match=message):
        present(text)


def test_option_errors():
    with pytest.raises(OptionError, match="required when state is 'present'"):
        update_cluster_configuration(fixture(V1BETA3))
    with pytest.raises(OptionError, match="absolute, normalized"):
        present(fixture(V1BETA3), encryption_config="encryption.yaml")
