# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import base64
import datetime
import fcntl
import hashlib
import multiprocessing
import os
import stat

import pytest
import yaml

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import keystore as ks
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.encryption_config import key_fingerprint

NOW = datetime.datetime(2026, 11, 22, 23, 1, 2, tzinfo=datetime.timezone.utc)


def _b64(label, size):
    return base64.b64encode(hashlib.sha256(label.encode("ascii")).digest()[:size]).decode("ascii")


K32 = _b64("k32", 32)
K16 = _b64("k16", 16)
OTHER32 = _b64("other32", 32)


class FakeModule(object):
    """The part of AnsibleModule the backend uses; atomic_move like ansible-core's."""

    def __init__(self, check_mode=False, diff=False, **params):
        defaults = dict(keystore=None, provider=None, size=None, name=None, on_existing="keep",
                        return_secret=False, import_resources=None)
        defaults.update(params)
        self.params = defaults
        self.check_mode = check_mode
        self._diff = diff
        self.no_log_values = set()

    def atomic_move(self, src, dest):
        creating = not os.path.exists(dest)
        os.rename(src, dest)
        if creating:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(dest, 0o666 & ~umask)


def _run(tmp_path, check_mode=False, diff=False, now=NOW, **params):
    params.setdefault("keystore", str(tmp_path / "escrow" / "cluster.yml"))
    module = FakeModule(check_mode=check_mode, diff=diff, **params)
    return module, ks.KeyEscrow(module, now=now).run()


def _entries(tmp_path):
    with open(str(tmp_path / "escrow" / "cluster.yml"), "rb") as handle:
        return ks.parse_keystore(handle.read(), "keystore")


def _resources(*providers):
    return [{"resources": ["secrets"], "providers": list(providers)}]


# ---------------------------------------------------------------------------
# names and generation
# ---------------------------------------------------------------------------

def test_default_key_name():
    assert ks.default_key_name("secretbox", NOW) == "secretbox-20261122t230102z"
    assert ks.format_created(NOW) == "2026-11-22T23:01:02Z"


@pytest.mark.parametrize("name", ["k", "key1", "secretbox-20261122t230102z", "a.b_c-d", "9" * 128])
def test_valid_key_names(name):
    ks.validate_key_name(name)


@pytest.mark.parametrize("name", ["", None, "a:b", "-lead", ".lead", "sp ace", "tab\t", "x" * 129, "\u00e9"])
def test_invalid_key_names(name):
    with pytest.raises(ks.KeystoreError):
        ks.validate_key_name(name)


@pytest.mark.parametrize("provider, size", [("aescbc", 16), ("aescbc", 24), ("aescbc", 32), ("aesgcm", 16),
                                            ("aesgcm", 32), ("secretbox", 32), ("secretbox", None)])
def test_generate_secret_sizes(provider, size, monkeypatch):
    calls = []
    real = os.urandom

    def urandom(count):
        calls.append(count)
        return real(count)

    monkeypatch.setattr(ks.os, "urandom", urandom)
    secret = ks.generate_secret(provider, size)
    assert len(base64.b64decode(secret)) == (size or 32)
    assert calls == [size or 32]


def test_secretbox_is_only_32_bytes():
    with pytest.raises(ks.KeystoreError, match="secretbox keys are 32 bytes"):
        ks.generate_secret("secretbox", 16)


# ---------------------------------------------------------------------------
# file format
# ---------------------------------------------------------------------------

def test_render_and_parse_round_trip():
    entries = [
        ks.make_entry("a", "aescbc", K16, "2026-01-01T00:00:00Z", "imported"),
        ks.make_entry("secretbox-20261122t230102z", "secretbox", K32, "2026-11-22T23:01:02Z", "generated"),
    ]
    content = ks.render_keystore(entries)
    assert ks.parse_keystore(content, "k") == entries
    document = yaml.safe_load(content)
    assert list(document) == ["keys"]
    assert list(document["keys"][0]) == ["name", "provider", "secret", "fingerprint", "created", "source"]
    assert document["keys"][1]["fingerprint"] == key_fingerprint(K32)
    assert content.startswith(b"# kubecrypt.at_rest keystore")
    assert ks.parse_keystore(b"", "k") == []
    assert ks.parse_keystore(ks.render_keystore([]), "k") == []


def test_redacted_keystore_has_no_secret():
    entries = [ks.make_entry("a", "aescbc", K16, "t", "generated")]
    text = ks.redacted_keystore(entries)
    assert K16 not in text and key_fingerprint(K16) in text and "name: a" in text


