"""Classification, decrypt check, resource prefixes and the scan tally, without etcd.

The sealing helpers below write values the way kube-apiserver does
(k8s.io/apiserver pkg/storage/value/encrypt/aes/aes.go and
.../secretbox/secretbox.go behind the prefixes of
pkg/server/options/encryptionconfig/config.go); the integration test checks
the same facts against a real kube-apiserver.
"""

from __future__ import annotations

import base64
import json
import os
import tracemalloc

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.secret import SecretBox

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import etcd_encryption
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd_encryption import (
    REASONS,
    EtcdEncryptionError,
    ScanTally,
    classify,
    decrypt_check,
    etcd_prefixes,
    missing_libraries,
    normalize_etcd_prefix,
    parse_keys,
    resource_prefix,
    run_scan,
    split_value,
    validate_notation,
)

ETCD_KEY = b"/registry/secrets/default/db-password"
PLAINTEXT = b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret" + b"\x12" + b"TOP-SECRET-PLAINTEXT"


def seal_aescbc(key, name, plaintext):
    iv = os.urandom(16)
    padding = 16 - len(plaintext) % 16
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = encryptor.update(plaintext + bytes([padding]) * padding) + encryptor.finalize()
    return b"k8s:enc:aescbc:v1:" + name.encode() + b":" + iv + body


def seal_aesgcm(key, name, plaintext, etcd_key):
    nonce = os.urandom(12)
    return b"k8s:enc:aesgcm:v1:" + name.encode() + b":" + nonce + AESGCM(key).encrypt(nonce, plaintext, etcd_key)


def seal_secretbox(key, name, plaintext):
    nonce = os.urandom(24)
    sealed = SecretBox(key).encrypt(plaintext, nonce)  # nonce + tag + ciphertext, like Go's secretbox.Seal
    return b"k8s:enc:secretbox:v1:" + name.encode() + b":" + bytes(sealed)


def seal(provider, key, name, plaintext=PLAINTEXT, etcd_key=ETCD_KEY):
    if provider == "aescbc":
        return seal_aescbc(key, name, plaintext)
    if provider == "aesgcm":
        return seal_aesgcm(key, name, plaintext, etcd_key)
    return seal_secretbox(key, name, plaintext)


KEYS = {
    "aescbc:k1": bytes(range(32)),
    "aesgcm:k1": bytes(range(1, 17)),
    "secretbox:k1": bytes(range(2, 34)),
}


# ---------------------------------------------------------------------------
# classify


@pytest.mark.parametrize("value, notation", [
    (b"k8s\x00\n\x0c\n\x02v1", "identity"),
    (b'{"kind":"Secret","apiVersion":"v1"}', "identity"),
    (b"\xd9\xd9\xf7\xa2", "identity"),
    (b"apiVersion: v1\ndata: {}\nkind: Secret\n", "identity"),
    (b"k8s:enc:aescbc:v1:key-1:" + b"\x00" * 32, "aescbc:key-1"),
    (b"k8s:enc:aesgcm:v1:key-1:" + b"\x00" * 28, "aesgcm:key-1"),
    (b"k8s:enc:secretbox:v1:secretbox-20261122t230102z:" + b"\x00" * 40, "secretbox:secretbox-20261122t230102z"),
    (b"k8s:enc:kms:v1:vault:" + b"\x00\x10", "kms:v1:vault"),
    (b"k8s:enc:kms:v2:vault:" + b"\n\x10", "kms:vault"),
    # a key name ends at the first ':' (payload bytes may contain more)
    (b"k8s:enc:secretbox:v1:k:\x00:\x01", "secretbox:k"),
    (b"", "unknown"),
    (b"garbage", "unknown"),
    (b"k8s\x01", "unknown"),
    (b" {", "unknown"),
    (b"k8s:enc:", "unknown"),
    (b"k8s:enc:aescbc:v1:", "unknown"),
    (b"k8s:enc:aescbc:v1:name-without-end", "unknown"),
    (b"k8s:enc:aescbc:v1::payload", "unknown"),
    (b"k8s:enc:aescbc:v2:k:payload", "unknown"),
    (b"k8s:enc:kms:v3:k:payload", "unknown"),
    (b"k8s:enc:rot13:v1:k:payload", "unknown"),
    (b"k8s:enc:aescbc:v1:\xff\xfe:payload", "unknown"),
])
def test_classify(value, notation):
    assert classify(value) == notation


