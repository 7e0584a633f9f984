# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the raw values kube-apiserver stores in etcd are encrypted with, and whether escrowed keys open them.

Pure logic, testable without Ansible or etcd: ``classify`` names the provider
and key of a raw value, ``decrypt_check`` tries an escrowed key on it,
``etcd_prefixes`` maps resource names to etcd key prefixes, and ``ScanTally``
counts a stream of ``(etcd key, value)`` with bounded memory.  ``run_scan``
feeds it from any client with ``range_iter`` (``module_utils.etcd.EtcdClient``).

The storage formats, as kube-apiserver writes them (k8s.io/apiserver
``pkg/server/options/encryptionconfig/config.go`` for the prefixes,
``pkg/storage/value/encrypt/aes/aes.go`` and ``.../secretbox/secretbox.go`` for
the payloads, ``pkg/storage/etcd3/store.go`` for the authenticated data):

* ``k8s:enc:aescbc:v1:<key name>:`` + IV(16) + AES-CBC ciphertext with PKCS#7
  padding; no authentication and no additional data.
* ``k8s:enc:aesgcm:v1:<key name>:`` + nonce(12) + ciphertext + tag(16); the
  additional data is the full etcd key (``--etcd-prefix`` included).
* ``k8s:enc:secretbox:v1:<key name>:`` + nonce(24) + tag(16) + ciphertext
  (XSalsa20-Poly1305, NaCl's ``secretbox.Seal``); no additional data.
* ``k8s:enc:kms:v1:<name>:`` + an envelope that only the KMS plugin can open.
* ``k8s:enc:kms:v2:<name>:`` + the protobuf ``EncryptedObject`` of
  k8s.io/apiserver ``pkg/storage/value/encrypt/envelope/kmsv2/v2/api.proto``:
  ``encryptedData`` (1, bytes), ``keyID`` (2, string), ``encryptedDEKSource``
  (3, bytes), ``annotations`` (4, map<string, bytes>) and
  ``encryptedDEKSourceType`` (5, enum).  The key ID names the KMS key (KEK)
  that encrypted the DEK; it is stored in plaintext, and ``parse_kms_v2``
  reads it without the plugin.  kube-apiserver's metrics name it by
  ``sha256:`` + the hex SHA-256 of its bytes (``kms_key_id_hash``).
* Anything else is stored as it was serialized (the identity provider):
  protobuf with the magic ``k8s\\x00``, JSON starting with ``{``, CBOR with the
  self-describing tag ``\\xd9\\xd9\\xf7`` (custom resources with the CBOR
  serializer), or YAML starting with ``apiVersion:`` (``--storage-media-type
  application/yaml``).

A key name ends at the first ``:`` after the provider prefix.  kube-apiserver
matches ``<name>:`` prefixes in configuration order and does not forbid ``:``
in names; this collection does, so that the name in a stored value is
unambiguous.

Nothing here returns or logs key material or plaintext: results are
notations (``secretbox:k2``, ``kms:vault``), counts, KMS key IDs, etcd keys
and reason codes.

Notations: kms v2 values are ``kms:<name>``, the notation the rest of the
collection (the planner, ``encryption_config_info``) gives a kms provider,
which this collection always configures with ``apiVersion: v2``;
``kms:v2:<name>`` is accepted as input for the same.  kms v1 values are
``kms:v1:<name>``.

Private helpers are ``_``-prefixed.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import posixpath
import re
import traceback

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

try:
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox
except ImportError:
    HAS_NACL = False
    NACL_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_NACL = True
    NACL_IMPORT_ERROR = None

IDENTITY = "identity"
UNKNOWN = "unknown"
KEYED_PROVIDERS = ("aescbc", "aesgcm", "secretbox")
KEY_SIZES = {"aescbc": (16, 24, 32), "aesgcm": (16, 24, 32), "secretbox": (32,)}
ENCRYPTED_MAGIC = b"k8s:enc:"
# Serializations kube-apiserver stores unencrypted objects in.
PLAINTEXT_MAGICS = (
    (b"k8s\x00", "protobuf"),
    (b"{", "json"),
    (b"\xd9\xd9\xf7", "cbor"),
    (b"apiVersion:", "yaml"),
)
DEFAULT_ETCD_PREFIX = "/registry"
DEFAULT_SAMPLE_SIZE = 20

_AES_BLOCK = 16
_GCM_NONCE = 12
_GCM_TAG = 16
_SECRETBOX_NONCE = 24
_SECRETBOX_TAG = 16

# Reason codes of decrypt_check; the descriptions are documented in the module's RETURN.
REASONS = {
    "ok": "decrypted with the escrowed key; the plaintext is a stored object",
    "not_encrypted": "stored unencrypted (identity); nothing to decrypt",
    "undecryptable_unknown_key": "encrypted with a key that is not among the escrowed keys",
    "too_short": "shorter than the provider's nonce, IV and tag",
    "not_block_aligned": "aescbc ciphertext is not a whole number of 16-byte blocks",
    "bad_padding": "aescbc PKCS#7 padding is invalid after decryption: wrong key or corrupted value",
    "authentication_failed": "the authentication tag does not match: wrong key, corrupted value, "
                             "or (aesgcm) a value copied from another etcd key",
    "not_an_object": "decrypted, but the plaintext is not a stored object: wrong key or corrupted value",
    "invalid_key_length": "the escrowed key has a length the provider does not accept",
    "not_checkable": "kms values can only be opened by the KMS plugin",
    "malformed_envelope": "a kms v2 value whose EncryptedObject kube-apiserver would not accept",
    "unrecognized_format": "neither a known encryption prefix nor a known serialization",
}

# Resources kube-apiserver stores under a name other than their own
# (k8s.io/kubernetes pkg/kubeapiserver/default_storage_factory_builder.go, SpecialDefaultResourcePrefixes).
SPECIAL_RESOURCE_PREFIXES = {
    ("", "replicationcontrollers"): "controllers",
    ("", "endpoints"): "services/endpoints",
    ("", "nodes"): "minions",
    ("", "services"): "services/specs",
    ("extensions", "ingresses"): "ingress",
    ("networking.k8s.io", "ingresses"): "ingress",
}
# API groups built into kube-apiserver whose resources are stored under /<prefix>/<resource>/;
# resources of every other group (CRDs, APIServices, custom resources) are under /<prefix>/<group>/<resource>/.
BUILTIN_GROUPS = frozenset((
    "", "admissionregistration.k8s.io", "apps", "autoscaling", "batch", "certificates.k8s.io",
    "coordination.k8s.io", "discovery.k8s.io", "events.k8s.io", "extensions", "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io", "networking.k8s.io", "node.k8s.io", "policy", "rbac.authorization.k8s.io",
    "resource.k8s.io", "scheduling.k8s.io", "storage.k8s.io", "storagemigration.k8s.io",
))

_NOTATION = re.compile(r"(?:identity|(?:aescbc|aesgcm|secretbox):[^:]+|kms:v1:[^:]+|kms:(?:v2:)?[^:]+)")
_KMS_KEY_ID_HASH = re.compile(r"sha256:[0-9a-f]{64}")

# kms v2 EncryptedObject (k8s.io/apiserver .../envelope/kmsv2/v2/api.proto) and
# the limits kube-apiserver's ValidateEncryptedObject enforces.
_EO_ENCRYPTED_DATA = 1
_EO_KEY_ID = 2
_EO_ENCRYPTED_DEK_SOURCE = 3
_EO_ANNOTATIONS = 4
_EO_ENCRYPTED_DEK_SOURCE_TYPE = 5
KMS_DEK_SOURCE_TYPES = {0: "AES_GCM_KEY", 1: "HKDF_SHA256_XNONCE_AES_GCM_SEED"}
_KMS_KEY_ID_MAX = 1024
_KMS_DEK_SOURCE_MAX = 1024
_KMS_ANNOTATIONS_MAX = 32 * 1024
# Distinct key IDs tallied per kms provider; more are counted together.
KMS_KEY_IDS_MAX = 100
KMS_OTHER_KEY_IDS = "(other key IDs)"
KMS_MALFORMED = "(malformed EncryptedObject)"

KmsV2Envelope = collections.namedtuple(
    "KmsV2Envelope", "key_id dek_source_type encrypted_dek_source_size encrypted_data_size annotation_keys")
_RESOURCE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class EtcdEncryptionError(Exception):
    """Invalid input (keys, notation, resource); the message never contains key material."""


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------

def looks_like_object(data):
    """True when ``data`` starts like an object kube-apiserver serialized (protobuf, JSON, CBOR, YAML)."""
    return any(data.startswith(magic) for magic, _name in PLAINTEXT_MAGICS)


def classify(value):
    """The provider notation of a raw etcd value.

    ``identity`` for a stored object that is not encrypted, ``aescbc:<key>``,
    ``aesgcm:<key>`` or ``secretbox:<key>``, ``kms:<name>`` (kms v2) or
    ``kms:v1:<name>``, and ``unknown`` for anything else (an unknown or
    malformed ``k8s:enc:`` prefix, or bytes that are no known serialization).
    """
    return split_value(value)[0]


def split_value(value):
    """``(notation, payload)``: ``classify``'s notation and the bytes after the provider prefix.

    The payload is the value itself for ``identity`` and ``unknown``.
    """
    value = bytes(value)
    if not value.startswith(ENCRYPTED_MAGIC):
        return (IDENTITY if looks_like_object(value) else UNKNOWN), value
    fields = value[len(ENCRYPTED_MAGIC):].split(b":", 3)
    if len(fields) < 4:
        return UNKNOWN, value
    provider, version, name, payload = fields
    try:
        provider = provider.decode("ascii")
        version = version.decode("ascii")
        name = name.decode("utf-8")
    except UnicodeDecodeError:
        return UNKNOWN, value
    if not name:
        return UNKNOWN, value
    if provider in KEYED_PROVIDERS and version == "v1":
        return "%s:%s" % (provider, name), payload
    if provider == "kms" and version == "v1":
        return "kms:v1:%s" % name, payload
    if provider == "kms" and version == "v2":
        return _kms_v2_notation(name, payload), payload
    return UNKNOWN, value


def _kms_v2_notation(name, payload):
    """Notation of a kms v2 value: ``kms:<name>`` (``parse_kms_v2`` reads its key ID)."""
    return "kms:%s" % name


def kms_key_id_hash(key_id):
    """How kube-apiserver's envelope metrics name a KMS key ID: ``sha256:`` + hex SHA-256 of its bytes."""
    return "sha256:" + hashlib.sha256(_to_bytes(key_id)).hexdigest()


class MalformedEnvelope(ValueError):
    """A kms v2 payload that is not an EncryptedObject kube-apiserver would accept."""


def _read_varint(data, position):
    result = 0
    shift = 0
    while True:
        if position >= len(data):
            raise MalformedEnvelope("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift >= 64:
            raise MalformedEnvelope("varint longer than 64 bits")


def _protobuf_fields(data):
    """``(field number, wire type, value)`` of every field of one protobuf message, in order.

    Length-delimited values are bytes, varints ints; fixed 32 and 64 bit
    fields are skipped (the EncryptedObject has none), groups are refused.
    """
    data = bytes(data)
    position = 0
    while position < len(data):
        tag, position = _read_varint(data, position)
        number, wire_type = tag >> 3, tag & 0x7
        if number == 0:
            raise MalformedEnvelope("field number 0")
        if wire_type == 0:
            value, position = _read_varint(data, position)
        elif wire_type == 2:
            length, position = _read_varint(data, position)
            if position + length > len(data):
                raise MalformedEnvelope("field %d runs past the end" % number)
            value, position = data[position:position + length], position + length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
            if position > len(data):
                raise MalformedEnvelope("field %d runs past the end" % number)
            continue
        else:
            raise MalformedEnvelope("field %d has the unsupported wire type %d" % (number, wire_type))
        yield number, wire_type, value


def parse_kms_v2(payload):
    """Read a kms v2 ``EncryptedObject`` (the bytes after ``k8s:enc:kms:v2:<name>:``) as a ``KmsV2Envelope``.

    Parsed by hand from the protobuf wire format (field numbers from the
    upstream api.proto), and checked like kube-apiserver's
    ``ValidateEncryptedObject``: a known DEK source type, non-empty data, a DEK
    source and a key ID of 1 to 1024 bytes, annotations of at most 32 KiB.
    Raises ``MalformedEnvelope``.  Returns sizes and names only: neither the
    encrypted DEK source nor the ciphertext leave this function.
    """
    scalars = {}
    annotations = {}
    for number, wire_type, value in _protobuf_fields(payload):
        expected = 0 if number == _EO_ENCRYPTED_DEK_SOURCE_TYPE else 2
        if number > _EO_ENCRYPTED_DEK_SOURCE_TYPE:
            continue  # an unknown field: proto3 parsers skip it
        if wire_type != expected:
            raise MalformedEnvelope("field %d has wire type %d, not %d" % (number, wire_type, expected))
        if number == _EO_ANNOTATIONS:
            entry = dict((field, item) for field, dummy, item in _protobuf_fields(value))
            try:
                annotations[entry.get(1, b"").decode("utf-8")] = entry.get(2, b"")
            except UnicodeDecodeError:
                raise MalformedEnvelope("an annotation key is not UTF-8")
        else:
            scalars[number] = value  # proto3: the last occurrence wins
    try:
        key_id = scalars.get(_EO_KEY_ID, b"").decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEnvelope("the key ID is not UTF-8")
    source_type = scalars.get(_EO_ENCRYPTED_DEK_SOURCE_TYPE, 0)
    if source_type not in KMS_DEK_SOURCE_TYPES:
        raise MalformedEnvelope("unknown encryptedDEKSourceType %d" % source_type)
    if not scalars.get(_EO_ENCRYPTED_DATA):
        raise MalformedEnvelope("encryptedData is empty")
    dek_source = scalars.get(_EO_ENCRYPTED_DEK_SOURCE, b"")
    if not dek_source or len(dek_source) > _KMS_DEK_SOURCE_MAX:
        raise MalformedEnvelope("encryptedDEKSource is %d bytes (1 to %d)" % (len(dek_source), _KMS_DEK_SOURCE_MAX))
    if not key_id or len(key_id.encode("utf-8")) > _KMS_KEY_ID_MAX:
        raise MalformedEnvelope("keyID is %d bytes (1 to %d)" % (len(key_id.encode("utf-8")), _KMS_KEY_ID_MAX))
    if sum(len(key.encode("utf-8")) + len(value) for key, value in annotations.items()) > _KMS_ANNOTATIONS_MAX:
        raise MalformedEnvelope("the annotations exceed %d bytes" % _KMS_ANNOTATIONS_MAX)
    return KmsV2Envelope(key_id, KMS_DEK_SOURCE_TYPES[source_type], len(dek_source),
                         len(scalars[_EO_ENCRYPTED_DATA]), sorted(annotations))


def kms_v2_key_id(value):
    """The KMS key ID of a raw ``k8s:enc:kms:v2:`` value, or None when it is not one or is malformed."""
    value = bytes(value)
    if not value.startswith(ENCRYPTED_MAGIC + b"kms:v2:"):
        return None
    dummy, payload = split_value(value)
    try:
        return parse_kms_v2(payload).key_id
    except MalformedEnvelope:
        return None


def provider_type(notation):
    """``aescbc``, ``aesgcm``, ``secretbox``, ``kms``, ``identity`` or ``unknown``."""
    return notation.split(":", 1)[0]


def is_encrypted(notation):
    return notation not in (IDENTITY, UNKNOWN)


def validate_notation(notation):
    """Check a notation given by the user, like ``secretbox:k2``, ``kms:vault`` or ``identity``.

    Returns it normalized: ``kms:v2:<name>`` becomes ``kms:<name>``, as ``classify`` names kms v2 values.
    """
    if not isinstance(notation, str) or not _NOTATION.fullmatch(notation):
        raise EtcdEncryptionError(
            "%r is not a provider notation: use identity, aescbc:<key name>, aesgcm:<key name>, "
            "secretbox:<key name>, kms:<name> (kms v2, also written kms:v2:<name>) or kms:v1:<name> "
            "(names without ':')" % (notation,))
    if notation.startswith("kms:v2:"):
        return "kms:" + notation[len("kms:v2:"):]
    return notation


def is_kms_v2(notation):
    """Whether ``notation`` (as ``classify`` returns it) names a kms v2 provider."""
    return notation.startswith("kms:") and not notation.startswith("kms:v1:")


def validate_kms_key_id_hash(value):
    """Check a key ID hash as kube-apiserver's metrics show it: ``sha256:`` + 64 lowercase hex digits."""
    if not isinstance(value, str) or not _KMS_KEY_ID_HASH.fullmatch(value):
        raise EtcdEncryptionError("%r is not a KMS key ID hash: sha256: followed by 64 lowercase hex digits, "
                                  "as in kube-apiserver's apiserver_envelope_encryption_key_id_hash_* metrics"
                                  % (value,))
    return value


# ---------------------------------------------------------------------------
# Decrypt check
# ---------------------------------------------------------------------------

def decrypt_check(etcd_key, value, keys):
    """Whether an escrowed key opens ``value`` stored under ``etcd_key``: ``(ok, reason)``.

    ``keys`` maps notations like ``aescbc:<name>`` to raw key bytes.  ``ok``
    means the value decrypts (and authenticates, for aesgcm against the full
    etcd key) and the plaintext starts like a stored object; ``reason`` is one
    of the codes in ``REASONS``.  Unencrypted values are ``(True,
    "not_encrypted")``.  Neither key bytes nor plaintext leave this function.
    """
    notation, payload = split_value(value)
    if notation == IDENTITY:
        return True, "not_encrypted"
    if notation == UNKNOWN:
        return False, "unrecognized_format"
    kind = provider_type(notation)
    if kind not in KEYED_PROVIDERS:
        return False, "not_checkable"
    key = keys.get(notation)
    if key is None:
        return False, "undecryptable_unknown_key"
    if len(key) not in KEY_SIZES[kind]:
        return False, "invalid_key_length"
    if kind == "aescbc":
        ok, reason, plaintext = _open_aescbc(key, payload)
    elif kind == "aesgcm":
        ok, reason, plaintext = _open_aesgcm(key, payload, _to_bytes(etcd_key))
    else:
        ok, reason, plaintext = _open_secretbox(key, payload)
    if not ok:
        return False, reason
    if not looks_like_object(plaintext):
        return False, "not_an_object"
    return True, "ok"


def _open_aescbc(key, payload):
    _require_cryptography()
    if len(payload) < _AES_BLOCK:
        return False, "too_short", None
    iv, ciphertext = payload[:_AES_BLOCK], payload[_AES_BLOCK:]
    if not ciphertext or len(ciphertext) % _AES_BLOCK:
        return False, "not_block_aligned", None
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    # PKCS#7, checked exactly like kube-apiserver does.
    padding = padded[-1]
    if padding == 0 or padding > len(padded) or padded[-padding:] != bytes([padding]) * padding:
        return False, "bad_padding", None
    return True, "ok", padded[:-padding]


def _open_aesgcm(key, payload, etcd_key):
    _require_cryptography()
    if len(payload) < _GCM_NONCE + _GCM_TAG:
        return False, "too_short", None
    try:
        plaintext = AESGCM(key).decrypt(payload[:_GCM_NONCE], payload[_GCM_NONCE:], etcd_key)
    except InvalidTag:
        return False, "authentication_failed", None
    return True, "ok", plaintext


def _open_secretbox(key, payload):
    _require_nacl()
    if len(payload) < _SECRETBOX_NONCE + _SECRETBOX_TAG:
        return False, "too_short", None
    try:
        # PyNaCl's combined form is tag + ciphertext, what Go's secretbox.Seal appends after the nonce.
        plaintext = SecretBox(key).decrypt(payload[_SECRETBOX_NONCE:], payload[:_SECRETBOX_NONCE])
    except CryptoError:
        return False, "authentication_failed", None
    return True, "ok", plaintext


def _require_cryptography():
    if not HAS_CRYPTOGRAPHY:
        raise RuntimeError("the Python library cryptography is needed to check aescbc and aesgcm values")


def _require_nacl():
    if not HAS_NACL:
        raise RuntimeError("the Python library PyNaCl is needed to check secretbox values")


def missing_libraries(keys):
    """``[(library, import traceback)]`` the decrypt check of ``keys`` (notation -> bytes) needs but lacks."""
    kinds = set(provider_type(notation) for notation in keys)
    missing = []
    if kinds & set(("aescbc", "aesgcm")) and not HAS_CRYPTOGRAPHY:
        missing.append(("cryptography", CRYPTOGRAPHY_IMPORT_ERROR))
    if "secretbox" in kinds and not HAS_NACL:
        missing.append(("PyNaCl", NACL_IMPORT_ERROR))
    return missing


def parse_keys(entries):
    """Escrowed keys ``[{provider, name, secret}]`` (secret in standard base64) as ``{notation: bytes}``.

    Refuses an unknown provider, a name that is empty or contains ``:``,
    a secret that is not base64 or has a length the provider does not accept,
    and two different secrets under one notation.  Messages name the provider
    and key name and the length, never the secret.
    """
    keys = {}
    for index, entry in enumerate(entries or []):
        provider = entry.get("provider")
        name = entry.get("name")
        where = "keys[%d]" % index
        if provider not in KEYED_PROVIDERS:
            raise EtcdEncryptionError("%s: provider must be one of %s, not %r" % (
                where, ", ".join(KEYED_PROVIDERS), provider))
        if not isinstance(name, str) or not name or ":" in name:
            raise EtcdEncryptionError("%s: the %s key name %r must be non-empty and contain no ':'" % (
                where, provider, name))
        notation = "%s:%s" % (provider, name)
        secret = entry.get("secret")
        try:
            raw = base64.b64decode(secret or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise EtcdEncryptionError("%s: the secret of %s is not standard base64" % (where, notation))
        if len(raw) not in KEY_SIZES[provider]:
            raise EtcdEncryptionError("%s: the secret of %s is %d bytes; %s keys must be %s bytes" % (
                where, notation, len(raw), provider, " or ".join(str(size) for size in KEY_SIZES[provider])))
        if notation in keys and keys[notation] != raw:
            raise EtcdEncryptionError("%s: %s is given twice with different secrets" % (where, notation))
        keys[notation] = raw
    return keys


# ---------------------------------------------------------------------------
# Where resources live in etcd
# ---------------------------------------------------------------------------

def normalize_etcd_prefix(prefix):
    """kube-apiserver's ``--etcd-prefix`` as its keys start: ``/registry`` -> ``/registry/``."""
    cleaned = posixpath.normpath(posixpath.join("/", prefix or DEFAULT_ETCD_PREFIX))
    return cleaned if cleaned.endswith("/") else cleaned + "/"


def resource_prefix(resource, etcd_prefix=DEFAULT_ETCD_PREFIX):
    """The etcd key prefix of a resource named like in an EncryptionConfiguration.

    ``secrets`` -> ``/registry/secrets/``, ``deployments.apps`` ->
    ``/registry/deployments/``, ``services`` -> ``/registry/services/specs/``,
    ``widgets.example.com`` -> ``/registry/example.com/widgets/``.
    """
    if not isinstance(resource, str) or "*" in resource or not _RESOURCE.fullmatch(resource.strip().lower()):
        raise EtcdEncryptionError(
            "resource %r: give a resource name like secrets, deployments.apps or widgets.example.com "
            "(wildcards are not supported; use prefixes for anything else)" % (resource,))
    name, _sep, group = resource.strip().lower().partition(".")
    if (group, name) in SPECIAL_RESOURCE_PREFIXES:
        path = SPECIAL_RESOURCE_PREFIXES[(group, name)]
    elif group in BUILTIN_GROUPS:
        path = name
    else:
        path = "%s/%s" % (group, name)
    return normalize_etcd_prefix(etcd_prefix) + path + "/"


def etcd_prefixes(resources=None, etcd_prefix=DEFAULT_ETCD_PREFIX, prefixes=None):
    """``[(resource label, etcd key prefix)]`` to scan, from resource names or explicit prefixes."""
    if prefixes:
        targets = []
        for label, prefix in sorted(prefixes.items()):
            if not isinstance(prefix, str) or not prefix:
                raise EtcdEncryptionError("prefixes.%s: the etcd key prefix must be a non-empty string" % label)
            targets.append((str(label), prefix))
        return targets
    seen = set()
    targets = []
    for resource in resources or ["secrets"]:
        if resource in seen:
            continue
        seen.add(resource)
        targets.append((resource, resource_prefix(resource, etcd_prefix)))
    return targets


# ---------------------------------------------------------------------------
# Counting a scan
# ---------------------------------------------------------------------------

class ScanTally(object):
    """Counters and bounded samples over a stream of raw values; memory does not grow with their number.

    ``expected_provider`` (a notation) makes every value under anything else
    offending; with ``decrypt`` every value is checked against ``keys``
    (notation -> bytes): keyed values with ``decrypt_check``, ``unknown``
    values count as failures, kms values as not checked (a kms v2 value whose
    EncryptedObject is malformed fails).

    kms v2 values are also counted per provider and KMS key ID
    (``by_kms_key_id``).  ``expected_kms_key_id`` or
    ``expected_kms_key_id_hash`` (``sha256:<hex>``, as kube-apiserver's
    metrics name key IDs) makes a value of the expected kms provider under any
    other key ID offending too: the rewrite after a KEK rotation is done when
    there is none.
    """

    def __init__(self, expected_provider=None, keys=None, decrypt=False, sample_size=DEFAULT_SAMPLE_SIZE,
                 expected_kms_key_id=None, expected_kms_key_id_hash=None):
        self.expected_provider = validate_notation(expected_provider) if expected_provider else None
        if expected_kms_key_id is not None and expected_kms_key_id_hash is not None:
            raise EtcdEncryptionError("give the expected KMS key ID or its hash, not both")
        if expected_kms_key_id is not None:
            if not isinstance(expected_kms_key_id, str) or not expected_kms_key_id:
                raise EtcdEncryptionError("the expected KMS key ID must be a non-empty string")
            expected_kms_key_id_hash = kms_key_id_hash(expected_kms_key_id)
        if expected_kms_key_id_hash is not None:
            validate_kms_key_id_hash(expected_kms_key_id_hash)
            if not (self.expected_provider and is_kms_v2(self.expected_provider)):
                raise EtcdEncryptionError("an expected KMS key ID needs an expected kms provider (kms:<name>), "
                                          "not %s" % (self.expected_provider or "none"))
        self.expected_kms_key_id_hash = expected_kms_key_id_hash
        self.by_kms_key_id = {}
        self.kms_key_id_hashes = {}
        self.stale_kms_key_id = 0
        self._keys = dict(keys or {})
        self.decrypt = bool(decrypt)
        self.sample_size = max(0, int(sample_size))
        self.total = 0
        self.encrypted = 0
        self.by_provider = {}
        self.by_resource = {}
        self.offending = 0
        self.offending_sample = []
        self.decrypt_checked = 0
        self.decrypt_unchecked = 0
        self.decrypt_failures = 0
        self.decrypt_failures_by_reason = {}
        self.decrypt_failure_sample = []

    def start_resource(self, resource):
        """Make ``resource`` appear in the result even when it holds no value."""
        self.by_resource.setdefault(resource, {"total": 0, "by_provider": {}})

    def add(self, resource, etcd_key, value):
        notation, payload = split_value(value)
        envelope = None
        if is_kms_v2(notation):
            envelope = self._count_kms_key_id(notation, payload)
        self.total += 1
        if is_encrypted(notation):
            self.encrypted += 1
        self.by_provider[notation] = self.by_provider.get(notation, 0) + 1
        self.start_resource(resource)
        counts = self.by_resource[resource]
        counts["total"] += 1
        counts["by_provider"][notation] = counts["by_provider"].get(notation, 0) + 1
        offending = bool(self.expected_provider) and notation != self.expected_provider
        if not offending and self.expected_kms_key_id_hash and (
                envelope is None or kms_key_id_hash(envelope.key_id) != self.expected_kms_key_id_hash):
            offending = True
            self.stale_kms_key_id += 1
        if offending:
            self.offending += 1
            if len(self.offending_sample) < self.sample_size:
                self.offending_sample.append(_key_text(etcd_key))
        if self.decrypt:
            self._check(etcd_key, value, notation, envelope)

    def _count_kms_key_id(self, notation, payload):
        """Tally a kms v2 value by key ID; return its envelope, or None when it is malformed."""
        try:
            envelope = parse_kms_v2(payload)
        except MalformedEnvelope:
            envelope = None
        counts = self.by_kms_key_id.setdefault(notation, {})
        label = envelope.key_id if envelope else KMS_MALFORMED
        if label not in counts and envelope and len(self.kms_key_id_hashes) >= KMS_KEY_IDS_MAX:
            label = KMS_OTHER_KEY_IDS
        counts[label] = counts.get(label, 0) + 1
        if envelope and label == envelope.key_id and label not in self.kms_key_id_hashes:
            self.kms_key_id_hashes[label] = kms_key_id_hash(label)
        return envelope

    def _check(self, etcd_key, value, notation, envelope=None):
        if notation == IDENTITY:
            return
        if provider_type(notation) == "kms":
            if is_kms_v2(notation) and envelope is None:
                self._fail(etcd_key, notation, "malformed_envelope")
                return
            self.decrypt_unchecked += 1
            return
        ok, reason = decrypt_check(etcd_key, value, self._keys)
        if ok:
            self.decrypt_checked += 1
            return
        self._fail(etcd_key, notation, reason)

    def _fail(self, etcd_key, notation, reason):
        self.decrypt_failures += 1
        self.decrypt_failures_by_reason[reason] = self.decrypt_failures_by_reason.get(reason, 0) + 1
        if len(self.decrypt_failure_sample) < self.sample_size:
            self.decrypt_failure_sample.append({"key": _key_text(etcd_key), "provider": notation, "reason": reason})

    @property
    def encrypted_percent(self):
        if not self.total:
            return 100.0
        return round(100.0 * self.encrypted / self.total, 2)

    @property
    def all_expected(self):
        return self.offending == 0 and self.decrypt_failures == 0

    def result(self):
        return {
            "total": self.total,
            "by_resource": self.by_resource,
            "by_provider": self.by_provider,
            "encrypted_percent": self.encrypted_percent,
            "expected_provider": self.expected_provider,
            "offending": self.offending,
            "offending_sample": self.offending_sample,
            "decrypt_checked": self.decrypt_checked,
            "decrypt_unchecked": self.decrypt_unchecked,
            "decrypt_failures": self.decrypt_failures,
            "decrypt_failures_by_reason": self.decrypt_failures_by_reason,
            "decrypt_failure_sample": self.decrypt_failure_sample,
            "all_expected": self.all_expected,
            "by_kms_key_id": self.by_kms_key_id,
            "kms_key_id_hashes": self.kms_key_id_hashes,
            "expected_kms_key_id_hash": self.expected_kms_key_id_hash,
            "stale_kms_key_id": self.stale_kms_key_id,
        }


def run_scan(client, targets, tally, page_size):
    """Feed every value under each ``(resource, prefix)`` of ``targets`` into ``tally``.

    All prefixes are read at the revision of the first page, so the counts
    are one consistent snapshot of etcd; returns that revision.
    """
    revision = None
    for resource, prefix in targets:
        tally.start_resource(resource)
        scan = client.range_iter(prefix, page_size=page_size, revision=revision)
        for etcd_key, value in scan:
            tally.add(resource, etcd_key, value)
        revision = revision or scan.revision
    return revision


def _to_bytes(key):
    return key if isinstance(key, bytes) else key.encode("utf-8")


def _key_text(etcd_key):
    if isinstance(etcd_key, bytes):
        return etcd_key.decode("utf-8", "backslashreplace")
    return etcd_key