@pytest.mark.parametrize("content, fragment", [
    ("- a\n", "single field 'keys'"),
    ("keys: {}\n", "'keys' must be a list"),
    ("keys: []\nother: 1\n", "single field 'keys'"),
    ("keys:\n- name: a\n  provider: aescbc\n  secret: '%s'\n- name: a\n  provider: aescbc\n  secret: '%s'\n" % (K16, K32),
     "key 'a' appears twice"),
    ("keys:\n- name: a\n  provider: kms\n  secret: '%s'\n" % K32, "provider must be"),
    ("keys:\n- name: a\n  provider: secretbox\n  secret: '%s'\n" % K16, "16 bytes"),
    ("keys:\n- name: a\n  provider: aescbc\n  secret: '%s'\n" % K32.rstrip("="), "base64"),
    ("keys:\n- name: a\n  provider: aescbc\n  secret: '%s'\n  fingerprint: sha256:0000000000000000\n" % K32,
     "does not match"),
    ("keys:\n- name: a\n  provider: aescbc\n  secret: '%s'\n  color: red\n" % K32, "unknown field"),
    ("keys:\n- name: a\n  provider: aescbc\n  secret: '%s'\n  source: stolen\n" % K32, "source must be"),
    ("keys:\n- name: 'a:b'\n  provider: aescbc\n  secret: '%s'\n" % K32, "without ':'"),
    ("keys:\n- name: a\n  provider: aescbc\n  secret: %s: x\n" % K32, "line 4"),
])
def test_damaged_keystore_is_refused_without_material(content, fragment):
    with pytest.raises(ks.KeystoreError) as exc_info:
        ks.parse_keystore(content.encode(), "/ctl/keystore.yml")
    message = str(exc_info.value)
    assert fragment in message
    assert "/ctl/keystore.yml" in message
    assert K32 not in message and K16 not in message and K32[:12] not in message


def test_hand_edited_entry_gets_its_fingerprint():
    content = ("keys:\n- name: a\n  provider: aescbc\n  secret: '%s'\n  created: 2026-01-01T00:00:00Z\n" % K32).encode()
    entry = ks.parse_keystore(content, "k")[0]
    assert entry["fingerprint"] == key_fingerprint(K32)
    assert entry["source"] == "imported"
    assert entry["created"].startswith("2026-01-01")


# ---------------------------------------------------------------------------
# generating into the keystore
# ---------------------------------------------------------------------------

def test_generate_creates_private_directory_and_file(tmp_path):
    module, result = _run(tmp_path, provider="secretbox")
    assert result["changed"] is True
    assert result["name"] == "secretbox-20261122t230102z"
    assert result["provider"] == "secretbox" and result["size"] == 32
    assert result["created"] == "2026-11-22T23:01:02Z" and result["source"] == "generated"
    assert "secret" not in result
    directory = tmp_path / "escrow"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "cluster.yml").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "cluster.yml.lock").stat().st_mode) == 0o600
    entries = _entries(tmp_path)
    assert [entry["name"] for entry in entries] == ["secretbox-20261122t230102z"]
    assert entries[0]["fingerprint"] == result["fingerprint"]
    # the secret is masked wherever it could surface
    assert entries[0]["secret"] in module.no_log_values
    assert not [name for name in os.listdir(str(directory)) if name.endswith(".kubecrypt-tmp")]


def test_existing_name_is_kept_not_regenerated(tmp_path):
    dummy, first = _run(tmp_path, provider="aescbc", name="key1", size=16)
    before = (tmp_path / "escrow" / "cluster.yml").read_bytes()
    module, again = _run(tmp_path, provider="aescbc", name="key1", return_secret=True,
                         now=NOW + datetime.timedelta(days=1))
    assert again["changed"] is False
    assert again["fingerprint"] == first["fingerprint"] and again["created"] == first["created"]
    assert again["size"] == 16
    assert again["secret"] == _entries(tmp_path)[0]["secret"]
    # return_secret: the caller needs it readable, so it is not registered
    assert again["secret"] not in module.no_log_values
    assert (tmp_path / "escrow" / "cluster.yml").read_bytes() == before


