"""The snapshot stream is checked against the sha256 etcd appends to it."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd import EtcdClient, EtcdError


class _Endpoint(object):
    url = "https://etcd.invalid:2379"


def _stream(payload, chunk=7):
    lines = [json.dumps({"result": {"blob": base64.b64encode(payload[i:i + chunk]).decode()}}).encode() + b"\n"
             for i in range(0, len(payload), chunk)]
    return io.BytesIO(b"".join(lines))


def _client():
    return EtcdClient(["https://etcd.invalid:2379"], timeout=1)


def test_a_complete_stream_is_written_whole_and_its_hash_checked():
    database = bytes(range(256)) * 5
    payload = database + hashlib.sha256(database).digest()
    out = io.BytesIO()
    result = _client()._stream_snapshot(_Endpoint(), _stream(payload), out)
    assert out.getvalue() == payload
    assert result == {"endpoint": _Endpoint.url, "size": len(payload), "sha256": hashlib.sha256(database).hexdigest()}


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_a_damaged_stream_fails(damage):
    database = bytes(range(256)) * 5
    payload = database + hashlib.sha256(database).digest()
    if damage == "truncate":
        payload = payload[:-10]
    elif damage == "flip":
        payload = payload[:100] + bytes([payload[100] ^ 1]) + payload[101:]
    else:
        payload = b""
    with pytest.raises(EtcdError, match="incomplete or corrupt"):
        _client()._stream_snapshot(_Endpoint(), _stream(payload), io.BytesIO())


def test_an_error_message_in_the_stream_fails_with_its_text():
    stream = io.BytesIO(json.dumps({"error": {"message": "etcdserver: too many requests"}}).encode() + b"\n")
    with pytest.raises(EtcdError, match="too many requests"):
        _client()._stream_snapshot(_Endpoint(), stream, io.BytesIO())
