# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import base64
import hashlib
import os
import stat

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.encryption_config import (
    key_fingerprint,
    parse_config,
)
from ansible_collections.kubecrypt.at_rest.plugins.modules import encryption_config


def _b64(label, size):
    return base64.b64encode(hashlib.sha256(label.encode("ascii")).digest()[:size]).decode("ascii")


WRITE_KEY = _b64("write", 32)
READ_KEY = _b64("read", 16)
BOX_KEY = _b64("box", 32)
OLD_KEY = _b64("old", 32)
SHORT_KEY = _b64("short", 20)
SECRETS = (WRITE_KEY, READ_KEY, BOX_KEY, OLD_KEY, SHORT_KEY)


def _resources(write=WRITE_KEY):
    return [
        {"resources": ["secrets", "configmaps"], "providers": [
            {"aescbc": {"keys": [{"name": "key2", "secret": write}, {"name": "key1", "secret": READ_KEY}]}},
            {"identity": {}},
        ]},
        {"resources": ["*.apps"], "providers": [
            {"secretbox": {"keys": [{"name": "box", "secret": BOX_KEY}]}},
            {"kms": {"apiVersion": "v2", "name": "vault", "endpoint": "unix:///run/kms.sock"}},
        ]},
    ]


@pytest.fixture
def config_path(tmp_path):
    return str(tmp_path / "enc" / "config.yaml")


@pytest.fixture
def run(run_module, config_path):
    os.makedirs(os.path.dirname(config_path))

    def _run(**args):
        args.setdefault("path", config_path)
        return run_module(encryption_config.main, args)

    return _run


def _assert_no_secret(module_run):
    for secret in SECRETS:
        assert secret not in module_run.stdout
        assert secret not in module_run.logged
        assert secret[:12] not in module_run.stdout


def test_writes_file_and_reports_providers(run, config_path):
    outcome = run(resources=_resources())
    assert outcome.code == 0 and outcome.result["changed"] is True
    with open(config_path, "rb") as handle:
        content = handle.read()
    assert outcome.result["sha256"] == hashlib.sha256(content).hexdigest()
    assert stat.S_IMODE(os.stat(config_path).st_mode) == 0o600
    assert outcome.result["write_provider"] == "aescbc:key2"
    assert outcome.result["read_providers"] == ["aescbc:key2", "aescbc:key1", "identity"]
    assert outcome.result["resource_groups"] == [
        {"resources": ["secrets", "configmaps"], "write_provider": "aescbc:key2",
         "read_providers": ["aescbc:key2", "aescbc:key1", "identity"]},
        {"resources": ["*.apps"], "write_provider": "secretbox:box", "read_providers": ["secretbox:box", "kms:vault"]},
    ]
    resources, dummy = parse_config(content, config_path)
    assert resources == _resources()
    assert not [name for name in os.listdir(os.path.dirname(config_path)) if name != "config.yaml"]


def test_second_run_is_unchanged_and_bytes_are_identical(run, config_path, tmp_path):
    first = run(resources=_resources())
    second = run(resources=_resources())
    assert second.result["changed"] is False
    assert second.result["sha256"] == first.result["sha256"]
    other_node = str(tmp_path / "enc" / "other.yaml")
    third = run(path=other_node, resources=_resources())
    with open(config_path, "rb") as one, open(other_node, "rb") as two:
        assert one.read() == two.read()
    assert third.result["sha256"] == first.result["sha256"]


def test_mode_is_enforced(run, config_path):
    run(resources=_resources())
    os.chmod(config_path, 0o644)
    outcome = run(resources=_resources())
    assert outcome.result["changed"] is True
    assert stat.S_IMODE(os.stat(config_path).st_mode) == 0o600
    outcome = run(resources=_resources(), mode="0640")
    assert outcome.result["changed"] is True
    assert stat.S_IMODE(os.stat(config_path).st_mode) == 0o640


def test_content_change_on_a_wide_file_narrows_it(run, config_path):
    run(resources=_resources())
    os.chmod(config_path, 0o666)
    run(resources=_resources(write=OLD_KEY))
    assert stat.S_IMODE(os.stat(config_path).st_mode) == 0o600


def test_check_mode_writes_nothing(run, config_path):
    outcome = run(resources=_resources(), _ansible_check_mode=True)
    assert outcome.result["changed"] is True
    assert not os.path.exists(config_path)
    run(resources=_resources())
    with open(config_path, "rb") as handle:
        before = handle.read()
    outcome = run(resources=_resources(write=OLD_KEY), _ansible_check_mode=True)
    assert outcome.result["changed"] is True
    with open(config_path, "rb") as handle:
        assert handle.read() == before
    assert run(resources=_resources(), _ansible_check_mode=True).result["changed"] is False


def test_diff_shows_names_and_fingerprints_never_secrets(run):
    run(resources=_resources(write=OLD_KEY))
    outcome = run(resources=_resources(), _ansible_diff=True)
    diff = outcome.result["diff"]
    assert key_fingerprint(OLD_KEY) in diff["before"] and key_fingerprint(OLD_KEY) not in diff["after"]
    assert key_fingerprint(WRITE_KEY) in diff["after"]
    assert "name: key2" in diff["after"] and "secretbox:" in diff["after"]
    assert "secret:" not in diff["before"] + diff["after"]
    _assert_no_secret(outcome)


