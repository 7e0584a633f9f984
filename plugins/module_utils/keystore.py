# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The controller-side keystore: where generated and adopted keys are escrowed.

Format (YAML, mode 0600, parent directory 0700)::

    # kubecrypt.at_rest keystore ...
    keys:
      - name: secretbox-20261122t230102z
        provider: secretbox
        secret: "<base64 of the key bytes>"
        fingerprint: sha256:0123456789abcdef
        created: "2026-11-22T23:01:02Z"
        source: generated          # or imported

Names are unique; an entry is never changed or removed by this code.  Every
read-modify-write holds an exclusive ``flock`` on ``<keystore>.lock`` so that
concurrent runs cannot lose a key, and the file is replaced atomically.

Private helpers are ``_``-prefixed.
"""

from __future__ import annotations

import base64
import datetime
import errno
import os
import re
import time

try:
    import fcntl
except ImportError:  # not POSIX; _KeystoreLock says so when it is needed
    fcntl = None

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.encryption_config import (
    KEY_SIZES,
    KEYED_PROVIDERS,
    EncryptionConfigError,
    decode_secret,
    dump_yaml,
    key_fingerprint,
    load_yaml,
    secret_strings,
)
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.files import atomic_write

ENTRY_FIELDS = ("name", "provider", "secret", "fingerprint", "created", "source")
SOURCES = ("generated", "imported")
DEFAULT_SIZE = 32
LOCK_SUFFIX = ".lock"
LOCK_TIMEOUT = 60.0
HEADER = (
    "# kubecrypt.at_rest keystore: encryption keys in escrow.\n"
    "# Contains key material: keep it secret, mode 0600. Entries are never changed or removed by kubecrypt.at_rest.\n"
)

_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class KeystoreError(Exception):
    """A refused operation or a damaged keystore; never contains key material."""


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def format_created(now):
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def default_key_name(provider, now):
    """``<provider>-<UTC timestamp>``, e.g. ``secretbox-20261122t230102z``."""
    return "%s-%s" % (provider, now.strftime("%Y%m%dt%H%M%Sz"))


def validate_key_name(name):
    """Names of generated keys: 1-128 letters, digits, ``.``, ``_``, ``-``, starting alphanumeric."""
    if not isinstance(name, str) or not name:
        raise KeystoreError("a key name must be a non-empty string")
    if ":" in name:
        raise KeystoreError("key name %r must not contain ':' (it separates the key name in the stored prefix)" % name)
    if not _KEY_NAME.fullmatch(name):
        raise KeystoreError(
            "key name %r is not allowed: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit" % name)


def generate_secret(provider, size=None):
    """Fresh key bytes from the OS CSPRNG, base64 encoded."""
    if size is None:
        size = DEFAULT_SIZE
    if size not in KEY_SIZES[provider]:
        raise KeystoreError("%s keys are %s bytes, not %d" % (
            provider, " or ".join(str(choice) for choice in KEY_SIZES[provider]), size))
    return base64.b64encode(os.urandom(size)).decode("ascii")


def make_entry(name, provider, secret, created, source):
    return {
        "name": name,
        "provider": provider,
        "secret": secret,
        "fingerprint": key_fingerprint(secret),
        "created": created,
        "source": source,
    }


def public_entry(entry):
    """An entry without its secret, plus its size in bytes."""
    return {
        "name": entry["name"],
        "provider": entry["provider"],
        "size": len(decode_secret(entry["secret"])),
        "fingerprint": entry["fingerprint"],
        "created": entry["created"],
        "source": entry["source"],
    }


# ---------------------------------------------------------------------------
# File format
# ---------------------------------------------------------------------------

def _entry_problem(index, raw, problem):
    name = raw.get("name") if isinstance(raw, dict) else None
    label = "key %r" % name if isinstance(name, str) and name else "keys[%d]" % index
    return "%s: %s" % (label, problem)


def _load_entry(index, raw):
    if not isinstance(raw, dict):
        raise KeystoreError(_entry_problem(index, raw, "must be a mapping"))
    unknown = [field for field in raw if field not in ENTRY_FIELDS]
    if unknown:
        raise KeystoreError(_entry_problem(index, raw, "unknown field(s); allowed: %s" % ", ".join(ENTRY_FIELDS)))
    name = raw.get("name")
    if not isinstance(name, str) or not name or ":" in name:
        raise KeystoreError(_entry_problem(index, raw, "name must be a non-empty string without ':'"))
    provider = raw.get("provider")
    if provider not in KEYED_PROVIDERS:
        raise KeystoreError(_entry_problem(index, raw, "provider must be one of %s" % ", ".join(KEYED_PROVIDERS)))
    secret = raw.get("secret")
    try:
        material = decode_secret(secret)
    except ValueError as exc:
        raise KeystoreError(_entry_problem(index, raw, str(exc))) from None
    if len(material) not in KEY_SIZES[provider]:
        raise KeystoreError(_entry_problem(index, raw, "secret is %d bytes, %s keys are %s bytes" % (
            len(material), provider, " or ".join(str(size) for size in KEY_SIZES[provider]))))
    fingerprint = key_fingerprint(secret)
    if raw.get("fingerprint") not in (None, fingerprint):
        raise KeystoreError(_entry_problem(index, raw, "the recorded fingerprint %s does not match the secret (%s)" % (
            raw.get("fingerprint"), fingerprint)))
    created = raw.get("created")
    if isinstance(created, (datetime.datetime, datetime.date)):
        created = created.isoformat()
    if created is not None and not isinstance(created, str):
        raise KeystoreError(_entry_problem(index, raw, "created must be a string"))
    source = raw.get("source", "imported")
    if source not in SOURCES:
        raise KeystoreError(_entry_problem(index, raw, "source must be one of %s" % ", ".join(SOURCES)))
    return {"name": name, "provider": provider, "secret": secret, "fingerprint": fingerprint,
            "created": created, "source": source}


def parse_keystore(content, path):
    """Entries of a keystore file (an empty file is an empty keystore)."""
    if not content.strip():
        return []
    try:
        document = load_yaml(content, path)
    except EncryptionConfigError as exc:
        raise KeystoreError(str(exc)) from None
    if not isinstance(document, dict) or set(document) - {"keys"}:
        raise KeystoreError("keystore %s must be a mapping with a single field 'keys'" % path)
    raw_entries = document.get("keys")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        raise KeystoreError("keystore %s: 'keys' must be a list" % path)
    entries = []
    names = set()
    for index, raw in enumerate(raw_entries):
        try:
            entry = _load_entry(index, raw)
        except KeystoreError as exc:
            raise KeystoreError("keystore %s: %s" % (path, exc)) from None
        if entry["name"] in names:
            raise KeystoreError("keystore %s: key %r appears twice" % (path, entry["name"]))
        names.add(entry["name"])
        entries.append(entry)
    return entries


def render_keystore(entries):
    document = {"keys": [dict((field, entry[field]) for field in ENTRY_FIELDS) for entry in entries]}
    return dump_yaml(document, header=HEADER)


def redacted_keystore(entries):
    """The diff view: every entry without its secret."""
    document = {"keys": [dict((field, entry[field]) for field in ENTRY_FIELDS if field != "secret") for entry in entries]}
    return dump_yaml(document).decode("utf-8")


# ---------------------------------------------------------------------------
# Locked read-modify-write
# ---------------------------------------------------------------------------

class _KeystoreLock(object):
    """An exclusive ``flock`` on ``<keystore>.lock``, waiting up to ``timeout`` seconds."""

    def __init__(self, path, timeout=LOCK_TIMEOUT):
        self.lock_path = path + LOCK_SUFFIX
        self.timeout = timeout
        self._fd = None

    def __enter__(self):
        if fcntl is None:
            raise KeystoreError("locking the keystore needs a POSIX controller (fcntl)")
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(self._fd)
                    raise
            if time.monotonic() >= deadline:
                os.close(self._fd)
                raise KeystoreError("could not lock %s within %d seconds: another run holds it" % (
                    self.lock_path, self.timeout))
            time.sleep(0.1)

    def __exit__(self, *exc_info):
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
        return False


def _read_keystore(path):
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise KeystoreError("keystore %s is a directory" % path) from None
    except OSError as exc:
        raise KeystoreError("cannot read keystore %s: %s" % (path, exc.strerror)) from None
    return parse_keystore(content, path)


def _ensure_directory(path):
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(directory):
        return
    try:
        old_umask = os.umask(0o077)
        try:
            # exist_ok: a concurrent run may create it first
            os.makedirs(directory, 0o700, exist_ok=True)
        finally:
            os.umask(old_umask)
    except OSError as exc:
        raise KeystoreError("cannot create the keystore directory %s: %s" % (directory, exc.strerror)) from None


class KeyEscrow(object):
    """Backend of ``kubecrypt.at_rest.encryption_key``.

    ``run()`` generates (or keeps) one key, or imports the keys of a resources
    list, under the keystore lock; in check mode it only reads.
    """

    def __init__(self, module, now=None):
        self.module = module
        self.params = module.params
        self.path = module.params["keystore"]
        self.now = now or utc_now()

    def run(self):
        self.module.no_log_values.update(secret_strings(self.params.get("import_resources")))
        if self.module.check_mode:
            return self._apply(_read_keystore(self.path))
        _ensure_directory(self.path)
        with _KeystoreLock(self.path):
            return self._apply(_read_keystore(self.path))

    def _apply(self, entries):
        if self.params.get("import_resources") is not None:
            added, result = self._import(entries)
        else:
            added, result = self._generate(entries)
        after = entries + added
        if added and not self.module.check_mode:
            atomic_write(self.module, self.path, render_keystore(after), 0o600)
        result["changed"] = bool(added)
        if self.module._diff:
            result["diff"] = {
                "before_header": self.path,
                "after_header": self.path,
                "before": redacted_keystore(entries) if entries else "",
                "after": redacted_keystore(after),
            }
        return result

    # one key ---------------------------------------------------------------

    def _generate(self, entries):
        provider = self.params["provider"]
        size = self.params.get("size")
        if size is not None and size not in KEY_SIZES[provider]:
            raise KeystoreError("%s keys are %s bytes, not %d" % (
                provider, " or ".join(str(choice) for choice in KEY_SIZES[provider]), size))
        name = self.params.get("name") or default_key_name(provider, self.now)
        validate_key_name(name)
        existing = dict((entry["name"], entry) for entry in entries).get(name)
        added = []
        if existing is not None:
            self._check_existing(existing, provider, size)
            entry = existing
        else:
            entry = make_entry(name, provider, generate_secret(provider, size), format_created(self.now), "generated")
            added.append(entry)
        if self.params.get("return_secret"):
            result = {"secret": entry["secret"]}
        else:
            self.module.no_log_values.update(secret_strings(entry))
            result = {}
        result.update(public_entry(entry))
        return added, result

    def _check_existing(self, existing, provider, size):
        name = existing["name"]
        if self.params.get("on_existing") == "fail":
            raise KeystoreError("key %r already exists in the keystore (%s, %s) and on_existing=fail" % (
                name, existing["provider"], existing["fingerprint"]))
        if existing["provider"] != provider:
            raise KeystoreError("key %r already exists in the keystore for provider %s, not %s; "
                                "choose another name" % (name, existing["provider"], provider))
        existing_size = len(decode_secret(existing["secret"]))
        if size is not None and existing_size != size:
            raise KeystoreError("key %r already exists in the keystore with %d bytes, not %d; "
                                "choose another name" % (name, existing_size, size))

    # import --------------------------------------------------------------------

    def _import(self, entries):
        found = _keys_in_resources(self.params["import_resources"])
        by_name = dict((entry["name"], entry) for entry in entries)
        added = []
        imported = []
        for name, provider, secret in found:
            fingerprint = key_fingerprint(secret)
            existing = by_name.get(name)
            if existing is not None:
                if existing["secret"] != secret:
                    raise KeystoreError(
                        "cannot import key %r: a key name that already exists with different material "
                        "(keystore %s, imported %s)" % (name, existing["fingerprint"], fingerprint))
                if existing["provider"] != provider:
                    raise KeystoreError("cannot import key %r for %s: it already exists in the keystore for %s" % (
                        name, provider, existing["provider"]))
                imported.append({"name": name, "provider": provider, "fingerprint": fingerprint, "changed": False})
                continue
            entry = make_entry(name, provider, secret, format_created(self.now), "imported")
            added.append(entry)
            by_name[name] = entry
            imported.append({"name": name, "provider": provider, "fingerprint": fingerprint, "changed": True})
        return added, {"imported": imported}


def _keys_in_resources(resources):
    """``(name, provider, secret)`` of every aescbc/aesgcm/secretbox key, each name once.

    Refuses a key that is not valid for its provider and a name that appears
    with different material or different providers.
    """
    if not isinstance(resources, list):
        raise KeystoreError("import_resources must be a list of resource groups")
    found = []
    seen = {}
    for group_index, group in enumerate(resources):
        if not isinstance(group, dict):
            raise KeystoreError("import_resources[%d] must be a mapping" % group_index)
        names = group.get("resources") or []
        where = "import_resources[%d] (%s)" % (group_index, ", ".join(name for name in names if isinstance(name, str)))
        for provider_index, provider in enumerate(group.get("providers") or []):
            if not isinstance(provider, dict):
                raise KeystoreError("%s: providers[%d] must be a mapping" % (where, provider_index))
            for provider_type in KEYED_PROVIDERS:
                body = provider.get(provider_type)
                if body is None:
                    continue
                here = "%s: providers[%d] (%s)" % (where, provider_index, provider_type)
                keys = body.get("keys") if isinstance(body, dict) else None
                if not isinstance(keys, list):
                    raise KeystoreError("%s: keys must be a list" % here)
                for key_index, key in enumerate(keys):
                    name, secret = _imported_key(here, provider_type, key_index, key)
                    earlier = seen.get(name)
                    if earlier is None:
                        seen[name] = (provider_type, secret)
                        found.append((name, provider_type, secret))
                    elif earlier[1] != secret:
                        raise KeystoreError(
                            "%s: key %r: a key name that already appears with different material (%s, %s)" % (
                                here, name, key_fingerprint(earlier[1]), key_fingerprint(secret)))
                    elif earlier[0] != provider_type:
                        raise KeystoreError("%s: key %r: the same key name appears for %s and %s" % (
                            here, name, earlier[0], provider_type))
    return found


def _imported_key(here, provider_type, index, key):
    if not isinstance(key, dict):
        raise KeystoreError("%s: keys[%d] must be a mapping" % (here, index))
    name = key.get("name")
    if not isinstance(name, str) or not name:
        raise KeystoreError("%s: keys[%d]: name is a mandatory field for a key" % (here, index))
    where = "%s: key %r" % (here, name)
    if ":" in name:
        raise KeystoreError("%s: key names must not contain ':'" % where)
    secret = key.get("secret")
    if secret is None or secret == "":
        raise KeystoreError("%s: secret is missing (run encryption_config_info with return_secrets=true, under no_log)" % where)
    try:
        material = decode_secret(secret)
    except ValueError as exc:
        raise KeystoreError("%s: %s" % (where, exc)) from None
    if len(material) not in KEY_SIZES[provider_type]:
        raise KeystoreError("%s: secret is %d bytes, %s keys are %s bytes" % (
            where, len(material), provider_type, " or ".join(str(size) for size in KEY_SIZES[provider_type])))
    fingerprint = key.get("fingerprint")
    if fingerprint is not None and fingerprint != key_fingerprint(secret):
        raise KeystoreError("%s: fingerprint %s was given, but the secret's fingerprint is %s" % (
            where, fingerprint, key_fingerprint(secret)))
    return name, secret
