# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.encryption_config import key_fingerprint
from ansible_collections.kubecrypt.at_rest.plugins.modules import encryption_config, encryption_config_info


def _b64(label, size):
    return base64.b64encode(hashlib.sha256(label.encode("ascii")).digest()[:size]).decode("ascii")


KEY_A = _b64("a", 32)
KEY_B = _b64("b", 24)
SECRETS = (KEY_A, KEY_B)

HAND_MADE = (
    "apiVersion: apiserver.config.k8s.io/v1\n"
    "kind: EncryptionConfiguration\n"
    "resources:\n"
    "  - resources: [secrets]\n"
    "    providers:\n"
    "      - aesgcm:\n"
    "          keys:\n"
    "            - name: key1\n"
    "              secret: %s\n"
    "            - name: key0\n"
    "              secret: %s\n"
    "      - kms: {name: legacy, endpoint: 'unix:///run/kms.sock', cachesize: 100}\n"
    "      - identity: {}\n"
    "  - resources: ['*.']\n"
    "    providers:\n"
    "      - identity: {}\n"
) % (KEY_A, KEY_B)


@pytest.fixture
def config_path(tmp_path):
    return tmp_path / "config.yaml"


@pytest.fixture
def info(run_module, config_path):
    def _info(**args):
        args.setdefault("path", str(config_path))
        return run_module(encryption_config_info.main, args)

    return _info


def _assert_no_secret(module_run):
    for secret in SECRETS:
        assert secret not in module_run.stdout
        assert secret not in module_run.logged


def test_missing_file(info):
    outcome = info()
    assert outcome.code == 0
    result = dict(outcome.result)
    result.pop("invocation")
    assert result == {"changed": False, "exists": False, "sha256": None, "resources": [],
                      "write_provider": None, "read_providers": [], "resource_groups": []}


def test_reads_a_hand_made_file_without_secrets(info, config_path):
    config_path.write_text(HAND_MADE)
    outcome = info()
    result = outcome.result
    assert result["changed"] is False and result["exists"] is True
    assert result["sha256"] == hashlib.sha256(HAND_MADE.encode()).hexdigest()
    assert result["write_provider"] == "aesgcm:key1"
    assert result["read_providers"] == ["aesgcm:key1", "aesgcm:key0", "kms:legacy", "identity"]
    assert result["resource_groups"][1] == {"resources": ["*."], "write_provider": "identity", "read_providers": ["identity"]}
    assert result["resources"][0]["providers"][0] == {"aesgcm": {"keys": [
        {"name": "key1", "fingerprint": key_fingerprint(KEY_A)},
        {"name": "key0", "fingerprint": key_fingerprint(KEY_B)},
    ]}}
    assert result["resources"][0]["providers"][1] == {"kms": {"name": "legacy", "cachesize": 100, "endpoint": "unix:///run/kms.sock"}}
    _assert_no_secret(outcome)


def test_return_secrets(info, config_path):
    config_path.write_text(HAND_MADE)
    outcome = info(return_secrets=True)
    keys = outcome.result["resources"][0]["providers"][0]["aesgcm"]["keys"]
    assert keys == [
        {"name": "key1", "secret": KEY_A, "fingerprint": key_fingerprint(KEY_A)},
        {"name": "key0", "secret": KEY_B, "fingerprint": key_fingerprint(KEY_B)},
    ]


def test_round_trip_with_encryption_config(info, config_path, run_module):
    config_path.write_text(HAND_MADE)
    adopted = info(return_secrets=True).result
    written = run_module(encryption_config.main, {
        "path": str(config_path), "resources": adopted["resources"], "allow_kms_v1": True})
    assert written.result["changed"] is True  # now in the canonical rendering
    assert written.result["read_providers"] == adopted["read_providers"]
    again = info()
    assert again.result["sha256"] == written.result["sha256"]
    assert again.result["resource_groups"] == adopted["resource_groups"]


@pytest.mark.parametrize("content, fragments", [
    ("", ["is empty"]),
    ("apiVersion: [\n", ["not valid YAML", "line"]),
    ("- just a list\n", ["not a mapping"]),
    (HAND_MADE.replace("kind: EncryptionConfiguration", "kind: Secret"), ["kind must be EncryptionConfiguration"]),
    (HAND_MADE.replace("name: key0", "name: key1"), None),  # only a collection rule: a warning
    (HAND_MADE.replace(KEY_B, KEY_B[:-4]), ["providers[0] (aesgcm)", "key 'key0'", "got 21 bytes"]),
    (HAND_MADE.replace("resources: ['*.']", "resources: ['*.', Secrets]"), ["capital letters"]),
    (HAND_MADE.replace("secret: %s\n" % KEY_A, "secret: %s\n              secret: %s\n" % (KEY_A, KEY_B)),
     ["duplicate field"]),
    (HAND_MADE.replace("secret: %s\n" % KEY_A, "secret: %s: nope\n" % KEY_A), ["not valid YAML", "line 9"]),
])
def test_invalid_files_fail_naming_the_path(info, config_path, content, fragments):
    config_path.write_text(content)
    outcome = info()
    if fragments is None:
        assert outcome.code == 0
        # ansible-core 2.19 returns structured warnings, older releases strings
        warnings = json.dumps(outcome.result["warnings"])
        assert "key 'key1'" in warnings and "used twice" in warnings and str(config_path) in warnings
        _assert_no_secret(outcome)
        return
    assert outcome.failed and outcome.result.get("changed", False) is False
    message = outcome.result["msg"]
    assert str(config_path) in message
    for fragment in fragments:
        assert fragment in message
    _assert_no_secret(outcome)
    assert KEY_A[:12] not in message and KEY_B[:12] not in message


def test_non_canonical_base64_is_read_with_a_warning(info, config_path):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stem = KEY_A.rstrip("=")
    odd = stem[:-1] + alphabet[alphabet.index(stem[-1]) + 1] + "="
    assert base64.b64decode(odd) == base64.b64decode(KEY_A)
    config_path.write_text(HAND_MADE.replace(KEY_A, odd))
    outcome = info()
    assert outcome.code == 0
    assert outcome.result["resources"][0]["providers"][0]["aesgcm"]["keys"][0]["fingerprint"] == key_fingerprint(KEY_A)
    assert "canonical" in json.dumps(outcome.result["warnings"])
    assert odd not in outcome.stdout and odd not in outcome.logged


def test_directory_is_an_error(info, tmp_path):
    outcome = info(path=str(tmp_path))
    assert outcome.failed and "is a directory" in outcome.result["msg"]


def test_secrets_never_appear_in_output_or_log(info, config_path):
    config_path.write_text(HAND_MADE)
    for args in ({}, {"_ansible_check_mode": True}, {"return_secrets": False, "_ansible_diff": True}):
        outcome = info(**args)
        assert "invocation" in outcome.result and "Invoked with" in outcome.logged
        _assert_no_secret(outcome)
