# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.encryption_config import key_fingerprint
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.keystore import parse_keystore
from ansible_collections.kubecrypt.at_rest.plugins.modules import encryption_key


def _b64(label, size):
    return base64.b64encode(hashlib.sha256(label.encode("ascii")).digest()[:size]).decode("ascii")


ADOPT_A = _b64("adopt-a", 32)
ADOPT_B = _b64("adopt-b", 16)


@pytest.fixture
def keystore(tmp_path):
    return str(tmp_path / "keys" / "cluster.yml")


@pytest.fixture
def run(run_module, keystore):
    def _run(**args):
        args.setdefault("keystore", keystore)
        return run_module(encryption_key.main, args)

    return _run


def _stored(keystore):
    with open(keystore, "rb") as handle:
        return parse_keystore(handle.read(), keystore)


def _assert_absent(module_run, *secrets):
    for secret in secrets:
        assert secret not in module_run.stdout
        assert secret not in module_run.logged


def test_generates_and_escrows_a_key(run, keystore):
    outcome = run(provider="secretbox")
    result = outcome.result
    assert outcome.code == 0 and result["changed"] is True
    assert re.fullmatch(r"secretbox-\d{8}t\d{6}z", result["name"])
    assert result["provider"] == "secretbox" and result["size"] == 32 and result["source"] == "generated"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result["created"])
    assert "secret" not in result
    stored = _stored(keystore)
    assert len(stored) == 1 and stored[0]["name"] == result["name"]
    assert result["fingerprint"] == key_fingerprint(stored[0]["secret"])
    assert len(base64.b64decode(stored[0]["secret"])) == 32
    assert stat.S_IMODE(os.stat(keystore).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(keystore)).st_mode) == 0o700
    _assert_absent(outcome, stored[0]["secret"])


def test_named_key_is_idempotent(run, keystore):
    first = run(provider="aesgcm", name="gcm-1", size=16)
    second = run(provider="aesgcm", name="gcm-1")
    assert first.result["changed"] is True and second.result["changed"] is False
    assert second.result["fingerprint"] == first.result["fingerprint"] and second.result["size"] == 16
    assert len(_stored(keystore)) == 1


def test_return_secret(run, keystore):
    outcome = run(provider="aescbc", name="cbc-1", size=24, return_secret=True)
    secret = outcome.result["secret"]
    assert secret == _stored(keystore)[0]["secret"]
    assert len(base64.b64decode(secret)) == 24


@pytest.mark.parametrize("args, fragment", [
    (dict(provider="secretbox", name="k1"), "for provider aescbc, not secretbox"),
    (dict(provider="aescbc", name="k1", size=16), "with 32 bytes, not 16"),
    (dict(provider="aescbc", name="k1", on_existing="fail"), "on_existing=fail"),
])
def test_existing_name_is_never_regenerated(run, keystore, args, fragment):
    run(provider="aescbc", name="k1")
    with open(keystore, "rb") as handle:
        before = handle.read()
    outcome = run(**args)
    assert outcome.failed and fragment in outcome.result["msg"]
    with open(keystore, "rb") as handle:
        assert handle.read() == before
    _assert_absent(outcome, _stored(keystore)[0]["secret"])


@pytest.mark.parametrize("args, fragment", [
    (dict(provider="secretbox", size=16), "secretbox keys are 32 bytes"),
    (dict(provider="aescbc", name="bad:name"), "':'"),
    (dict(provider="aescbc", name="bad name"), "not allowed"),
    (dict(), "one of the following is required"),
    (dict(provider="aescbc", import_resources=[]), "mutually exclusive"),
    (dict(name="x", import_resources=[]), "mutually exclusive"),
])
def test_bad_arguments(run, keystore, args, fragment):
    outcome = run(**args)
    assert outcome.failed and fragment in outcome.result["msg"]
    assert not os.path.exists(keystore)


def test_check_mode_writes_nothing(run, keystore):
    outcome = run(provider="secretbox", name="sb", _ansible_check_mode=True)
    assert outcome.result["changed"] is True and outcome.result["name"] == "sb"
    assert not os.path.exists(os.path.dirname(keystore))


def test_diff_mode(run):
    run(provider="aescbc", name="k1")
    outcome = run(provider="aescbc", name="k2", _ansible_diff=True)
    diff = outcome.result["diff"]
    assert "name: k2" in diff["after"] and "name: k2" not in diff["before"]
    assert "secret" not in diff["before"] + diff["after"]


def _adoptable():
    return [
        {"resources": ["secrets"], "providers": [
            {"aescbc": {"keys": [{"name": "key1", "secret": ADOPT_A, "fingerprint": key_fingerprint(ADOPT_A)}]}},
            {"kms": {"apiVersion": "v2", "name": "vault", "endpoint": "unix:///s"}},
            {"identity": {}},
        ]},
        {"resources": ["configmaps"], "providers": [
            {"aesgcm": {"keys": [{"name": "gcm", "secret": ADOPT_B}]}},
        ]},
    ]


def test_import(run, keystore):
    outcome = run(import_resources=_adoptable())
    assert outcome.result["changed"] is True
    assert outcome.result["imported"] == [
        {"name": "key1", "provider": "aescbc", "fingerprint": key_fingerprint(ADOPT_A), "changed": True},
        {"name": "gcm", "provider": "aesgcm", "fingerprint": key_fingerprint(ADOPT_B), "changed": True},
    ]
    assert [(entry["name"], entry["source"]) for entry in _stored(keystore)] == [("key1", "imported"), ("gcm", "imported")]
    _assert_absent(outcome, ADOPT_A, ADOPT_B)
    again = run(import_resources=_adoptable())
    assert again.result["changed"] is False


def test_import_with_different_material_fails(run, keystore):
    run(provider="aescbc", name="key1")
    existing = _stored(keystore)[0]
    outcome = run(import_resources=_adoptable())
    assert outcome.failed
    message = outcome.result["msg"]
    assert "a key name that already exists with different material" in message and "'key1'" in message
    assert existing["fingerprint"] in message and key_fingerprint(ADOPT_A) in message
    assert len(_stored(keystore)) == 1
    _assert_absent(outcome, ADOPT_A, ADOPT_B, existing["secret"])


def test_secrets_never_appear_in_output_or_log(run, keystore):
    generated = run(provider="aescbc", name="k1")
    secret = _stored(keystore)[0]["secret"]
    assert "Invoked with" in generated.logged
    for args in (
        dict(provider="aescbc", name="k1"),
        dict(provider="aescbc", name="k1", _ansible_diff=True),
        dict(provider="aescbc", name="k1", _ansible_check_mode=True),
        dict(provider="secretbox", name="k1"),
        dict(import_resources=_adoptable(), _ansible_diff=True),
        dict(import_resources=[{"resources": ["secrets"], "providers": [
            {"secretbox": {"keys": [{"name": "short", "secret": ADOPT_B}]}}]}]),
        dict(import_resources=[{"resources": ["secrets"], "providers": [
            {"secretbox": {"keys": [{"name": "k1", "secret": ADOPT_A}]}}]}]),
    ):
        outcome = run(**args)
        assert "invocation" in outcome.result
        _assert_absent(outcome, secret, ADOPT_A, ADOPT_B)
