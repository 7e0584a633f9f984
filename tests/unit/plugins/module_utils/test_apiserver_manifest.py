# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.apiserver_manifest import (
    SHA256_ANNOTATION,
    ManifestError,
    OptionError,
    YamlEditError,
    edit_yaml_document,
    load_yaml_documents,
    same_value,
    update_manifest,
    verify_yaml_documents,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CONFIG = "/etc/kubernetes/encryption/config.yaml"
CONFIG_DIR = "/etc/kubernetes/encryption"
SHA = hashlib.sha256(b"config one").hexdigest()
OTHER_SHA = hashlib.sha256(b"config two").hexdigest()
CONFIG_FLAG = "--encryption-provider-config"
RELOAD_FLAG = "--encryption-provider-config-automatic-reload"

KUBEADM = "kube-apiserver.yaml"
# fixtures without encryption flags: present then absent must give the bytes back
CLEAN_FIXTURES = [
    KUBEADM,
    "kube-apiserver-args.yaml",
    "kube-apiserver-second-container.yaml",
    "kube-apiserver-covering-mount.yaml",
    "kube-apiserver-name-collision.yaml",
]
ALL_FIXTURES = CLEAN_FIXTURES + ["kube-apiserver-other-config.yaml"]

MINIMAL_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --etcd-servers=https://127.0.0.1:2379
    - --secure-port=6443
    image: registry.k8s.io/kube-apiserver:v1.31.4
    name: kube-apiserver
  hostNetwork: true
