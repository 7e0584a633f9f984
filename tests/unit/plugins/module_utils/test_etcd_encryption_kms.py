"""kms v2 values: the hand-written EncryptedObject parser and the count per KMS key ID.

The parser is checked against the protobuf runtime itself: messages are built
from a verbatim copy of the upstream definition
(k8s.io/apiserver v0.37.2 pkg/storage/value/encrypt/envelope/kmsv2/v2/api.proto,
in fixtures/kmsv2_encrypted_object.proto, compiled in memory by grpcio-tools),
and from a value a real kube-apiserver v1.37.2 stored in the lab
(fixtures/kmsv2_secret_value.hex).
"""

from __future__ import annotations

import hashlib
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd_encryption import (
    KMS_KEY_IDS_MAX,
    KMS_MALFORMED,
    KMS_OTHER_KEY_IDS,
    EtcdEncryptionError,
    MalformedEnvelope,
    ScanTally,
    classify,
    kms_key_id_hash,
    kms_v2_key_id,
    parse_kms_v2,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
PREFIX = b"k8s:enc:kms:v2:vault:"


@pytest.fixture(scope="module")
def upstream():
    """The upstream EncryptedObject message class."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    sys.path.insert(0, FIXTURES)
    try:
        return grpc.protos("kmsv2_encrypted_object.proto")
    finally:
        sys.path.remove(FIXTURES)


def _encode(upstream, **fields):
    return upstream.EncryptedObject(**fields).SerializeToString()


def _minimal(key_id=b"k1"):
    """encryptedData, keyID, encryptedDEKSource, encryptedDEKSourceType=1, encoded by hand."""
    return b"\n\x01\x00\x12" + bytes([len(key_id)]) + key_id + b"\x1a\x01\x00(\x01"


# ---------------------------------------------------------------------------
# The parser


def test_parses_what_the_protobuf_runtime_encodes(upstream):
    payload = _encode(upstream, encryptedData=b"\x01" * 80, keyID="kek-2", encryptedDEKSource=b"\x02" * 60,
                      annotations={"kms.example.com": b"v1", "b.example.com": b""},
                      encryptedDEKSourceType=upstream.HKDF_SHA256_XNONCE_AES_GCM_SEED)
    envelope = parse_kms_v2(payload)
    assert envelope.key_id == "kek-2"
    assert envelope.dek_source_type == "HKDF_SHA256_XNONCE_AES_GCM_SEED"
    assert envelope.encrypted_dek_source_size == 60
    assert envelope.encrypted_data_size == 80
    assert envelope.annotation_keys == ["b.example.com", "kms.example.com"]


def test_the_default_dek_source_type_is_absent_on_the_wire(upstream):
    payload = _encode(upstream, encryptedData=b"\x01", keyID="k", encryptedDEKSource=b"\x02")
    assert parse_kms_v2(payload).dek_source_type == "AES_GCM_KEY"


@settings(max_examples=200, deadline=None)
@given(key_id=st.text(min_size=1, max_size=300).filter(lambda text: len(text.encode("utf-8")) <= 1024),
       data=st.binary(min_size=1, max_size=300), source=st.binary(min_size=1, max_size=1024),
       annotations=st.dictionaries(st.text(max_size=20), st.binary(max_size=40), max_size=4),
       seed=st.booleans())
def test_parses_any_valid_object_the_runtime_encodes(upstream, key_id, data, source, annotations, seed):
    payload = _encode(upstream, encryptedData=data, keyID=key_id, encryptedDEKSource=source,
                      annotations=annotations, encryptedDEKSourceType=1 if seed else 0)
    envelope = parse_kms_v2(payload)
    assert envelope.key_id == key_id
    assert envelope.encrypted_data_size == len(data)
    assert envelope.encrypted_dek_source_size == len(source)
    assert envelope.annotation_keys == sorted(annotations)
    assert kms_v2_key_id(PREFIX + payload) == key_id


def test_a_value_kube_apiserver_stored():
    """A Secret kube-apiserver v1.37.2 wrote through the lab's KMS v2 plugin (key ID kek-1)."""
    with open(os.path.join(FIXTURES, "kmsv2_secret_value.hex")) as handle:
        value = bytes.fromhex("".join(line.strip() for line in handle if not line.startswith("#")))
    assert classify(value) == "kms:lab-kms"
    assert kms_v2_key_id(value) == "kek-1"
    envelope = parse_kms_v2(value[len(b"k8s:enc:kms:v2:lab-kms:"):])
    assert envelope.dek_source_type == "HKDF_SHA256_XNONCE_AES_GCM_SEED"
    assert envelope.annotation_keys == ["kms.lab.kubecrypt.io"]


def test_unknown_fields_are_skipped():
    # field 9 (varint), field 10 (length-delimited), field 11 (fixed64), field 12 (fixed32)
    payload = _minimal() + b"H\x05R\x02ab" + b"Y" + b"\x00" * 8 + b"e" + b"\x00" * 4
    assert parse_kms_v2(payload).key_id == "k1"


def test_the_last_occurrence_of_a_field_wins():
    assert parse_kms_v2(_minimal(b"old") + b"\x12\x03new").key_id == "new"


@pytest.mark.parametrize("payload, message", [
    (b"", "encryptedData is empty"),
    (b"\x12\x02k1\x1a\x01\x00", "encryptedData is empty"),
    (b"\n\x01\x00\x1a\x01\x00", "keyID is 0 bytes"),
    (b"\n\x01\x00\x12\x02k1", "encryptedDEKSource is 0 bytes"),
    (b"\n\x01\x00\x12\x02k1\x1a\x01\x00(\x02", "unknown encryptedDEKSourceType 2"),
    (b"\n\x05\x00", "runs past the end"),
    (b"\n", "truncated varint"),
    (b"\n\x01\x00\x12\x02k1\x1a\x01\x00\x13", "unsupported wire type 3"),
    (b"\x10\x01", "field 2 has wire type 0, not 2"),
    (b"\x00\x01", "field number 0"),
    (b"\n\x01\x00\x12\x02\xff\xfe\x1a\x01\x00", "the key ID is not UTF-8"),
    (b"\n\x01\x00\x12\x01k\x1a\x82\x08" + b"\x00" * 1026, "encryptedDEKSource is 1026 bytes"),
    (b"\n\x01\x00\x12\x81\x08" + b"k" * 1025 + b"\x1a\x01\x00", "keyID is 1025 bytes"),
    (b"\n" + b"\xff" * 11, "varint longer than 64 bits"),
])
def test_refuses_what_kube_apiserver_refuses(payload, message):
    with pytest.raises(MalformedEnvelope, match=message):
        parse_kms_v2(payload)


def test_annotations_are_limited_to_32_kib(upstream):
    payload = _encode(upstream, encryptedData=b"\x01", keyID="k", encryptedDEKSource=b"\x02",
                      annotations={"a.example.com": b"\x00" * (32 * 1024)})
    with pytest.raises(MalformedEnvelope, match="annotations exceed"):
        parse_kms_v2(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_malformed(payload):
    try:
        parse_kms_v2(payload)
    except MalformedEnvelope:
        pass


def test_key_id_hash_is_what_the_metrics_show():
    assert kms_key_id_hash("kek-1") == "sha256:" + hashlib.sha256(b"kek-1").hexdigest()


def test_key_id_of_other_values_is_none():
    assert kms_v2_key_id(b"k8s:enc:kms:v1:vault:" + _minimal()) is None
    assert kms_v2_key_id(b"k8s:enc:aescbc:v1:k:" + b"\x00" * 32) is None
    assert kms_v2_key_id(PREFIX + b"\n\x05") is None


# ---------------------------------------------------------------------------
# Counting by key ID


def _kms(key_id, name=b"vault"):
    return b"k8s:enc:kms:v2:" + name + b":" + _minimal(key_id)


def _tally(values, **options):
    tally = ScanTally(**options)
    for index, value in enumerate(values):
        tally.add("secrets", "/registry/secrets/ns/s%d" % index, value)
    return tally.result()


def test_counts_per_provider_and_key_id():
    result = _tally([_kms(b"kek-1"), _kms(b"kek-2"), _kms(b"kek-2"), _kms(b"kek-1", b"other"), PREFIX + b"\n\x05",
                     b"k8s\x00plain"])
    assert result["by_provider"] == {"kms:vault": 4, "kms:other": 1, "identity": 1}
    assert result["by_kms_key_id"] == {"kms:vault": {"kek-1": 1, "kek-2": 2, KMS_MALFORMED: 1},
                                       "kms:other": {"kek-1": 1}}
    assert result["kms_key_id_hashes"] == {"kek-1": kms_key_id_hash("kek-1"), "kek-2": kms_key_id_hash("kek-2")}


@pytest.mark.parametrize("options", [
    {"expected_kms_key_id": "kek-2"},
    {"expected_kms_key_id_hash": kms_key_id_hash("kek-2")},
])
def test_values_under_an_older_kek_are_offending(options):
    result = _tally([_kms(b"kek-1"), _kms(b"kek-2"), _kms(b"kek-2"), PREFIX + b"\n\x05", b"k8s\x00plain"],
                    expected_provider="kms:v2:vault", **options)
    assert result["expected_provider"] == "kms:vault"
    assert result["expected_kms_key_id_hash"] == kms_key_id_hash("kek-2")
    assert result["offending"] == 3
    assert result["stale_kms_key_id"] == 2
    assert result["offending_sample"] == ["/registry/secrets/ns/s0", "/registry/secrets/ns/s3",
                                          "/registry/secrets/ns/s4"]
    assert not result["all_expected"]


def test_all_under_the_newest_kek():
    result = _tally([_kms(b"kek-2")] * 3, expected_provider="kms:vault", expected_kms_key_id="kek-2")
    assert result["all_expected"] and result["offending"] == 0


def test_a_malformed_envelope_fails_the_decrypt_check():
    result = _tally([_kms(b"kek-1"), PREFIX + b"\n\x05"], decrypt=True)
    assert result["decrypt_unchecked"] == 1
    assert result["decrypt_failures_by_reason"] == {"malformed_envelope": 1}


@pytest.mark.parametrize("options, message", [
    ({"expected_kms_key_id": "k"}, "needs an expected kms provider"),
    ({"expected_provider": "secretbox:k", "expected_kms_key_id": "k"}, "needs an expected kms provider"),
    ({"expected_provider": "kms:v1:vault", "expected_kms_key_id": "k"}, "needs an expected kms provider"),
    ({"expected_provider": "kms:vault", "expected_kms_key_id": ""}, "non-empty"),
    ({"expected_provider": "kms:vault", "expected_kms_key_id_hash": "sha256:ABC"}, "not a KMS key ID hash"),
    ({"expected_provider": "kms:vault", "expected_kms_key_id": "k", "expected_kms_key_id_hash": "x"}, "not both"),
])
def test_refuses_a_key_id_without_a_kms_provider(options, message):
    with pytest.raises(EtcdEncryptionError, match=message):
        ScanTally(**options)


def test_distinct_key_ids_are_bounded():
    result = _tally([_kms(b"kek-%d" % index) for index in range(KMS_KEY_IDS_MAX + 5)])
    assert len(result["kms_key_id_hashes"]) == KMS_KEY_IDS_MAX
    assert result["by_kms_key_id"]["kms:vault"][KMS_OTHER_KEY_IDS] == 5