def test_diff_of_an_unparseable_file_shows_no_content(run, config_path):
    with open(config_path, "w") as handle:
        handle.write("# hand made\nsecret: %s\n: [broken\n" % OLD_KEY)
    outcome = run(resources=_resources(), _ansible_diff=True)
    assert outcome.result["changed"] is True
    assert "not shown" in outcome.result["diff"]["before"]
    assert OLD_KEY not in outcome.stdout


def test_old_keys_of_the_replaced_file_are_masked_too(run, config_path):
    run(resources=_resources(write=OLD_KEY))
    outcome = run(resources=_resources(), _ansible_diff=True)
    _assert_no_secret(outcome)


def test_invalid_input_fails_and_leaves_the_file_untouched(run, config_path):
    run(resources=_resources())
    with open(config_path, "rb") as handle:
        before = handle.read()
    bad = _resources()
    bad[1]["providers"][0]["secretbox"]["keys"][0]["secret"] = SHORT_KEY
    outcome = run(resources=bad)
    assert outcome.code == 1 and outcome.failed
    message = outcome.result["msg"]
    assert "resources[1] (*.apps)" in message
    assert "providers[0] (secretbox)" in message
    assert "key 'box'" in message
    assert "got 20 bytes" in message
    _assert_no_secret(outcome)
    with open(config_path, "rb") as handle:
        assert handle.read() == before


def test_kms_v1_needs_allow_kms_v1(run, config_path):
    resources = [{"resources": ["secrets"], "providers": [{"kms": {"name": "legacy", "endpoint": "unix:///s"}}]}]
    outcome = run(resources=resources)
    assert outcome.failed and "KMS v1" in outcome.result["msg"]
    assert not os.path.exists(config_path)
    outcome = run(resources=resources, allow_kms_v1=True)
    assert outcome.result["changed"] is True and outcome.result["write_provider"] == "kms:legacy"


def test_info_output_with_fingerprints_can_be_written_back(run, config_path):
    resources = _resources()
    for group in resources:
        for provider in group["providers"]:
            for body in provider.values():
                for key in body.get("keys", []):
                    key["fingerprint"] = key_fingerprint(key["secret"])
    outcome = run(resources=resources)
    assert outcome.result["changed"] is True
    with open(config_path, "rb") as handle:
        assert b"fingerprint" not in handle.read()
    assert run(resources=_resources()).result["changed"] is False


def test_missing_directory_fails(run_module, tmp_path):
    outcome = run_module(encryption_config.main, {"path": str(tmp_path / "nope" / "config.yaml"), "resources": _resources()})
    assert outcome.failed and "does not exist" in outcome.result["msg"]
    _assert_no_secret(outcome)


def test_resources_required_when_present(run):
    outcome = run()
    assert outcome.failed and "resources" in outcome.result["msg"]


def test_absent_removes_the_file(run, config_path):
    outcome = run(state="absent")
    assert outcome.result["changed"] is False
    run(resources=_resources())
    outcome = run(state="absent", _ansible_check_mode=True, _ansible_diff=True)
    assert outcome.result["changed"] is True and os.path.exists(config_path)
    assert "name: key2" in outcome.result["diff"]["before"] and outcome.result["diff"]["after"] == ""
    _assert_no_secret(outcome)
    outcome = run(state="absent")
    assert outcome.result["changed"] is True and not os.path.exists(config_path)
    assert outcome.result["sha256"] is None and outcome.result["resource_groups"] == []
    _assert_no_secret(outcome)


def test_secrets_never_appear_in_output_or_log(run, config_path):
    """The whole JSON the module prints, including ``invocation``, and its syslog line."""
    outcome = run(resources=_resources())
    # the capture works: the invocation was logged and returned, secrets masked in both
    assert "Invoked with" in outcome.logged and config_path in outcome.logged
    assert outcome.result["invocation"]["module_args"]["resources"][0]["providers"][0]["aescbc"]["keys"][0]["name"] == "key2"
    _assert_no_secret(outcome)
    for args in (
        dict(resources=_resources()),
        dict(resources=_resources(), _ansible_diff=True, _ansible_check_mode=True),
        dict(resources=_resources(write=SHORT_KEY)),
        dict(resources=[{"resources": ["secrets"], "providers": [{"aescbc": {"keys": [
            {"name": "k", "secret": WRITE_KEY}, {"name": "k", "secret": READ_KEY}]}}]}]),
        dict(resources=[{"resources": ["secrets"], "providers": [{"aescbc": {"keys": [
            {"name": "k", "secret": WRITE_KEY, "surprise": 1}]}}]}]),
        dict(resources=[{"resources": ["secrets"], "providers": [{"aescbc": {"keys": [
            {"name": "k", "secret": WRITE_KEY}, None]}}]}]),
    ):
        outcome = run(**args)
        assert "invocation" in outcome.result
        _assert_no_secret(outcome)