def test_split_value_returns_the_payload_after_the_prefix():
    assert split_value(b"k8s:enc:aesgcm:v1:k:\x01\x02:\x03") == ("aesgcm:k", b"\x01\x02:\x03")
    assert split_value(b"k8s\x00abc") == ("identity", b"k8s\x00abc")


def test_kms_v2_notation_is_the_notation_of_the_planner():
    assert etcd_encryption._kms_v2_notation("vault", b"\n\x03abc") == "kms:vault"


_NAMES = st.text(alphabet=st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), min_size=1,
                 max_size=40)


@given(st.binary(max_size=200))
def test_classify_never_fails_and_returns_a_notation(value):
    notation = classify(value)
    assert notation in ("identity", "unknown") or notation.split(":")[0] in ("aescbc", "aesgcm", "secretbox", "kms")


@given(st.sampled_from(["aescbc", "aesgcm", "secretbox"]), _NAMES, st.binary(max_size=64))
def test_classify_reads_back_every_key_name(provider, name, payload):
    value = ("k8s:enc:%s:v1:%s:" % (provider, name)).encode("utf-8") + payload
    assert classify(value) == "%s:%s" % (provider, name)
    assert split_value(value)[1] == payload


# ---------------------------------------------------------------------------
# decrypt_check


@pytest.mark.parametrize("provider", ["aescbc", "aesgcm", "secretbox"])
def test_decrypt_check_opens_values_sealed_like_kube_apiserver(provider):
    value = seal(provider, KEYS[provider + ":k1"], "k1")
    assert decrypt_check(ETCD_KEY, value, KEYS) == (True, "ok")
    assert decrypt_check(ETCD_KEY.decode(), value, KEYS) == (True, "ok")


@pytest.mark.parametrize("plaintext", [b'{"kind":"Secret"}', b"apiVersion: v1\n", b"\xd9\xd9\xf7\xa1"])
def test_decrypt_check_accepts_every_serialization(plaintext):
    value = seal("secretbox", KEYS["secretbox:k1"], "k1", plaintext)
    assert decrypt_check(ETCD_KEY, value, KEYS) == (True, "ok")


def test_aesgcm_is_bound_to_the_full_etcd_key():
    value = seal("aesgcm", KEYS["aesgcm:k1"], "k1")
    assert decrypt_check(b"/registry/secrets/default/other", value, KEYS) == (False, "authentication_failed")
    # The --etcd-prefix is part of the key, and so of the authenticated data.
    assert decrypt_check(b"/other-prefix/secrets/default/db-password", value, KEYS) == \
        (False, "authentication_failed")


def test_aescbc_and_secretbox_are_not_bound_to_the_etcd_key():
    for provider in ("aescbc", "secretbox"):
        value = seal(provider, KEYS[provider + ":k1"], "k1")
        assert decrypt_check(b"/registry/secrets/elsewhere/x", value, KEYS) == (True, "ok")


@pytest.mark.parametrize("provider, reasons", [
    ("aescbc", ("bad_padding", "not_an_object")),
    ("aesgcm", ("authentication_failed",)),
    ("secretbox", ("authentication_failed",)),
])
def test_wrong_key_bytes_fail(provider, reasons):
    value = seal(provider, KEYS[provider + ":k1"], "k1")
    wrong = {provider + ":k1": bytes(len(KEYS[provider + ":k1"]))}
    ok, reason = decrypt_check(ETCD_KEY, value, wrong)
    assert not ok and reason in reasons