@pytest.mark.parametrize("params, fragment", [
    (dict(provider="secretbox", name="key1"), "for provider aescbc, not secretbox"),
    (dict(provider="aescbc", name="key1", size=32), "with 16 bytes, not 32"),
    (dict(provider="aescbc", name="key1", on_existing="fail"), "already exists"),
])
def test_existing_name_mismatch_fails(tmp_path, params, fragment):
    _run(tmp_path, provider="aescbc", name="key1", size=16)
    before = (tmp_path / "escrow" / "cluster.yml").read_bytes()
    with pytest.raises(ks.KeystoreError) as exc_info:
        _run(tmp_path, **params)
    assert fragment in str(exc_info.value) and "'key1'" in str(exc_info.value)
    assert (tmp_path / "escrow" / "cluster.yml").read_bytes() == before


def test_generate_refuses_bad_name_and_size(tmp_path):
    with pytest.raises(ks.KeystoreError, match="not allowed"):
        _run(tmp_path, provider="aescbc", name="bad name")
    with pytest.raises(ks.KeystoreError, match="':'"):
        _run(tmp_path, provider="aescbc", name="bad:name")
    with pytest.raises(ks.KeystoreError, match="secretbox keys are 32 bytes"):
        _run(tmp_path, provider="secretbox", size=24)
    assert not (tmp_path / "escrow" / "cluster.yml").exists()


def test_check_mode_writes_nothing(tmp_path):
    dummy, result = _run(tmp_path, check_mode=True, provider="aesgcm", name="g1")
    assert result["changed"] is True and result["name"] == "g1"
    assert not (tmp_path / "escrow").exists()
    _run(tmp_path, provider="aesgcm", name="g1")
    before = (tmp_path / "escrow" / "cluster.yml").read_bytes()
    dummy, result = _run(tmp_path, check_mode=True, provider="aesgcm", name="g2")
    assert result["changed"] is True
    assert (tmp_path / "escrow" / "cluster.yml").read_bytes() == before


def test_diff_shows_fingerprints_only(tmp_path):
    _run(tmp_path, provider="aescbc", name="a1")
    dummy, result = _run(tmp_path, diff=True, provider="aescbc", name="a2", return_secret=True)
    secrets = [entry["secret"] for entry in _entries(tmp_path)]
    text = repr(result["diff"])
    assert "name: a1" in result["diff"]["before"] and "name: a2" not in result["diff"]["before"]
    assert "name: a2" in result["diff"]["after"] and result["fingerprint"] in result["diff"]["after"]
    for secret in secrets:
        assert secret not in text