"""


def fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        return handle.read()


def load(text):
    return yaml.safe_load(text)


def apiserver(pod):
    return next(c for c in pod["spec"]["containers"] if c["name"] == "kube-apiserver")


def flags_of(container):
    return (container.get("command") or [])[1:] + (container.get("args") or [])


def assert_only_added_lines(before, after):
    matcher = difflib.SequenceMatcher(None, before.splitlines(True), after.splitlines(True), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        assert tag in ("equal", "insert"), "lines %d-%d were %s: %r" % (i1 + 1, i2, tag, before.splitlines()[i1:i2])


def changed_lines(before, after):
    """(removed, added) lines between two texts."""
    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


def present(text, **kwargs):
    kwargs.setdefault("encryption_config", CONFIG)
    return update_manifest(text, **kwargs)


def absent(text, **kwargs):
    return update_manifest(text, state="absent", **kwargs)


# ---------------------------------------------------------------------------
# kubeadm's manifest and its variants
# ---------------------------------------------------------------------------

def test_kubeadm_manifest_gets_exactly_these_lines():
    before = fixture(KUBEADM)
    after, changes = present(before, config_sha256=SHA)
    expected = before.replace(
        "  annotations:\n",
        "  annotations:\n    %s: %s\n" % (SHA256_ANNOTATION, "'%s'" % SHA if SHA[0].isdigit() else SHA),
    ).replace(
        "    - --enable-bootstrap-token-auth=true\n",
        "    - --enable-bootstrap-token-auth=true\n"
        "    - --encryption-provider-config=/etc/kubernetes/encryption/config.yaml\n"
        "    - --encryption-provider-config-automatic-reload=true\n",
    ).replace(
        "      name: k8s-certs\n      readOnly: true\n",
        "      name: k8s-certs\n      readOnly: true\n"
        "    - mountPath: /etc/kubernetes/encryption\n"
        "      name: kubecrypt-encryption-config\n"
        "      readOnly: true\n",
    ).replace(
        "\n    name: k8s-certs\n",
        "\n    name: k8s-certs\n"
        "  - hostPath:\n"
        "      path: /etc/kubernetes/encryption\n"
        "      type: DirectoryOrCreate\n"
        "    name: kubecrypt-encryption-config\n",
    )
    assert after == expected
    assert_only_added_lines(before, after)
    lines = after.splitlines()
    at = lines.index("    - --encryption-provider-config=/etc/kubernetes/encryption/config.yaml")
    assert lines[at - 1] == "    - --enable-bootstrap-token-auth=true"
    assert lines[at + 2] == "    - --etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt"
    assert changes.flags == {
        "encryption-provider-config": CONFIG,
        "encryption-provider-config-automatic-reload": "true",
    }
    assert changes.volume_name == "kubecrypt-encryption-config"
    assert changes.restart_expected is True
    assert changes.replaced_encryption_config is None
    assert len(changes.descriptions) == 4


@pytest.mark.parametrize("name", CLEAN_FIXTURES)
def test_present_adds_lines_only(name):
    before = fixture(name)
    after, changes = present(before, config_sha256=SHA)
    assert_only_added_lines(before, after)
    pod = load(after)
    container = apiserver(pod)
    assert "%s=%s" % (CONFIG_FLAG, CONFIG) in flags_of(container)
    assert "%s=true" % RELOAD_FLAG in flags_of(container)
    assert pod["metadata"]["annotations"][SHA256_ANNOTATION] == SHA
    mounts = dict((m["name"], m) for m in container["volumeMounts"])
    volumes = dict((v["name"], v) for v in pod["spec"]["volumes"])
    mount = mounts[changes.volume_name]
    assert CONFIG_DIR == mount["mountPath"] or CONFIG_DIR.startswith(mount["mountPath"] + "/")
    assert volumes[changes.volume_name]["hostPath"]["path"] == mount["mountPath"]


@pytest.mark.parametrize("name", ALL_FIXTURES)
@pytest.mark.parametrize("options", [
    dict(),
    dict(config_sha256=SHA),
    dict(automatic_reload=False),
    dict(automatic_reload=False, config_sha256=SHA),
])
def test_second_run_changes_nothing(name, options):
    once, dummy = present(fixture(name), **options)
    twice, changes = present(once, **options)
    assert twice == once
    assert changes.descriptions == []
    assert changes.restart_expected is False


@pytest.mark.parametrize("name", CLEAN_FIXTURES)
@pytest.mark.parametrize("options", [dict(), dict(config_sha256=SHA), dict(automatic_reload=False)])
def test_absent_after_present_gives_the_original_bytes(name, options):
    before = fixture(name)
    after, dummy = present(before, **options)
    assert after != before
    restored, changes = absent(after, encryption_config=CONFIG)
    assert restored == before
    assert changes.flags == {}
    assert changes.volume_name is None
    assert changes.restart_expected is True
    again, changes = absent(restored)
    assert again == before and changes.descriptions == []


def test_flags_in_args():
    before = fixture("kube-apiserver-args.yaml")
    after, dummy = present(before)
    container = apiserver(load(after))
    assert "command" not in container
    args = container["args"]
    at = args.index("%s=%s" % (CONFIG_FLAG, CONFIG))
    assert args[at - 1] == "--enable-bootstrap-token-auth=true"
    assert args[at + 1] == "%s=true" % RELOAD_FLAG


def test_container_not_first_and_sidecar_untouched():
    before = fixture("kube-apiserver-second-container.yaml")
    after, dummy = present(before)
    old, new = load(before), load(after)
    assert new["spec"]["containers"][0] == old["spec"]["containers"][0]
    assert new["spec"]["containers"][0]["name"] == "audit-shipper"
    assert "# audit log shipper, added by the platform team" in after
    assert "%s=%s" % (CONFIG_FLAG, CONFIG) in apiserver(new)["command"]


def test_flag_pointing_elsewhere_is_replaced_and_reported():
    before = fixture("kube-apiserver-other-config.yaml")
    after, changes = present(before)
    assert changes.replaced_encryption_config == "/etc/kubernetes/enc/enc.yaml"
    assert any("replaced" in d and "/etc/kubernetes/enc/enc.yaml" in d for d in changes.descriptions)
    removed, added = changed_lines(before, after)
    assert removed == ["    - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml"]
    assert "    - --encryption-provider-config=/etc/kubernetes/encryption/config.yaml" in added
    pod = load(after)
    # the hand-made file mount is not ours: it stays
    assert any(v["name"] == "enc" for v in pod["spec"]["volumes"])
    assert changes.volume_name == "kubecrypt-encryption-config"


def test_absent_refuses_a_flag_pointing_elsewhere():
    with pytest.raises(ManifestError, match="refusing to remove"):
        absent(fixture("kube-apiserver-other-config.yaml"), encryption_config=CONFIG)


def test_absent_without_config_removes_any_flag_but_not_foreign_volumes():
    before = fixture("kube-apiserver-other-config.yaml")
    after, changes = absent(before)
    assert changes.descriptions == ["removed --encryption-provider-config"]
    removed, added = changed_lines(before, after)
    assert removed == ["    - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml"] and added == []


def test_existing_mount_covering_the_directory_is_reused():
    before = fixture("kube-apiserver-covering-mount.yaml")
    after, changes = present(before)
    assert changes.volume_name == "etc-kubernetes"
    assert len(load(after)["spec"]["volumes"]) == len(load(before)["spec"]["volumes"])
    restored, dummy = absent(after, encryption_config=CONFIG)
    assert restored == before


def test_kubeadm_pki_mount_is_reused_for_a_config_in_pki():
    before = fixture(KUBEADM)
    after, changes = present(before, encryption_config="/etc/kubernetes/pki/encryption-config.yaml")
    assert changes.volume_name == "k8s-certs"
    removed, added = changed_lines(before, after)
    assert removed == [] and len(added) == 2


def test_volume_name_collision_gets_a_suffix():
    before = fixture("kube-apiserver-name-collision.yaml")
    after, changes = present(before)
    assert changes.volume_name == "kubecrypt-encryption-config-2"
    pod = load(after)
    foreign = [v for v in pod["spec"]["volumes"] if v["name"] == "kubecrypt-encryption-config"]
    assert foreign == [{"hostPath": {"path": "/var/lib/kubecrypt", "type": "Directory"},
                        "name": "kubecrypt-encryption-config"}]


def test_volume_name_collision_with_both_names_taken():
    before = fixture("kube-apiserver-name-collision.yaml").replace(
        "    - mountPath: /var/lib/kubecrypt\n      name: kubecrypt-encryption-config\n",
        "    - mountPath: /var/lib/kubecrypt\n      name: kubecrypt-encryption-config\n"
        "    - mountPath: /var/lib/kubecrypt-2\n      name: kubecrypt-encryption-config-2\n",
    )
    after, changes = present(before)
    assert changes.volume_name == "kubecrypt-encryption-config-3"
    assert absent(after, encryption_config=CONFIG)[0] == before


def test_a_hostpath_mount_of_the_same_directory_is_reused():
    before = fixture("kube-apiserver-name-collision.yaml")
    after, changes = present(before, encryption_config="/var/lib/kubecrypt/config.yaml")
    assert changes.volume_name == "kubecrypt-encryption-config"
    removed, added = changed_lines(before, after)
    assert removed == [] and len(added) == 2
    assert absent(after, encryption_config="/var/lib/kubecrypt/config.yaml")[0] == before


def test_a_foreign_mount_at_the_directory_is_refused():
    before = fixture("kube-apiserver-name-collision.yaml").replace(
        "      path: /var/lib/kubecrypt\n", "      path: /srv/something-else\n")
    with pytest.raises(ManifestError, match="already mounts volume 'kubecrypt-encryption-config' at /var/lib/kubecrypt"):
        present(before, encryption_config="/var/lib/kubecrypt/config.yaml")


def test_moving_the_config_replaces_our_volume():
    before = fixture(KUBEADM)
    first, dummy = present(before, encryption_config="/etc/kubernetes/enc-a/config.yaml")
    second, changes = present(first, encryption_config="/etc/kubernetes/enc-b/config.yaml")
    assert changes.replaced_encryption_config == "/etc/kubernetes/enc-a/config.yaml"
    pod = load(second)
    ours = [v for v in pod["spec"]["volumes"] if v["name"].startswith("kubecrypt-")]
    assert ours == [{"hostPath": {"path": "/etc/kubernetes/enc-b", "type": "DirectoryOrCreate"},
                     "name": "kubecrypt-encryption-config"}]
    fresh, dummy = present(before, encryption_config="/etc/kubernetes/enc-b/config.yaml")
    assert second == fresh
    assert absent(second, encryption_config="/etc/kubernetes/enc-b/config.yaml")[0] == before


def test_automatic_reload_false_removes_only_that_flag():
    with_reload, dummy = present(fixture(KUBEADM))
    without, changes = present(with_reload, automatic_reload=False)
    assert changes.descriptions == ["removed --encryption-provider-config-automatic-reload"]
    removed, added = changed_lines(with_reload, without)
    assert removed == ["    - --encryption-provider-config-automatic-reload=true"] and added == []


@pytest.mark.parametrize("spelling", ["--encryption-provider-config-automatic-reload",
                                      "--encryption-provider-config-automatic-reload=True",
                                      "--encryption-provider-config-automatic-reload=1"])
def test_other_true_spellings_of_automatic_reload_are_kept(spelling):
    before = fixture(KUBEADM).replace(
        "    - --enable-bootstrap-token-auth=true\n",
        "    - --enable-bootstrap-token-auth=true\n"
        "    - --encryption-provider-config=%s\n    - %s\n" % (CONFIG, spelling))
    after, changes = present(before)
    assert changes.descriptions == ["added volume kubecrypt-encryption-config: hostPath /etc/kubernetes/encryption "
                                    "mounted read-only at the same path"]
    assert changes.flags["encryption-provider-config-automatic-reload"] in ("true", "True", "1")


def test_automatic_reload_false_value_is_set_true():
    before = fixture(KUBEADM).replace(
        "    - --enable-bootstrap-token-auth=true\n",
        "    - --enable-bootstrap-token-auth=true\n    - --encryption-provider-config-automatic-reload=false\n")
    after, changes = present(before)
    assert "set --encryption-provider-config-automatic-reload=true (was 'false')" in changes.descriptions
    removed, added = changed_lines(before, after)
    assert removed == ["    - --encryption-provider-config-automatic-reload=false"]


def test_two_element_flag_form_is_read_and_kept():
    before = fixture(KUBEADM).replace(
        "    - --enable-bootstrap-token-auth=true\n",
        "    - --enable-bootstrap-token-auth=true\n    - --encryption-provider-config\n    - %s\n" % CONFIG)
    after, changes = present(before)
    assert changes.flags["encryption-provider-config"] == CONFIG
    assert not any("encryption-provider-config=" in d for d in changes.descriptions)
    moved, changes = present(after, encryption_config="/etc/kubernetes/other/config.yaml")
    assert changes.replaced_encryption_config == CONFIG
    lines = moved.splitlines()
    at = lines.index("    - --encryption-provider-config")
    assert lines[at + 1] == "    - /etc/kubernetes/other/config.yaml"
    restored, dummy = absent(moved)
    assert CONFIG_FLAG not in restored


def test_unsorted_flags_get_the_new_ones_last():
    before = MINIMAL_POD.replace(
        "    - --etcd-servers=https://127.0.0.1:2379\n    - --secure-port=6443\n",
        "    - --secure-port=6443\n    - --etcd-servers=https://127.0.0.1:2379\n")
    after, dummy = present(before)
    command = apiserver(load(after))["command"]
    assert command[-2:] == ["%s=%s" % (CONFIG_FLAG, CONFIG), "%s=true" % RELOAD_FLAG]
    assert_only_added_lines(before, after)


def test_annotation_changes_only_its_line_and_is_removed_when_omitted():
    first, dummy = present(fixture(KUBEADM), config_sha256=SHA)
    second, changes = present(first, config_sha256=OTHER_SHA)
    assert changes.restart_expected is True
    removed, added = changed_lines(first, second)
    assert len(removed) == 1 and SHA in removed[0]
    assert len(added) == 1 and OTHER_SHA in added[0]
    third, changes = present(second)
    assert changes.descriptions == ["removed annotation %s" % SHA256_ANNOTATION]
    assert third == present(fixture(KUBEADM))[0]


@pytest.mark.parametrize("value", ["1" * 64, "1e" + "5" * 62, "sha256:" + SHA, SHA.upper()])
def test_annotation_value_is_always_a_string(value):
    after, dummy = present(fixture(KUBEADM), config_sha256=value)
    assert load(after)["metadata"]["annotations"][SHA256_ANNOTATION] == value
    if value[0].isdigit():
        assert "'%s'" % value in after


def test_minimal_pod_gets_new_keys_at_their_sorted_places():
    after, dummy = present(MINIMAL_POD, config_sha256=SHA)
    assert_only_added_lines(MINIMAL_POD, after)
    lines = after.splitlines()
    assert lines.index("  annotations:") == lines.index("metadata:") + 1
    assert lines.index("    volumeMounts:") == lines.index("    name: kube-apiserver") + 1
    assert lines[lines.index("  volumes:") - 1] == "  hostNetwork: true"
    assert lines[-5:] == [
        "  volumes:",
        "  - hostPath:",
        "      path: /etc/kubernetes/encryption",
        "      type: DirectoryOrCreate",
        "    name: kubecrypt-encryption-config",
    ]
    assert absent(after, encryption_config=CONFIG)[0] == MINIMAL_POD


def test_container_without_command_gets_args():
    before = MINIMAL_POD.replace(
        "  - command:\n    - kube-apiserver\n    - --etcd-servers=https://127.0.0.1:2379\n"
        "    - --secure-port=6443\n    image:", "  - image:")
    after, dummy = present(before)
    container = apiserver(load(after))
    assert container["args"] == ["%s=%s" % (CONFIG_FLAG, CONFIG), "%s=true" % RELOAD_FLAG]
    assert_only_added_lines(before, after)
    assert absent(after, encryption_config=CONFIG)[0] == before


def test_comments_and_blank_lines_survive():
    before = fixture(KUBEADM).replace(
        "  - command:\n", "  # the control plane\n  - command:  # flags sorted by kubeadm\n").replace(
        "  hostNetwork: true\n", "\n  hostNetwork: true  # required\n")
    after, dummy = present(before, config_sha256=SHA)
    assert_only_added_lines(before, after)
    assert absent(after, encryption_config=CONFIG)[0] == before


def test_crlf_line_endings_are_kept():
    before = fixture(KUBEADM).replace("\n", "\r\n")
    after, dummy = present(before, config_sha256=SHA)
    assert "\n" not in after.replace("\r\n", "")
    assert_only_added_lines(before, after)
    assert absent(after, encryption_config=CONFIG)[0] == before


def test_missing_final_newline():
    before = MINIMAL_POD.rstrip("\n")
    after, dummy = present(before)
    pod = load(after)
    assert pod["spec"]["volumes"][0]["name"] == "kubecrypt-encryption-config"
    assert absent(after, encryption_config=CONFIG)[0] == before


def test_json_manifest_is_edited_in_flow_style():
    before = json.dumps(load(fixture(KUBEADM)), indent=2) + "\n"
    after, changes = present(before, config_sha256=SHA)
    pod = load(after)
    assert "%s=%s" % (CONFIG_FLAG, CONFIG) in apiserver(pod)["command"]
    assert json.loads(after) == pod
    restored, dummy = absent(after, encryption_config=CONFIG)
    assert load(restored) == load(before)


def test_empty_flow_volumes_become_a_block():
    before = MINIMAL_POD.replace("  hostNetwork: true\n", "  hostNetwork: true\n  volumes: []\n")
    after, dummy = present(before)
    assert "  volumes:\n  - hostPath:\n" in after
    restored, dummy = absent(after, encryption_config=CONFIG)
    assert same_value(load(restored), dict(load(before), spec=dict(
        (k, v) for k, v in load(before)["spec"].items() if k != "volumes")))


def test_volume_kept_when_another_container_mounts_it():
    after, dummy = present(fixture("kube-apiserver-second-container.yaml"))
    shared = after.replace(
        "    - mountPath: /var/log/kubernetes/audit\n      name: audit-log\n      readOnly: true\n",
        "    - mountPath: /var/log/kubernetes/audit\n      name: audit-log\n      readOnly: true\n"
        "    - mountPath: /etc/kubernetes/encryption\n      name: kubecrypt-encryption-config\n", 1)
    restored, dummy = absent(shared, encryption_config=CONFIG)
    pod = load(restored)
    assert any(v["name"] == "kubecrypt-encryption-config" for v in pod["spec"]["volumes"])
    assert not any(m["name"] == "kubecrypt-encryption-config" for m in apiserver(pod)["volumeMounts"])


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------

def _with_flag_twice():
    return fixture(KUBEADM).replace(
        "    - --enable-bootstrap-token-auth=true\n",
        "    - --enable-bootstrap-token-auth=true\n    - --encryption-provider-config=/a/b.yaml\n"
        "    - --encryption-provider-config\n    - /a/c.yaml\n")


def _with_flag_in_command_and_args():
    return fixture(KUBEADM).replace(
        "    image: registry.k8s.io",
        "    args:\n    - --encryption-provider-config-automatic-reload=true\n    image: registry.k8s.io").replace(
        "    - --enable-bootstrap-token-auth=true\n",
        "    - --enable-bootstrap-token-auth=true\n    - --encryption-provider-config-automatic-reload\n")


@pytest.mark.parametrize("text, message", [
    ("apiVersion: v1\nkind: Pod\nspec: [\n", "is not valid YAML"),
    ("apiVersion: v1\nkind: Pod\n\tspec: {}\n", "is not valid YAML"),
    ("", "is empty"),
    ("# nothing here\n", "is empty"),
    (fixture(KUBEADM) + "---\n" + fixture(KUBEADM), "holds 2 YAML documents"),
    (fixture(KUBEADM).replace("kind: Pod", "kind: Deployment"), "is not a v1 Pod"),
    (fixture(KUBEADM).replace("apiVersion: v1\n", "apiVersion: apps/v1\n", 1), "is not a v1 Pod"),
    ("- a\n- b\n", "is not a v1 Pod"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "has no pod spec"),
    (fixture(KUBEADM).replace("    name: kube-apiserver\n", "    name: apiserver\n"),
     "has no container named kube-apiserver"),
    (_with_flag_twice(), r"sets --encryption-provider-config 2 times \(command\[7\], command\[8\]\)"),
    (_with_flag_in_command_and_args(), r"sets --encryption-provider-config-automatic-reload 2 times"),
    (fixture(KUBEADM).replace("  name: kube-apiserver\n", "  name: kube-apiserver\n  name: again\n", 1),
     "has the key 'name' twice"),
    (fixture(KUBEADM).replace("    - kube-apiserver\n", "    - /bin/sh\n"), "runs '/bin/sh', not kube-apiserver"),
    (fixture(KUBEADM).replace("    - --tls-private-key-file=/etc/kubernetes/pki/apiserver.key\n",
                              "    - --tls-private-key-file=/etc/kubernetes/pki/apiserver.key\n"
                              "    - --encryption-provider-config\n"), "and no value"),
    (fixture(KUBEADM).replace("  labels:\n", "  labels: &labels\n").replace(
        "  name: kube-apiserver\n", "  name: kube-apiserver\n  x-copy: *labels\n", 1), "uses a YAML alias"),
    (fixture(KUBEADM).replace("    - --secure-port=6443\n", "    - 6443\n"), "is not a list of strings"),
    (fixture(KUBEADM).replace("  volumes:\n", "  volumes: something\n  x:\n"), "not a list of mappings"),
])
def test_refusals(text, message):
    with pytest.raises(ManifestError, match=message):
        present(text)


@pytest.mark.parametrize("options, message", [
    (dict(encryption_config=None), "required when state is 'present'"),
    (dict(encryption_config="etc/kubernetes/enc.yaml"), "absolute, normalized"),
    (dict(encryption_config="/etc/kubernetes/encryption/"), "absolute, normalized"),
    (dict(encryption_config="/etc/kubernetes/../encryption/config.yaml"), "absolute, normalized"),
    (dict(encryption_config="//etc/config.yaml"), "absolute, normalized"),
    (dict(encryption_config="/config.yaml"), "directly in /"),
    (dict(encryption_config="/etc/kubernetes/a\nb.yaml"), "control characters"),
    (dict(config_sha256="abc"), "64 hexadecimal digits"),
    (dict(config_sha256="sha512:" + SHA), "64 hexadecimal digits"),
    (dict(state="gone"), "state must be"),
])
def test_option_errors(options, message):
    with pytest.raises(OptionError, match=message):
        update_manifest(fixture(KUBEADM), **dict(dict(encryption_config=CONFIG), **options))


# ---------------------------------------------------------------------------
# the minimal-edit writer on its own
# ---------------------------------------------------------------------------

def _edit(text, change):
    documents = load_yaml_documents(text)
    node, data = documents[0]
    wanted = change(copy.deepcopy(data))
    result = edit_yaml_document(text, node, data, wanted)
    verify_yaml_documents(result, [wanted])
    return result


def test_writer_replaces_a_scalar_in_place():
    text = "a: 1  # one\nb: [1, 2]\n"
    assert _edit(text, lambda d: dict(d, a=2)) == "a: 2  # one\nb: [1, 2]\n"


def test_writer_rewrites_a_flow_collection_as_json():
    text = "a: 1\nb: [1, 2]  # keep\n"
    assert _edit(text, lambda d: dict(d, b=[1, 2, "x y"])) == 'a: 1\nb: [1, 2, "x y"]  # keep\n'


def test_writer_empties_and_refills_a_block_mapping_value():
    text = "a:\n  b: 1\n  c: 2\nd: 3\n"
    emptied = _edit(text, lambda d: dict(d, a={}))
    assert emptied == "a: {}\nd: 3\n"
    assert _edit(emptied, lambda d: dict(d, a={"b": 1, "c": 2})) == text


def test_writer_quotes_strings_go_would_not_read_as_strings():
    text = "a: x\n"
    result = _edit(text, lambda d: dict(d, b="1e5", c="yes", d="0x1F", e="+1", f="plain"))
    assert result == "a: x\nb: '1e5'\nc: 'yes'\nd: '0x1F'\ne: '+1'\nf: plain\n"


def test_writer_empties_a_block_sequence_value():
    assert _edit("a:\n- 1\nb: 2\n", lambda d: dict(d, a=[])) == "a: []\nb: 2\n"


def test_writer_refuses_to_turn_a_block_into_a_scalar():
    with pytest.raises(YamlEditError, match="value of another kind"):
        _edit("a:\n  b: 1\n", lambda d: dict(d, a="x"))


def test_writer_refuses_to_empty_a_top_level_sequence():
    with pytest.raises(YamlEditError, match="cannot empty"):
        _edit("- 1\n- 2\n", lambda d: [])


def test_loading_refuses_merge_keys():
    with pytest.raises(YamlEditError, match="merge key"):
        load_yaml_documents("thing:\n  <<: {y: 2}\n  z: 3\n")


# ---------------------------------------------------------------------------
# properties over generated kubeadm-style manifests
# ---------------------------------------------------------------------------

_BASE = load(fixture(KUBEADM))
_BASE_FLAGS = apiserver(_BASE)["command"][1:]


def _render(pod):
    # kubeadm's serializer: keys sorted, block style, sequences not indented
    return yaml.safe_dump(pod, default_flow_style=False, sort_keys=True, width=1 << 20)


@st.composite
def manifests(draw):
    pod = copy.deepcopy(_BASE)
    container = apiserver(pod)
    flags = draw(st.lists(st.sampled_from(_BASE_FLAGS), unique=True, min_size=0, max_size=len(_BASE_FLAGS)))
    if draw(st.booleans()):
        flags = sorted(flags)
    if draw(st.booleans()):
        container["command"] = ["kube-apiserver"] + flags
    else:
        del container["command"]
        if flags:  # kubeadm omits empty lists
            container["args"] = flags
    mounts = draw(st.lists(st.sampled_from(container["volumeMounts"]), unique_by=lambda m: m["name"]))
    if mounts:
        container["volumeMounts"] = mounts
    else:
        del container["volumeMounts"]
    names = set(m["name"] for m in mounts)
    volumes = [v for v in pod["spec"]["volumes"] if v["name"] in names]
    if volumes:
        pod["spec"]["volumes"] = volumes
    else:
        del pod["spec"]["volumes"]
    if draw(st.booleans()):
        del pod["metadata"]["annotations"]
    if draw(st.booleans()):
        sidecar = {"name": "sidecar", "image": "busybox", "args": ["sleep", "3600"]}
        pod["spec"]["containers"].insert(draw(st.integers(0, 1)), sidecar)
    return _render(pod)


configs = st.sampled_from([
    CONFIG, "/etc/kubernetes/pki/encryption.yaml", "/etc/ssl/certs/x/enc.yaml", "/var/lib/kubecrypt/enc config.yaml",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), configs, st.booleans(), st.one_of(st.none(), st.sampled_from([SHA, "0" * 64])))
def test_property_present_is_additive_idempotent_and_reversible(text, config, automatic_reload, sha):
    after, changes = update_manifest(text, config, automatic_reload, sha)
    assert_only_added_lines(text, after)
    pod = load(after)
    container = apiserver(pod)
    flags = flags_of(container)
    assert "%s=%s" % (CONFIG_FLAG, config) in flags
    assert ("%s=true" % RELOAD_FLAG in flags) is automatic_reload
    assert (pod["metadata"].get("annotations") or {}).get(SHA256_ANNOTATION) == sha
    mount = next(m for m in container["volumeMounts"] if m["name"] == changes.volume_name)
    assert os.path.dirname(config).startswith(mount["mountPath"])
    # everything that is not ours is unchanged
    original = load(text)
    for key in original:
        if key not in ("metadata", "spec"):
            assert pod[key] == original[key]
    assert update_manifest(after, config, automatic_reload, sha)[0] == after
    assert update_manifest(after, config, state="absent")[0] == text