def test_a_plaintext_that_is_no_object_fails():
    value = seal("aescbc", KEYS["aescbc:k1"], "k1", b"hello, world")
    assert decrypt_check(ETCD_KEY, value, KEYS) == (False, "not_an_object")


@pytest.mark.parametrize("value, reason", [
    (b"k8s\x00plain", "not_encrypted"),
    (b"garbage", "unrecognized_format"),
    (b"k8s:enc:kms:v2:vault:\n\x01", "not_checkable"),
    (b"k8s:enc:secretbox:v1:other:" + b"\x00" * 64, "undecryptable_unknown_key"),
    (b"k8s:enc:aescbc:v1:k1:" + b"\x00" * 15, "too_short"),
    (b"k8s:enc:aescbc:v1:k1:" + b"\x00" * 16, "not_block_aligned"),
    (b"k8s:enc:aescbc:v1:k1:" + b"\x00" * 40, "not_block_aligned"),
    (b"k8s:enc:aesgcm:v1:k1:" + b"\x00" * 27, "too_short"),
    (b"k8s:enc:secretbox:v1:k1:" + b"\x00" * 39, "too_short"),
])
def test_decrypt_check_reasons(value, reason):
    assert decrypt_check(ETCD_KEY, value, KEYS) == (reason == "not_encrypted", reason)
    assert reason in REASONS


def test_a_key_of_the_wrong_length_is_reported_not_used():
    value = seal("secretbox", KEYS["secretbox:k1"], "k1")
    assert decrypt_check(ETCD_KEY, value, {"secretbox:k1": b"\x00" * 16}) == (False, "invalid_key_length")


_PLAINTEXTS = st.binary(max_size=300).map(lambda tail: b"k8s\x00" + tail)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["aescbc", "aesgcm", "secretbox"]), st.sampled_from([16, 24, 32]), _PLAINTEXTS,
       st.binary(min_size=1, max_size=80))
def test_round_trip_for_any_plaintext_and_key_size(provider, size, plaintext, etcd_key):
    size = 32 if provider == "secretbox" else size
    key = os.urandom(size)
    value = seal(provider, key, "k", plaintext, etcd_key)
    assert decrypt_check(etcd_key, value, {provider + ":k": key}) == (True, "ok")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["aesgcm", "secretbox"]), _PLAINTEXTS, st.data())