def test_lock_held_elsewhere_times_out(tmp_path, monkeypatch):
    directory = tmp_path / "escrow"
    directory.mkdir()
    monkeypatch.setattr(ks, "LOCK_TIMEOUT", 0.3)
    monkeypatch.setattr(ks._KeystoreLock.__init__, "__defaults__", (0.3,))
    fd = os.open(str(directory / "cluster.yml.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ks.KeystoreError, match="could not lock"):
            _run(tmp_path, provider="aescbc", name="a1")
    finally:
        os.close(fd)
    assert not (directory / "cluster.yml").exists()


def test_directory_created_by_a_concurrent_run_is_fine(tmp_path, monkeypatch):
    directory = tmp_path / "escrow"
    directory.mkdir(mode=0o700)
    real_isdir = os.path.isdir
    answers = [False]

    def isdir(path):
        # the first check misses it: the other run creates it right after
        return answers.pop() if answers else real_isdir(path)

    monkeypatch.setattr(ks.os.path, "isdir", isdir)
    ks._ensure_directory(str(directory / "cluster.yml"))
    assert not answers


def _generate_in_child(keystore, name, start):
    start.wait(10)
    module = FakeModule(keystore=keystore, provider="secretbox", name=name)
    ks.KeyEscrow(module).run()


def test_concurrent_runs_lose_no_key(tmp_path):
    """Eight runs released at once, into a keystore whose directory does not exist yet."""
    keystore = str(tmp_path / "escrow" / "cluster.yml")
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [context.Process(target=_generate_in_child, args=(keystore, "key%d" % index, start))
               for index in range(8)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert sorted(entry["name"] for entry in _entries(tmp_path)) == ["key%d" % index for index in range(8)]


# ---------------------------------------------------------------------------
# importing
# ---------------------------------------------------------------------------

def _import_input():
    return [
        {"resources": ["secrets"], "providers": [
            {"aescbc": {"keys": [
                {"name": "key2", "secret": K32},
                {"name": "key1", "secret": K16, "fingerprint": key_fingerprint(K16)},
            ]}},
            {"kms": {"apiVersion": "v2", "name": "vault", "endpoint": "unix:///s"}},
            {"identity": {}},
        ]},
        {"resources": ["configmaps"], "providers": [
            {"secretbox": {"keys": [{"name": "sb", "secret": OTHER32}]}, "aescbc": None, "kms": None},
            {"aescbc": {"keys": [{"name": "key2", "secret": K32}]}},
        ]},
    ]


def test_import_adopts_every_key_once(tmp_path):
    module, result = _run(tmp_path, import_resources=_import_input())
    assert result["changed"] is True
    assert result["imported"] == [
        {"name": "key2", "provider": "aescbc", "fingerprint": key_fingerprint(K32), "changed": True},
        {"name": "key1", "provider": "aescbc", "fingerprint": key_fingerprint(K16), "changed": True},
        {"name": "sb", "provider": "secretbox", "fingerprint": key_fingerprint(OTHER32), "changed": True},
    ]
    entries = _entries(tmp_path)
    assert [(entry["name"], entry["source"], entry["secret"]) for entry in entries] == [
        ("key2", "imported", K32), ("key1", "imported", K16), ("sb", "imported", OTHER32)]
    assert {K32, K16, OTHER32} <= module.no_log_values
    assert "'secret'" not in repr(result)
    assert K32 not in repr(result) and K16 not in repr(result) and OTHER32 not in repr(result)
    dummy, again = _run(tmp_path, import_resources=_import_input())
    assert again["changed"] is False
    assert [item["changed"] for item in again["imported"]] == [False, False, False]


def test_import_conflicting_material_fails_with_both_fingerprints(tmp_path):
    _run(tmp_path, provider="aescbc", name="key2", size=16)
    existing = _entries(tmp_path)[0]
    before = (tmp_path / "escrow" / "cluster.yml").read_bytes()
    with pytest.raises(ks.KeystoreError) as exc_info:
        _run(tmp_path, import_resources=_import_input())
    message = str(exc_info.value)
    assert "a key name that already exists with different material" in message
    assert "'key2'" in message
    assert existing["fingerprint"] in message and key_fingerprint(K32) in message
    assert K32 not in message and existing["secret"] not in message
    assert (tmp_path / "escrow" / "cluster.yml").read_bytes() == before


def test_import_same_material_other_provider_fails(tmp_path):
    _run(tmp_path, import_resources=_resources({"aesgcm": {"keys": [{"name": "k", "secret": K32}]}}))
    with pytest.raises(ks.KeystoreError, match="for aescbc: it already exists in the keystore for aesgcm"):
        _run(tmp_path, import_resources=_resources({"aescbc": {"keys": [{"name": "k", "secret": K32}]}}))


@pytest.mark.parametrize("resources, fragment", [
    (_resources({"aescbc": {"keys": [{"name": "k", "secret": K32}]}}, {"aescbc": {"keys": [{"name": "k", "secret": K16}]}}),
     "already appears with different material"),
    (_resources({"aescbc": {"keys": [{"name": "k", "secret": K32}]}}, {"secretbox": {"keys": [{"name": "k", "secret": K32}]}}),
     "appears for aescbc and secretbox"),
    (_resources({"secretbox": {"keys": [{"name": "k", "secret": K16}]}}), "16 bytes"),
    (_resources({"secretbox": {"keys": [{"name": "k", "fingerprint": key_fingerprint(K32)}]}}), "return_secrets=true"),
    (_resources({"secretbox": {"keys": [{"name": "k", "secret": K32, "fingerprint": key_fingerprint(K16)}]}}),
     "fingerprint"),
    (_resources({"secretbox": {"keys": [{"secret": K32}]}}), "name is a mandatory field"),
    (_resources({"secretbox": {"keys": [{"name": "a:b", "secret": K32}]}}), "':'"),
    (_resources({"secretbox": {"keys": "x"}}), "keys must be a list"),
    ("nope", "must be a list"),
])
def test_import_refuses_bad_input(tmp_path, resources, fragment):
    with pytest.raises(ks.KeystoreError) as exc_info:
        _run(tmp_path, import_resources=resources)
    message = str(exc_info.value)
    assert fragment in message
    assert K32 not in message and K16 not in message
    assert not (tmp_path / "escrow" / "cluster.yml").exists()


def test_import_check_mode_writes_nothing(tmp_path):
    dummy, result = _run(tmp_path, check_mode=True, import_resources=_import_input())
    assert result["changed"] is True and len(result["imported"]) == 3
    assert not (tmp_path / "escrow").exists()


def test_import_without_keyed_providers_changes_nothing(tmp_path):
    dummy, result = _run(tmp_path, import_resources=_resources({"identity": {}}))
    assert result == {"imported": [], "changed": False}
