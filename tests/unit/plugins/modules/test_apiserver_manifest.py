# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import hashlib
import os
import stat

import pytest
import yaml

from ansible_collections.kubecrypt.at_rest.plugins.modules import apiserver_manifest
from ansible_collections.kubecrypt.at_rest.tests.unit.plugins.modules._module_args import run_module

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "module_utils", "fixtures")
CONFIG = "/etc/kubernetes/encryption/config.yaml"
SHA = hashlib.sha256(b"config").hexdigest()


def fixture_bytes(name="kube-apiserver.yaml"):
    with open(os.path.join(FIXTURES, name), "rb") as handle:
        return handle.read()


@pytest.fixture
def node(tmp_path):
    """A node's /etc/kubernetes: manifests/kube-apiserver.yaml (0600) and a backup dir path."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    manifest = manifests / "kube-apiserver.yaml"
    manifest.write_bytes(fixture_bytes())
    manifest.chmod(0o600)
    return dict(
        manifest=str(manifest),
        manifests=str(manifests),
        backups=str(tmp_path / "tmp" / "kubecrypt-backups"),
    )


def run(node, check_mode=False, diff=False, **args):
    args.setdefault("path", node["manifest"])
    args.setdefault("backup_dir", node["backups"])
    args.setdefault("encryption_config", CONFIG)
    return run_module(apiserver_manifest.main, args, check_mode=check_mode, diff=diff)


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_present_writes_backs_up_and_leaves_only_the_manifest(node):
    result = run(node, config_sha256=SHA)
    assert result["changed"] is True
    assert result["restart_expected"] is True
    assert result["volume_name"] == "kubecrypt-encryption-config"
    assert result["flags"] == {
        "encryption-provider-config": CONFIG,
        "encryption-provider-config-automatic-reload": "true",
    }
    assert "replaced_encryption_config" not in result
    assert result["msg"].startswith("updated %s: added --encryption-provider-config=" % node["manifest"])
    # the kubelet runs every non-dot file here: nothing else may appear
    assert os.listdir(node["manifests"]) == ["kube-apiserver.yaml"]
    assert stat.S_IMODE(os.stat(node["manifest"]).st_mode) == 0o600
    pod = yaml.safe_load(read(node["manifest"]))
    assert pod["metadata"]["annotations"]["at-rest.kubecrypt.io/encryption-config-sha256"] == SHA
    backup = result["backup_file"]
    assert os.path.dirname(backup) == node["backups"]
    assert os.path.basename(backup).startswith("kube-apiserver.yaml.") and backup.endswith("Z.bak")
    assert read(backup) == fixture_bytes()
    assert stat.S_IMODE(os.stat(node["backups"]).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600


def test_second_run_is_unchanged_and_makes_no_backup(node):
    run(node, config_sha256=SHA)
    written = read(node["manifest"])
    result = run(node, config_sha256=SHA)
    assert result["changed"] is False
    assert result["restart_expected"] is False
    assert "backup_file" not in result
    assert read(node["manifest"]) == written
    assert len(os.listdir(node["backups"])) == 1
    assert result["volume_name"] == "kubecrypt-encryption-config"
    assert result["msg"] == "%s already points at %s" % (node["manifest"], CONFIG)


def test_backups_of_the_same_second_do_not_collide(node):
    first = run(node)["backup_file"]
    second = run(node, automatic_reload=False)["backup_file"]
    third = run(node)["backup_file"]
    assert len(set([first, second, third])) == 3
    assert len(os.listdir(node["backups"])) == 3


def test_check_mode_writes_nothing(node):
    result = run(node, check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["restart_expected"] is True
    assert "backup_file" not in result
    assert result["msg"].startswith("would update ")
    assert read(node["manifest"]) == fixture_bytes()
    assert not os.path.exists(node["backups"])
    assert os.listdir(node["manifests"]) == ["kube-apiserver.yaml"]
    diff = result["diff"]
    assert diff["before"] == fixture_bytes().decode("utf-8")
    assert "--encryption-provider-config=%s" % CONFIG in diff["after"]
    assert diff["before_header"] == diff["after_header"] == node["manifest"]


def test_diff_mode(node):
    result = run(node, diff=True)
    assert result["diff"]["after"] == read(node["manifest"]).decode("utf-8")
    assert result["diff"]["before"] == fixture_bytes().decode("utf-8")


def test_absent_after_present_restores_the_bytes(node):
    run(node, config_sha256=SHA)
    result = run(node, state="absent")
    assert result["changed"] is True
    assert result["flags"] == {} and result["volume_name"] is None
    assert read(node["manifest"]) == fixture_bytes()
    result = run(node, state="absent")
    assert result["changed"] is False


def test_absent_needs_no_encryption_config(node):
    run(node)
    result = run(node, state="absent", encryption_config=None)
    assert result["changed"] is True
    assert read(node["manifest"]) == fixture_bytes()


def test_replaced_config_is_returned(node):
    with open(node["manifest"], "wb") as handle:
        handle.write(fixture_bytes("kube-apiserver-other-config.yaml"))
    result = run(node)
    assert result["replaced_encryption_config"] == "/etc/kubernetes/enc/enc.yaml"


def test_manifest_mode_is_kept(node):
    os.chmod(node["manifest"], 0o640)
    run(node)
    assert stat.S_IMODE(os.stat(node["manifest"]).st_mode) == 0o640


@pytest.mark.parametrize("backup_dir", ["{manifests}", "{manifests}/backups", "{manifests}/../manifests/x"])
def test_backup_dir_inside_the_manifests_dir_is_refused(node, backup_dir):
    result = run(node, backup_dir=backup_dir.format(**node))
    assert result["failed"] is True
    assert "lies inside the manifests directory" in result["msg"]
    assert read(node["manifest"]) == fixture_bytes()
    assert os.listdir(node["manifests"]) == ["kube-apiserver.yaml"]


def test_backup_dir_reaching_the_manifests_dir_through_a_symlink_is_refused(node, tmp_path):
    link = tmp_path / "innocent-looking"
    link.symlink_to(node["manifests"])
    result = run(node, backup_dir=str(link / "backups"))
    assert result["failed"] is True
    assert "lies inside the manifests directory" in result["msg"]
    assert read(node["manifest"]) == fixture_bytes()


def test_encryption_config_in_the_manifests_dir_is_refused(node):
    result = run(node, encryption_config=os.path.join(node["manifests"], "encryption.yaml"))
    assert result["failed"] is True
    assert "the kubelet would try to run it" in result["msg"]


def test_missing_manifest(node):
    os.unlink(node["manifest"])
    result = run(node)
    assert result["failed"] is True
    assert result["msg"] == "%s does not exist" % node["manifest"]
    assert os.listdir(node["manifests"]) == []


@pytest.mark.parametrize("content, message", [
    (b"apiVersion: v1\nkind: Pod\nspec: [\n", "is not valid YAML"),
    (fixture_bytes() + b"---\n" + fixture_bytes(), "holds 2 YAML documents"),
    (fixture_bytes().replace(b"kind: Pod", b"kind: Deployment"), "is not a v1 Pod"),
    (fixture_bytes().replace(b"    name: kube-apiserver\n", b"    name: apiserver\n"),
     "has no container named kube-apiserver"),
    (b"\xff\xfe", "is not UTF-8 text"),
])
def test_refused_manifest_is_left_untouched(node, content, message):
    with open(node["manifest"], "wb") as handle:
        handle.write(content)
    result = run(node)
    assert result["failed"] is True
    assert result["msg"].startswith(node["manifest"] + " ")
    assert message in result["msg"]
    assert read(node["manifest"]) == content
    assert not os.path.exists(node["backups"])


def test_option_errors_fail_cleanly(node):
    result = run(node, encryption_config="relative/config.yaml")
    assert result["failed"] is True and "absolute, normalized" in result["msg"]
    result = run(node, config_sha256="not-a-hash")
    assert result["failed"] is True and "64 hexadecimal digits" in result["msg"]
    result = run(node, encryption_config=None)
    assert result["failed"] is True and "encryption_config" in result["msg"]
    assert read(node["manifest"]) == fixture_bytes()