def test_any_tampered_byte_of_an_authenticated_value_fails(provider, plaintext, data):
    key = os.urandom(32)
    value = bytearray(seal(provider, key, "k", plaintext))
    start = len("k8s:enc:%s:v1:k:" % provider)
    index = data.draw(st.integers(min_value=start, max_value=len(value) - 1))
    value[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    assert decrypt_check(ETCD_KEY, bytes(value), {provider + ":k": key}) == (False, "authentication_failed")


def test_missing_libraries(monkeypatch):
    assert missing_libraries(KEYS) == []
    monkeypatch.setattr(etcd_encryption, "HAS_NACL", False)
    monkeypatch.setattr(etcd_encryption, "HAS_CRYPTOGRAPHY", False)
    assert [name for name, _error in missing_libraries({"secretbox:a": b""})] == ["PyNaCl"]
    assert [name for name, _error in missing_libraries({"aesgcm:a": b"", "aescbc:b": b""})] == ["cryptography"]
    assert missing_libraries({}) == []


# ---------------------------------------------------------------------------
# parse_keys and notations


def _b64(raw):
    return base64.b64encode(raw).decode()


def test_parse_keys():
    keys = parse_keys([
        {"provider": "aescbc", "name": "k1", "secret": _b64(KEYS["aescbc:k1"])},
        {"provider": "aesgcm", "name": "k1", "secret": _b64(KEYS["aesgcm:k1"])},
        {"provider": "secretbox", "name": "k1", "secret": _b64(KEYS["secretbox:k1"])},
        {"provider": "secretbox", "name": "k1", "secret": _b64(KEYS["secretbox:k1"])},
    ])
    assert keys == KEYS
    assert parse_keys(None) == {} and parse_keys([]) == {}


@pytest.mark.parametrize("entry, message", [
    ({"provider": "secretbox", "name": "k", "secret": _b64(b"\x01" * 20)},
     r"keys\[0\]: the secret of secretbox:k is 20 bytes; secretbox keys must be 32 bytes"),
    ({"provider": "aescbc", "name": "k", "secret": _b64(b"\x01" * 31)},
     r"aescbc:k is 31 bytes; aescbc keys must be 16 or 24 or 32 bytes"),
    ({"provider": "aesgcm", "name": "k", "secret": "not base64!"}, "not standard base64"),
    ({"provider": "aesgcm", "name": "a:b", "secret": _b64(b"\x01" * 16)}, "contain no ':'"),
    ({"provider": "aesgcm", "name": "", "secret": _b64(b"\x01" * 16)}, "non-empty"),
    ({"provider": "kms", "name": "k", "secret": _b64(b"\x01" * 16)}, "provider must be one of"),
])
def test_parse_keys_refuses_bad_keys_without_showing_them(entry, message):
    with pytest.raises(EtcdEncryptionError, match=message) as caught:
        parse_keys([entry])
    assert entry["secret"] not in str(caught.value)


def test_parse_keys_refuses_one_name_with_two_secrets():
    with pytest.raises(EtcdEncryptionError, match="given twice with different secrets"):
        parse_keys([{"provider": "secretbox", "name": "k", "secret": _b64(b"\x01" * 32)},
                    {"provider": "secretbox", "name": "k", "secret": _b64(b"\x02" * 32)}])


@pytest.mark.parametrize("notation", ["identity", "aescbc:k1", "aesgcm:key-2", "secretbox:s", "kms:v1:a",
                                      "kms:vault"])
def test_valid_notations(notation):
    assert validate_notation(notation) == notation


def test_kms_v2_notation_is_normalized():
    assert validate_notation("kms:v2:vault") == "kms:vault"


@pytest.mark.parametrize("notation", ["", "aescbc", "aescbc:", "aescbc:a:b", "kms:v3:a", "kms:v2:", "plain",
                                      "unknown", None])
def test_invalid_notations(notation):
    with pytest.raises(EtcdEncryptionError, match="not a provider notation"):
        validate_notation(notation)


# ---------------------------------------------------------------------------
# Resources to etcd prefixes


@pytest.mark.parametrize("resource, prefix", [
    ("secrets", "/registry/secrets/"),
    ("configmaps", "/registry/configmaps/"),
    ("Secrets", "/registry/secrets/"),
    ("deployments.apps", "/registry/deployments/"),
    ("events.events.k8s.io", "/registry/events/"),
    ("leases.coordination.k8s.io", "/registry/leases/"),
    ("services", "/registry/services/specs/"),
    ("endpoints", "/registry/services/endpoints/"),
    ("nodes", "/registry/minions/"),
    ("replicationcontrollers", "/registry/controllers/"),
    ("ingresses.networking.k8s.io", "/registry/ingress/"),
    ("ingresses.extensions", "/registry/ingress/"),
    ("customresourcedefinitions.apiextensions.k8s.io", "/registry/apiextensions.k8s.io/customresourcedefinitions/"),
    ("apiservices.apiregistration.k8s.io", "/registry/apiregistration.k8s.io/apiservices/"),
    ("widgets.example.com", "/registry/example.com/widgets/"),
    ("gateways.gateway.networking.k8s.io", "/registry/gateway.networking.k8s.io/gateways/"),
])
def test_resource_prefix(resource, prefix):
    assert resource_prefix(resource) == prefix


@pytest.mark.parametrize("etcd_prefix, normalized", [
    ("/registry", "/registry/"),
    ("/registry/", "/registry/"),
    ("registry", "/registry/"),
    ("/kubecrypt-test-x", "/kubecrypt-test-x/"),
    ("/a//b/", "/a/b/"),
    ("", "/registry/"),
    (None, "/registry/"),
])
def test_etcd_prefix_is_normalized_like_kube_apiserver(etcd_prefix, normalized):
    assert normalize_etcd_prefix(etcd_prefix) == normalized
    assert resource_prefix("secrets", etcd_prefix) == normalized + "secrets/"


@pytest.mark.parametrize("resource", ["*.apps", "*.*", "secrets/", "", "a b", None])
def test_resource_prefix_refuses_wildcards_and_junk(resource):
    with pytest.raises(EtcdEncryptionError, match="give a resource name"):
        resource_prefix(resource)


def test_etcd_prefixes():
    assert etcd_prefixes() == [("secrets", "/registry/secrets/")]
    assert etcd_prefixes(["secrets", "configmaps", "secrets"], "/other") == [
        ("secrets", "/other/secrets/"), ("configmaps", "/other/configmaps/")]
    assert etcd_prefixes(["secrets"], "/registry", {"b": "/x/b/", "a": "/x/a/"}) == [("a", "/x/a/"), ("b", "/x/b/")]
    with pytest.raises(EtcdEncryptionError, match="prefixes.a"):
        etcd_prefixes(prefixes={"a": ""})


# ---------------------------------------------------------------------------
# ScanTally and run_scan


def _values():
    return [
        ("secrets", b"/registry/secrets/a/1", seal("secretbox", KEYS["secretbox:k1"], "k1")),
        ("secrets", b"/registry/secrets/a/2", seal("aescbc", KEYS["aescbc:k1"], "k1")),
        ("secrets", b"/registry/secrets/a/3", seal("aesgcm", KEYS["aesgcm:k1"], "k1", PLAINTEXT,
                                                   b"/registry/secrets/a/3")),
        ("secrets", b"/registry/secrets/a/4", PLAINTEXT),
        ("secrets", b"/registry/secrets/a/5", seal("secretbox", os.urandom(32), "old")),
        # a kms v2 EncryptedObject: encryptedData, keyID, encryptedDEKSource, encryptedDEKSourceType
        ("secrets", b"/registry/secrets/a/6", b"k8s:enc:kms:v2:vault:\n\x01\x00\x12\x02k1\x1a\x01\x00(\x01"),
        ("secrets", b"/registry/secrets/a/7", b"\x00garbage"),
        # aesgcm value moved to another key: authentication fails
        ("secrets", b"/registry/secrets/a/8", seal("aesgcm", KEYS["aesgcm:k1"], "k1")),
        ("configmaps", b"/registry/configmaps/a/1", b'{"kind":"ConfigMap"}'),
    ]


def test_tally_counts_and_samples():
    tally = ScanTally("secretbox:k1", KEYS, decrypt=True, sample_size=3)
    tally.start_resource("empty")
    for resource, key, value in _values():
        tally.add(resource, key, value)
    result = tally.result()
    assert result["total"] == 9
    assert result["by_provider"] == {"secretbox:k1": 1, "aescbc:k1": 1, "aesgcm:k1": 2, "identity": 2,
                                     "secretbox:old": 1, "kms:vault": 1, "unknown": 1}
    assert result["by_resource"]["configmaps"] == {"total": 1, "by_provider": {"identity": 1}}
    assert result["by_resource"]["empty"] == {"total": 0, "by_provider": {}}
    assert result["by_resource"]["secrets"]["total"] == 8
    assert result["offending"] == 8
    assert result["offending_sample"] == ["/registry/secrets/a/2", "/registry/secrets/a/3", "/registry/secrets/a/4"]
    assert result["decrypt_checked"] == 3
    assert result["decrypt_unchecked"] == 1
    assert result["decrypt_failures"] == 3
    assert result["decrypt_failures_by_reason"] == {"undecryptable_unknown_key": 1, "unrecognized_format": 1,
                                                    "authentication_failed": 1}
    assert result["decrypt_failure_sample"] == [
        {"key": "/registry/secrets/a/5", "provider": "secretbox:old", "reason": "undecryptable_unknown_key"},
        {"key": "/registry/secrets/a/7", "provider": "unknown", "reason": "unrecognized_format"},
        {"key": "/registry/secrets/a/8", "provider": "aesgcm:k1", "reason": "authentication_failed"},
    ]
    assert result["encrypted_percent"] == round(100.0 * 6 / 9, 2)
    assert result["all_expected"] is False


def test_tally_result_holds_no_value_key_or_plaintext():
    tally = ScanTally("secretbox:k1", KEYS, decrypt=True)
    values = _values()
    for resource, key, value in values:
        tally.add(resource, key, value)
    text = json.dumps(tally.result())
    for raw in list(KEYS.values()):
        assert _b64(raw) not in text and raw.hex() not in text
    assert "TOP-SECRET-PLAINTEXT" not in text
    for _resource, _key, value in values:
        assert _b64(value) not in text


def test_tally_without_expectation_or_decrypt_check():
    tally = ScanTally()
    for resource, key, value in _values():
        tally.add(resource, key, value)
    result = tally.result()
    assert result["offending"] == 0 and result["offending_sample"] == []
    assert result["decrypt_failures"] == 0 and result["decrypt_checked"] == 0
    assert result["all_expected"] is True and result["expected_provider"] is None


def test_tally_all_expected_and_empty():
    assert ScanTally("identity").result()["encrypted_percent"] == 100.0
    tally = ScanTally("secretbox:k1", KEYS, decrypt=True)
    tally.add("secrets", b"/registry/secrets/a/1", seal("secretbox", KEYS["secretbox:k1"], "k1"))
    assert tally.result()["all_expected"] is True and tally.result()["encrypted_percent"] == 100.0


def test_tally_expecting_identity_flags_encrypted_values():
    tally = ScanTally("identity")
    for resource, key, value in _values():
        tally.add(resource, key, value)
    assert tally.offending == 7


def test_tally_refuses_a_bad_expected_provider():
    with pytest.raises(EtcdEncryptionError):
        ScanTally("secretbox")


class _FakeClient(object):
    """Yields generated values without holding them, and records the revisions asked for."""

    def __init__(self, counts, revision=42):
        self.counts = counts
        self.revision = revision
        self.calls = []

    def range_iter(self, prefix, page_size=500, keys_only=False, revision=None):
        self.calls.append((prefix, page_size, revision))
        client = self

        class _Scan(object):
            def __init__(self):
                self.revision = revision or client.revision

            def __iter__(self):
                value = seal("secretbox", KEYS["secretbox:k1"], "k1")
                for index in range(client.counts[prefix]):
                    yield ("%s%08d" % (prefix, index)).encode(), value

        return _Scan()


def test_run_scan_reads_every_prefix_at_the_first_revision():
    client = _FakeClient({"/registry/secrets/": 3, "/registry/configmaps/": 2})
    tally = ScanTally("secretbox:k1", KEYS, decrypt=True)
    revision = run_scan(client, etcd_prefixes(["secrets", "configmaps"]), tally, 7)
    assert revision == 42
    assert client.calls == [("/registry/secrets/", 7, None), ("/registry/configmaps/", 7, 42)]
    assert tally.result()["by_resource"] == {
        "secrets": {"total": 3, "by_provider": {"secretbox:k1": 3}},
        "configmaps": {"total": 2, "by_provider": {"secretbox:k1": 2}},
    }
    assert tally.all_expected


def _peak_memory(count):
    client = _FakeClient({"/registry/secrets/": count})
    tally = ScanTally("aescbc:k1", KEYS, decrypt=True, sample_size=20)
    tracemalloc.start()
    try:
        run_scan(client, [("secrets", "/registry/secrets/")], tally, 500)
        return tracemalloc.get_traced_memory()[1], tally
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_values():
    small, _tally = _peak_memory(2000)
    large, tally = _peak_memory(20000)
    assert tally.total == 20000 and tally.offending == 20000
    assert len(tally.offending_sample) == 20
    # Ten times the values, about the same peak (bounded samples, counters only).
    assert large < small * 1.5 + 64 * 1024, (small, large)
