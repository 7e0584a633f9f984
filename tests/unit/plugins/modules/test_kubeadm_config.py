# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import stat

import pytest
import yaml

from ansible_collections.kubecrypt.at_rest.plugins.modules import kubeadm_config
from ansible_collections.kubecrypt.at_rest.tests.unit.plugins.modules._module_args import run_module

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "module_utils", "fixtures")
CONFIG = "/etc/kubernetes/encryption/config.yaml"


def fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        return handle.read()


def run(check_mode=False, diff=False, **args):
    args.setdefault("encryption_config", CONFIG)
    return run_module(kubeadm_config.main, args, check_mode=check_mode, diff=diff)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "kubeadm-init.conf"
    path.write_text(fixture("kubeadm-init.conf"))
    path.chmod(0o640)
    return str(path)


@pytest.mark.parametrize("check_mode", [False, True])
def test_content_is_returned_never_written(check_mode, tmp_path):
    before = fixture("kubeadm-config-v1beta4.yaml")
    result = run(content=before, check_mode=check_mode, diff=True)
    assert result["changed"] is True
    assert result["api_version"] == "kubeadm.k8s.io/v1beta4"
    assert result["volume_name"] == "kubecrypt-encryption-config"
    assert result["flags"]["encryption-provider-config"] == CONFIG
    assert "write the returned content back" in result["msg"]
    api_server = yaml.safe_load(result["content"])["apiServer"]
    assert {"name": "encryption-provider-config", "value": CONFIG} in api_server["extraArgs"]
    assert result["diff"]["before"] == before and result["diff"]["after"] == result["content"]
    assert result["diff"]["before_header"] == "content"
    again = run(content=result["content"])
    assert again["changed"] is False and again["content"] == result["content"]


def test_content_absent_round_trip():
    before = fixture("kubeadm-config-v1beta3.yaml")
    added = run(content=before)["content"]
    result = run(content=added, state="absent")
    assert result["changed"] is True and result["content"] == before


def test_path_is_written_in_place(config_file):
    result = run(path=config_file, diff=True)
    assert result["changed"] is True
    assert "content" not in result
    assert result["msg"].startswith("updated the ClusterConfiguration in %s: " % config_file)
    with open(config_file) as handle:
        written = handle.read()
    assert written == result["diff"]["after"]
    assert written.split("\n---\n")[0] == fixture("kubeadm-init.conf").split("\n---\n")[0]
    assert stat.S_IMODE(os.stat(config_file).st_mode) == 0o640
    assert os.listdir(os.path.dirname(config_file)) == ["kubeadm-init.conf"]
    assert run(path=config_file)["changed"] is False


def test_path_check_mode_writes_nothing(config_file):
    result = run(path=config_file, check_mode=True)
    assert result["changed"] is True
    assert result["msg"].startswith("would update ")
    with open(config_file) as handle:
        assert handle.read() == fixture("kubeadm-init.conf")


def test_missing_path(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    result = run(path=missing)
    assert result["failed"] is True and result["msg"] == "%s does not exist" % missing


def test_refusal_names_the_source(config_file):
    result = run(content=fixture("kubeadm-config-v1beta3.yaml").replace("v1beta3", "v1beta2"))
    assert result["failed"] is True
    assert result["msg"].startswith("content has a ClusterConfiguration of apiVersion 'kubeadm.k8s.io/v1beta2'")
    result = run(path=config_file, encryption_config="/etc/kubernetes/audit-policy.yaml/x.yaml")
    assert result["failed"] is True and result["msg"].startswith(config_file + " already has extraVolumes")


@pytest.mark.parametrize("args, message", [
    (dict(), "one of the following is required: path, content"),
    (dict(path="/x", content="y"), "mutually exclusive"),
    (dict(content="x", encryption_config=None), "encryption_config"),
])
def test_argument_errors(args, message):
    result = run(**args)
    assert result["failed"] is True and message in result["msg"]
