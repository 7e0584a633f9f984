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
* ``k8s:enc:kms:v1:<name>:`` and ``k8s:enc:kms:v2:<name>:`` + an envelope that
  only the KMS plugin can open.
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
notations (``secretbox:k2``), counts, etcd keys and reason codes.

Private helpers are ``_``-prefixed.
"""

from __future__ import annotations

import base64
import binascii
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

_NOTATION = re.compile(r"(?:identity|(?:aescbc|aesgcm|secretbox):[^:]+|kms:v[12]:[^:]+)")
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
    ``aesgcm:<key>`` or ``secretbox:<key>``, ``kms:v1:<name>`` or
    ``kms:v2:<name>``, and ``unknown`` for anything else (an unknown or
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
    """Notation of a kms v2 value: ``kms:v2:<name>``.

    Extension point: ``payload`` is the protobuf ``EncryptedObject`` of
    k8s.io/apiserver ``pkg/storage/value/encrypt/envelope/kmsv2/v2`` (fields
    ``encryptedData``, ``keyID``, ``encryptedDEKSource``, ...).  A later
    version parses ``keyID`` here to tell the KMS key versions apart; callers
    must not assume the notation has exactly three fields.
    """
    return "kms:v2:%s" % name


def provider_type(notation):
    """``aescbc``, ``aesgcm``, ``secretbox``, ``kms``, ``identity`` or ``unknown``."""
    return notation.split(":", 1)[0]


def is_encrypted(notation):
    return notation not in (IDENTITY, UNKNOWN)


def validate_notation(notation):
    """Check a notation given by the user, like ``secretbox:k2``, ``kms:v2:vault`` or ``identity``."""
    if not isinstance(notation, str) or not _NOTATION.fullmatch(notation):
        raise EtcdEncryptionError(
            "%r is not a provider notation: use identity, aescbc:<key name>, aesgcm:<key name>, "
            "secretbox:<key name>, kms:v1:<name> or kms:v2:<name> (names without ':')" % (notation,))
    return notation


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
    values count as failures, kms values as not checked.
    """

    def __init__(self, expected_provider=None, keys=None, decrypt=False, sample_size=DEFAULT_SAMPLE_SIZE):
        self.expected_provider = validate_notation(expected_provider) if expected_provider else None
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
        notation = classify(value)
        self.total += 1
        if is_encrypted(notation):
            self.encrypted += 1
        self.by_provider[notation] = self.by_provider.get(notation, 0) + 1
        self.start_resource(resource)
        counts = self.by_resource[resource]
        counts["total"] += 1
        counts["by_provider"][notation] = counts["by_provider"].get(notation, 0) + 1
        if self.expected_provider and notation != self.expected_provider:
            self.offending += 1
            if len(self.offending_sample) < self.sample_size:
                self.offending_sample.append(_key_text(etcd_key))
        if self.decrypt:
            self._check(etcd_key, value, notation)

    def _check(self, etcd_key, value, notation):
        if notation == IDENTITY:
            return
        if provider_type(notation) == "kms":
            self.decrypt_unchecked += 1
            return
        ok, reason = decrypt_check(etcd_key, value, self._keys)
        if ok:
            self.decrypt_checked += 1
            return
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
