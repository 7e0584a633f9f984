# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kube-apiserver EncryptionConfiguration: validate, render, parse, describe.

Everything here is pure logic except the two backends at the end
(``EncryptionConfigFile`` for the ``encryption_config`` module and
``EncryptionConfigInfo`` for ``encryption_config_info``), which take an
``AnsibleModule``-like object.

Validation follows kube-apiserver (``ValidateEncryptionConfiguration`` plus the
masking and strict-decoding checks of the config loader) and adds the rules the
apiserver misses (see ``_Validator``).  Every message names the resource group
(index and resource names), the provider (index and type) and the key name, and
never contains key material.

Rendering is deterministic and independent of any YAML library: the same
resources give the same bytes on every node, so the sha256 of the file is the
same everywhere (kube-apiserver 1.34+ reports ``sha256:<hex>`` of those bytes).

Private helpers are ``_``-prefixed.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import os
import re
import stat
import traceback

try:
    import yaml
except ImportError:
    HAS_YAML = False
    YAML_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_YAML = True
    YAML_IMPORT_ERROR = None

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.files import atomic_write

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
HEADER = (
    "# Managed by kubecrypt.at_rest: changes made here are overwritten.\n"
    "# Contains key material: keep this file readable by root only.\n"
)

KEYED_PROVIDERS = ("aescbc", "aesgcm", "secretbox")
# The order kube-apiserver uses in its own messages.
PROVIDER_TYPES = ("kms", "aesgcm", "aescbc", "secretbox", "identity")
KEY_SIZES = {"aescbc": (16, 24, 32), "aesgcm": (16, 24, 32), "secretbox": (32,)}
KMS_FIELDS = ("apiVersion", "name", "cachesize", "endpoint", "timeout")
KMS_API_VERSIONS = ("v1", "v2")
# Resources without a REST API, which kube-apiserver refuses to encrypt.
NON_REST_RESOURCES = ("apiserveripinfo", "serviceipallocations", "servicenodeportallocations")

FINGERPRINT_CONTEXT = b"kubecrypt.at_rest key fingerprint\x00"

_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_GO_DURATION = re.compile(r"[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")
_GO_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_INT32 = (-(2 ** 31), 2 ** 31 - 1)
# Field names are echoed in messages only when they cannot be key material.
_SHOWABLE_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,23}")


class EncryptionConfigError(Exception):
    """An invalid configuration; the message never contains key material."""

    def __init__(self, problems, prefix="invalid encryption configuration"):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super(EncryptionConfigError, self).__init__("%s: %s" % (prefix, "; ".join(self.problems)))


# ---------------------------------------------------------------------------
# Key material
# ---------------------------------------------------------------------------

def decode_secret(secret, canonical=True):
    """Decode a key secret as strict standard base64 (canonical unless told otherwise).

    Raises ``ValueError`` with a message that never contains the secret.
    """
    if not isinstance(secret, str):
        raise ValueError("secret must be a string")
    if not secret:
        raise ValueError("secret is empty")
    if not _BASE64.fullmatch(secret):
        raise ValueError(
            "secret is not standard base64 (alphabet A-Z a-z 0-9 + /, '=' padding required, no whitespace)"
        )
    try:
        decoded = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("secret is not standard base64") from None
    if canonical and base64.b64encode(decoded).decode("ascii") != secret:
        raise ValueError("secret is not canonical base64 (the padding bits are not zero)")
    return decoded


def key_fingerprint(secret_b64):
    """The collection-wide public identifier of a key: ``sha256:`` + 16 hex digits.

    A domain-separated SHA-256 of the decoded key bytes, safe to log and to
    compare across nodes and the keystore.  It depends on the key bytes only,
    so a non-canonical encoding of the same bytes has the same fingerprint.
    """
    material = decode_secret(secret_b64, canonical=False)
    return "sha256:" + hashlib.sha256(FINGERPRINT_CONTEXT + material).hexdigest()[:16]


def secret_strings(data):
    """Every string that is key material in ``data``, in any shape.

    Walks dicts and lists tolerantly (the input may be invalid) and returns
    each ``secret`` value plus the canonical base64 of what it decodes to, for
    registering in ``module.no_log_values``.
    """
    found = set()
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for field, value in item.items():
                if field == "secret" and isinstance(value, str) and value:
                    found.add(value)
                    compact = "".join(value.split())
                    if compact:
                        found.add(compact)
                    try:
                        found.add(base64.b64encode(base64.b64decode(compact)).decode("ascii"))
                    except (binascii.Error, ValueError):
                        pass
                else:
                    stack.append(value)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    found.discard("")
    return found


def config_sha256(content):
    """Hex SHA-256 of the file bytes (kube-apiserver reports ``sha256:`` + this)."""
    return hashlib.sha256(content).hexdigest()


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

def parse_group_resource(resource):
    """Split like apimachinery's ``schema.ParseGroupResource``: ``(group, resource)``."""
    if "." in resource:
        name, group = resource.split(".", 1)
        return group, name
    return "", resource


def _field_label(field):
    if isinstance(field, str) and _SHOWABLE_FIELD.fullmatch(field):
        return "unknown field %r" % field
    return "an unknown field"


def _parse_go_duration(text):
    """Seconds in a Go ``time.ParseDuration`` string, or ``None`` if it is not one."""
    if text == "0":
        return 0.0
    if not isinstance(text, str) or not _GO_DURATION.fullmatch(text):
        return None
    sign = -1.0 if text.startswith("-") else 1.0
    total = 0.0
    for number, unit in _GO_DURATION_PART.findall(text.lstrip("+-")):
        if number in ("", "."):
            return None
        total += float(number) * _DURATION_UNITS[unit]
    return sign * total


class _Validator(object):
    """Collects every problem in a resources list and builds its normalized form.

    Rules from kube-apiserver: at least one resource group, resource and
    provider; resource names without capitals, not ``*``, not a resource
    without REST API, not in the ``events.k8s.io`` or ``extensions`` groups,
    ``<resource>.*`` not allowed; no duplicate or overlapping resources in a
    group; no resource masked by an earlier ``*.<group>`` or ``*.*``; exactly
    one provider type per provider element; keys with a name and a base64
    secret of the right size; kms with a name (unique, without ``:``), a
    ``unix://`` endpoint, apiVersion ``v1`` (the default) or ``v2``, no
    cachesize for v2 and a non-zero one for v1, a positive timeout; unknown
    fields refused (strict decoding).

    Collection rules (``strict``): key names without ``:`` and unique within a
    provider and across providers of the same type in a group; secrets in
    canonical base64; no resource listed in two groups (kube-apiserver would
    only add the later group's providers as read providers); ``*`` only in ``*.``, ``*.*`` and ``*.<group>``;
    kms v1 only when allowed.
    """

    def __init__(self, allow_kms_v1=False, accept_fingerprints=False):
        self.allow_kms_v1 = allow_kms_v1
        self.accept_fingerprints = accept_fingerprints
        self.errors = []
        self.collection_errors = []
        self._kms_names = set()

    # problems -----------------------------------------------------------

    def _error(self, where, problem):
        self.errors.append("%s: %s" % (where, problem) if where else problem)

    def _collection_error(self, where, problem):
        self.collection_errors.append("%s: %s" % (where, problem) if where else problem)

    def _fields(self, mapping, allowed, where):
        """Known, non-null fields of ``mapping``; unknown fields are problems."""
        fields = {}
        for field, value in mapping.items():
            if field not in allowed:
                self._error(where, "%s (allowed: %s)" % (_field_label(field), ", ".join(allowed)))
                continue
            if value is not None:
                fields[field] = value
        return fields

    # resources list -------------------------------------------------------

    def validate(self, resources):
        if resources is None or (isinstance(resources, list) and not resources):
            self._error("resources", "at least one resource group is required")
            return []
        if not isinstance(resources, list):
            self._error("resources", "must be a list of resource groups")
            return []
        normalized = []
        seen = {}
        for index, group in enumerate(resources):
            normalized.append(self._group(index, group, seen))
        return normalized

    def _group(self, index, group, seen):
        if not isinstance(group, dict):
            self._error("resources[%d]" % index, "must be a mapping with 'resources' and 'providers'")
            return {"resources": [], "providers": []}
        names = group.get("resources")
        shown = [name for name in names if isinstance(name, str)] if isinstance(names, list) else []
        where = "resources[%d] (%s)" % (index, ", ".join(shown) if shown else "no resources")
        fields = self._fields(group, ("resources", "providers"), where)
        resource_names = self._resource_names(fields.get("resources"), where, seen, index)
        providers = self._providers(fields.get("providers"), where)
        return {"resources": resource_names, "providers": providers}

    def _resource_names(self, names, where, seen, group_index):
        if names is None or names == []:
            self._error(where, "at least one resource is required")
            return []
        if not isinstance(names, list):
            self._error(where, "resources must be a list of resource names")
            return []
        valid = []
        for position, name in enumerate(names):
            if not isinstance(name, str) or not name:
                self._error(where, "resources[%d] must be a non-empty string" % position)
                continue
            valid.append(name)
            self._resource_name(name, where)
        self._overlap(valid, where)
        self._masking(valid, where, seen, group_index)
        return valid

    def _resource_name(self, name, where):
        if name.lower() != name:
            self._error(where, "resource %r: resource name should not contain capital letters" % name)
            return
        if name == "*":
            self._error(where, "resource '*': use '*.' to encrypt all the resources from the core API group or '*.*' to encrypt all resources")
            return
        if name in NON_REST_RESOURCES:
            self._error(where, "resource %r: resources which do not have REST API/s cannot be encrypted" % name)
            return
        group, resource = parse_group_resource(name)
        if group == "events.k8s.io":
            self._error(where, "resource %r: '*.events.k8s.io' objects are stored using the 'events' API group in etcd, use 'events' instead" % name)
            return
        if group == "extensions":
            self._error(where, "resource %r: the 'extensions' group has been removed and cannot be used for encryption" % name)
            return
        if group == "*" and resource != "*":
            self._error(where, "resource %r: encrypting the same resource across groups is not supported" % name)
            return
        if ("*" in resource and resource != "*") or ("*" in group and group != "*"):
            self._collection_error(where, "resource %r: '*' is only meaningful in '*.', '*.*' and '*.<group>'" % name)

    def _overlap(self, names, where):
        parsed = [parse_group_resource(name) for name in names]
        duplicate = overlap = False
        for i, first in enumerate(parsed):
            for j, second in enumerate(parsed):
                if i == j:
                    continue
                if first == second:
                    duplicate = True
                elif first == ("*", "*"):
                    overlap = True
                elif first[0] == second[0] and "*" in (first[1], second[1]):
                    overlap = True
        if duplicate:
            self._error(where, "the same resource cannot be specified multiple times")
        if overlap:
            self._error(where, "using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked")

    def _masking(self, names, where, seen, group_index):
        """The config loader's check, in file order, plus exact repeats across groups."""
        for name in names:
            group, resource = parse_group_resource(name)
            for wildcard in ((group, "*"), ("*", "*")):
                if wildcard in seen and seen[wildcard] != group_index:
                    self._error(where, "resource %r is masked by earlier rule %r in resources[%d]" % (
                        name, "%s.%s" % (wildcard[1], wildcard[0]), seen[wildcard]))
                    break
            else:
                earlier = seen.get((group, resource))
                if earlier is not None and earlier != group_index:
                    self._collection_error(where, "resource %r is already listed in resources[%d]; kube-apiserver would "
                                                  "only add the providers of this group as extra read providers" % (name, earlier))
        for name in names:
            seen.setdefault(parse_group_resource(name), group_index)

    # providers ------------------------------------------------------------

    def _providers(self, providers, where):
        if providers is None or providers == []:
            self._error(where, "at least one provider is required")
            return []
        if not isinstance(providers, list):
            self._error(where, "providers must be a list")
            return []
        normalized = []
        key_names_by_type = {}
        for index, element in enumerate(providers):
            provider = self._provider(index, element, where, key_names_by_type)
            if provider is not None:
                normalized.append(provider)
        return normalized

    def _provider(self, index, element, where, key_names_by_type):
        if not isinstance(element, dict):
            self._error(where, "providers[%d] must be a mapping with one provider type" % index)
            return None
        fields = self._fields(element, PROVIDER_TYPES, "%s: providers[%d]" % (where, index))
        if not fields:
            self._error(where, "providers[%d]: provider does not contain any of the expected providers: %s" % (
                index, ", ".join(PROVIDER_TYPES)))
            return None
        if len(fields) > 1:
            self._error(where, "providers[%d] (%s): more than one provider specified in a single element, "
                               "should split into different list elements" % (index, ", ".join(sorted(fields))))
            return None
        provider_type, body = next(iter(fields.items()))
        here = "%s: providers[%d] (%s)" % (where, index, provider_type)
        if not isinstance(body, dict):
            self._error(here, "must be a mapping")
            return None
        if provider_type == "identity":
            self._fields(body, (), here)
            return {"identity": {}}
        if provider_type == "kms":
            return {"kms": self._kms(body, here)}
        return {provider_type: {"keys": self._keys(provider_type, body, here, key_names_by_type)}}

    def _keys(self, provider_type, body, here, key_names_by_type):
        fields = self._fields(body, ("keys",), here)
        keys = fields.get("keys")
        if not keys:
            self._error(here, "at least one key is required")
            return []
        if not isinstance(keys, list):
            self._error(here, "keys must be a list")
            return []
        allowed = ("name", "secret", "fingerprint") if self.accept_fingerprints else ("name", "secret")
        names_here = set()
        names_of_type = key_names_by_type.setdefault(provider_type, set())
        normalized = []
        for index, key in enumerate(keys):
            if not isinstance(key, dict):
                self._error(here, "keys[%d] must be a mapping with 'name' and 'secret'" % index)
                continue
            name = key.get("name")
            label = "key %r" % name if isinstance(name, str) and name else "keys[%d]" % index
            where = "%s: %s" % (here, label)
            key_fields = self._fields(key, allowed, where)
            name = key_fields.get("name")
            if name is None or name == "":
                self._error(where, "name is a mandatory field for a key")
            elif not isinstance(name, str):
                self._error(where, "name must be a string")
            else:
                if ":" in name:
                    self._collection_error(where, "key names must not contain ':' (it separates the key name in the stored prefix)")
                if name in names_here:
                    self._collection_error(where, "key name is used twice in this provider")
                elif name in names_of_type:
                    self._collection_error(where, "key name is already used by another %s provider of this resource group" % provider_type)
                names_here.add(name)
                names_of_type.add(name)
            secret = key_fields.get("secret")
            self._secret(provider_type, secret, key_fields.get("fingerprint"), where)
            normalized.append({"name": name, "secret": secret})
        return normalized

    def _secret(self, provider_type, secret, fingerprint, where):
        if secret is None or secret == "":
            hint = ""
            if fingerprint is not None:
                hint = " (encryption_config_info returns secrets only with return_secrets=true)"
            self._error(where, "secret is a mandatory field for a key" + hint)
            return
        if not isinstance(secret, str):
            self._error(where, "secret must be a string")
            return
        compact_ok = _BASE64.fullmatch(secret) is not None
        try:
            material = decode_secret(secret)
        except ValueError as exc:
            if compact_ok:
                # Go accepts non-zero padding bits; only this collection refuses them.
                self._collection_error(where, str(exc))
            else:
                self._error(where, "%s (secrets must be base64 encoded)" % exc)
            return
        sizes = KEY_SIZES[provider_type]
        if len(material) not in sizes:
            self._error(where, "secret is not of the expected length, got %d bytes, expected %s for %s" % (
                len(material), " or ".join(str(size) for size in sizes), provider_type))
        if fingerprint is not None:
            actual = key_fingerprint(secret)
            if fingerprint != actual:
                self._error(where, "fingerprint %s was given, but the secret's fingerprint is %s" % (fingerprint, actual))

    def _kms(self, body, here):
        fields = self._fields(body, KMS_FIELDS, here)
        normalized = {}
        for field in KMS_FIELDS:
            if field in fields:
                normalized[field] = fields[field]
        name = fields.get("name")
        if isinstance(name, str) and name:
            here = "%s %r" % (here, name)
        api_version = fields.get("apiVersion", "v1")
        if api_version not in KMS_API_VERSIONS:
            self._error(here, "unsupported apiVersion %r for KMS provider, only v1 and v2 are supported" % (api_version,))
        elif api_version == "v1" and not self.allow_kms_v1:
            self._collection_error(here, "KMS v1 (apiVersion v1, the default when apiVersion is missing) is deprecated "
                                         "and disabled by default since Kubernetes 1.29; use apiVersion: v2, "
                                         "or set allow_kms_v1 if the cluster enables the KMSv1 feature gate")
        if not isinstance(name, str) or not name:
            self._error(here, "name is a mandatory field for a kms provider")
        else:
            if ":" in name:
                self._error(here, "invalid KMS provider name, must not contain ':'")
            if name in self._kms_names:
                self._error(here, "duplicate KMS provider name, names must be unique")
            self._kms_names.add(name)
        endpoint = fields.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            self._error(here, "endpoint is a mandatory field for a kms provider")
        elif not endpoint.startswith("unix://") or len(endpoint) == len("unix://"):
            self._error(here, "unsupported endpoint %r for KMS provider, only unix:// sockets are supported" % endpoint)
        if "cachesize" in fields:
            cachesize = fields["cachesize"]
            if api_version != "v1":
                self._error(here, "cachesize is not supported in v2")
            elif isinstance(cachesize, bool) or not isinstance(cachesize, int) or not _INT32[0] <= cachesize <= _INT32[1]:
                self._error(here, "cachesize must be a 32-bit integer")
            elif cachesize == 0:
                self._error(here, "cachesize should be a positive value, or negative to disable")
        if "timeout" in fields:
            seconds = _parse_go_duration(fields["timeout"])
            if seconds is None:
                self._error(here, "timeout must be a duration such as '3s' or '1m30s'")
            elif seconds <= 0:
                self._error(here, "timeout should be a positive value")
        return normalized


def validate_resources(resources, allow_kms_v1=False, strict=True, accept_fingerprints=False):
    """Validate a resources list; return ``(normalized, collection_warnings)``.

    ``normalized`` drops null fields (as Ansible fills unset suboptions with
    them) and keeps provider and key order.  With ``strict``, a breach of a
    collection rule is an error; otherwise it is returned as a warning (for
    reading a file that kube-apiserver accepts).  Raises
    ``EncryptionConfigError``.
    """
    validator = _Validator(allow_kms_v1=allow_kms_v1, accept_fingerprints=accept_fingerprints)
    normalized = validator.validate(resources)
    if strict:
        problems = validator.errors + validator.collection_errors
        if problems:
            raise EncryptionConfigError(problems)
        return normalized, []
    if validator.errors:
        raise EncryptionConfigError(validator.errors)
    return normalized, list(validator.collection_errors)


# ---------------------------------------------------------------------------
# Deterministic YAML
# ---------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9._/-]*")
_YAML_WORDS = frozenset(("y", "n", "yes", "no", "on", "off", "true", "false", "null"))


def _yaml_printable(code):
    """Characters written as they are in a double-quoted scalar (YAML line breaks are escaped)."""
    return (
        0x20 <= code <= 0x7E
        or (0xA0 <= code <= 0xD7FF and code not in (0x2028, 0x2029))
        or (0xE000 <= code <= 0xFFFD and code != 0xFEFF)
        or 0x10000 <= code <= 0x10FFFF
    )


def _yaml_string(text):
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    out = ['"']
    for char in text:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif _yaml_printable(code):
            out.append(char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif code <= 0xFF:
            out.append("\\x%02x" % code)
        elif code <= 0xFFFF:
            out.append("\\u%04x" % code)
        else:
            out.append("\\U%08x" % code)
    out.append('"')
    return "".join(out)


def _yaml_scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _yaml_string(value)
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    raise TypeError("cannot render a value of type %s" % type(value).__name__)


def _yaml_block(value):
    return isinstance(value, (dict, list)) and len(value) > 0


def _yaml_lines(value, indent, lines):
    pad = " " * indent
    if isinstance(value, dict):
        for field, item in value.items():
            if _yaml_block(item):
                lines.append("%s%s:" % (pad, _yaml_string(field)))
                _yaml_lines(item, indent + 2, lines)
            else:
                lines.append("%s%s: %s" % (pad, _yaml_string(field), _yaml_scalar(item)))
        return
    for item in value:
        if _yaml_block(item):
            nested = []
            _yaml_lines(item, indent + 2, nested)
            lines.append("%s- %s" % (pad, nested[0][indent + 2:]))
            lines.extend(nested[1:])
        else:
            lines.append("%s- %s" % (pad, _yaml_scalar(item)))


def dump_yaml(document, header=""):
    """Render dicts (in insertion order), lists, strings, ints, bools and None
    as block YAML, byte for byte the same on every Python and library version."""
    lines = []
    _yaml_lines(document, 0, lines)
    return (header + "\n".join(lines) + "\n").encode("utf-8")


if HAS_YAML:
    class _StrictLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
        """A SafeLoader that refuses duplicate mapping keys, like strict decoding."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, dummy in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:
                    duplicate = False
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, "duplicate field", key_node.start_mark)
                try:
                    seen.add(key)
                except TypeError:
                    pass
            return super(_StrictLoader, self).construct_mapping(node, deep=deep)


def load_yaml(content, what):
    """Parse YAML bytes; errors give the line and column, never the content."""
    if not HAS_YAML:
        raise EncryptionConfigError("PyYAML is required to read %s" % what, prefix="cannot parse")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise EncryptionConfigError("%s is not UTF-8 text" % what, prefix="cannot parse") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = ""
        if mark is not None:
            where = " at line %d, column %d" % (mark.line + 1, mark.column + 1)
        problem = getattr(exc, "problem", None) or "syntax error"
        # A scanner problem can quote one character; nothing longer is shown.
        raise EncryptionConfigError("%s is not valid YAML%s: %s" % (what, where, problem), prefix="cannot parse") from None


# ---------------------------------------------------------------------------
# Rendering, parsing and describing a configuration
# ---------------------------------------------------------------------------

def render_config(resources, header=HEADER):
    """The file bytes for validated, normalized ``resources``."""
    document = {"apiVersion": API_VERSION, "kind": KIND, "resources": resources}
    return dump_yaml(document, header=header)


def parse_config(content, path, allow_kms_v1=True, strict=False):
    """Parse and validate file bytes; return ``(resources, collection_warnings)``.

    Messages name ``path`` and what is wrong, never key material.
    """
    if not content.strip():
        raise EncryptionConfigError("encryption provider configuration file %s is empty" % path, prefix="cannot parse")
    document = load_yaml(content, path)
    if not isinstance(document, dict):
        raise EncryptionConfigError("%s is not a mapping (an EncryptionConfiguration object)" % path, prefix="cannot parse")
    problems = []
    for field in document:
        if field not in ("apiVersion", "kind", "resources"):
            problems.append(_field_label(field))
    if document.get("apiVersion") != API_VERSION:
        problems.append("apiVersion must be %s" % API_VERSION)
    if document.get("kind") != KIND:
        problems.append("kind must be %s" % KIND)
    if problems:
        raise EncryptionConfigError(problems, prefix="%s is not a valid EncryptionConfiguration" % path)
    try:
        return validate_resources(document.get("resources"), allow_kms_v1=allow_kms_v1, strict=strict)
    except EncryptionConfigError as exc:
        raise EncryptionConfigError(exc.problems, prefix="%s is not a valid EncryptionConfiguration" % path) from None


def redact_resources(resources, include_secrets=False):
    """A copy with each key as ``{name, fingerprint}`` (and ``secret`` if asked)."""
    redacted = copy.deepcopy(resources)
    for group in redacted:
        for provider in group.get("providers", []):
            for provider_type in KEYED_PROVIDERS:
                body = provider.get(provider_type)
                if not body:
                    continue
                keys = []
                for key in body.get("keys", []):
                    entry = {"name": key["name"]}
                    if include_secrets:
                        entry["secret"] = key["secret"]
                    entry["fingerprint"] = key_fingerprint(key["secret"])
                    keys.append(entry)
                body["keys"] = keys
    return redacted


def provider_labels(provider):
    """Read entries of one provider element: ``aescbc:key2``, ``identity``, ``kms:<name>``."""
    provider_type, body = next(iter(provider.items()))
    if provider_type == "identity":
        return ["identity"]
    if provider_type == "kms":
        return ["kms:%s" % body.get("name")]
    return ["%s:%s" % (provider_type, key["name"]) for key in body.get("keys", [])]


def describe_resources(resources):
    """``write_provider``, ``read_providers`` (first group) and ``resource_groups``."""
    groups = []
    for group in resources:
        read = []
        for provider in group["providers"]:
            read.extend(provider_labels(provider))
        groups.append({
            "resources": list(group["resources"]),
            "write_provider": read[0] if read else None,
            "read_providers": read,
        })
    first = groups[0] if groups else {"write_provider": None, "read_providers": []}
    return {
        "write_provider": first["write_provider"],
        "read_providers": list(first["read_providers"]),
        "resource_groups": groups,
    }


def _read_file(path):
    """File bytes, or ``None`` if there is no file; never follows into a directory."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EncryptionConfigError("cannot inspect %s: %s" % (path, exc.strerror), prefix="cannot read") from None
    if stat.S_ISDIR(st.st_mode):
        raise EncryptionConfigError("%s is a directory" % path, prefix="cannot read")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise EncryptionConfigError("cannot read %s: %s" % (path, exc.strerror), prefix="cannot read") from None


def _redacted_text(content, path):
    """The diff view of existing file bytes: parsed and fingerprinted, or a placeholder."""
    if content is None:
        return ""
    try:
        resources, dummy = parse_config(content, path, allow_kms_v1=True, strict=False)
    except EncryptionConfigError as exc:
        return "# %s: %d bytes not shown (%s)\n" % (path, len(content), exc)
    return render_config(redact_resources(resources)).decode("utf-8")


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------

class EncryptionConfigFile(object):
    """Backend of ``kubecrypt.at_rest.encryption_config``."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.path = module.params["path"]

    def register_secrets(self, data):
        self.module.no_log_values.update(secret_strings(data))

    def run(self):
        self.register_secrets(self.params.get("resources"))
        if self.params["state"] == "absent":
            return self._absent()
        return self._present()

    def _present(self):
        resources, dummy = validate_resources(
            self.params["resources"], allow_kms_v1=self.params["allow_kms_v1"], accept_fingerprints=True)
        content = render_config(resources)
        self.register_secrets(resources)
        current = _read_file(self.path)
        if current is not None:
            self._register_current(current)
        changed = current != content
        if changed and not self.module.check_mode:
            directory = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(directory):
                raise EncryptionConfigError("directory %s does not exist" % directory, prefix="cannot write %s" % self.path)
            atomic_write(self.module, self.path, content, 0o600)
        attributes_diff = {}
        if current is not None or not self.module.check_mode:
            file_args = self.module.load_file_common_arguments(self.params, path=self.path)
            changed = self.module.set_fs_attributes_if_different(file_args, changed, diff=attributes_diff)
        result = {"changed": changed, "sha256": config_sha256(content)}
        result.update(describe_resources(resources))
        if self.module._diff:
            content_diff = {
                "before_header": self.path,
                "after_header": self.path,
                "before": _redacted_text(current, self.path),
                "after": render_config(redact_resources(resources)).decode("utf-8"),
            }
            result["diff"] = [content_diff, attributes_diff] if attributes_diff else content_diff
        return result

    def _register_current(self, current):
        """The file being replaced may hold keys the task does not mention."""
        try:
            resources, dummy = parse_config(current, self.path, allow_kms_v1=True, strict=False)
        except EncryptionConfigError:
            return
        self.register_secrets(resources)

    def _absent(self):
        current = _read_file(self.path)
        result = {"changed": current is not None, "sha256": None, "write_provider": None,
                  "read_providers": [], "resource_groups": []}
        if current is not None:
            self._register_current(current)
            if self.module._diff:
                result["diff"] = {
                    "before_header": self.path,
                    "after_header": self.path,
                    "before": _redacted_text(current, self.path),
                    "after": "",
                }
            if not self.module.check_mode:
                os.unlink(self.path)
        return result


class EncryptionConfigInfo(object):
    """Backend of ``kubecrypt.at_rest.encryption_config_info``."""

    def __init__(self, module):
        self.module = module
        self.path = module.params["path"]
        self.return_secrets = module.params["return_secrets"]

    def run(self):
        content = _read_file(self.path)
        if content is None:
            return {"changed": False, "exists": False, "sha256": None, "resources": [],
                    "write_provider": None, "read_providers": [], "resource_groups": []}
        resources, warnings = parse_config(content, self.path, allow_kms_v1=True, strict=False)
        if not self.return_secrets:
            # Returned secrets must stay readable to the caller (who sets
            # no_log); otherwise they are masked anywhere they might surface.
            self.module.no_log_values.update(secret_strings(resources))
        for warning in warnings:
            self.module.warn("%s: %s" % (self.path, warning))
        result = {
            "changed": False,
            "exists": True,
            "sha256": config_sha256(content),
            "resources": redact_resources(resources, include_secrets=self.return_secrets),
        }
        result.update(describe_resources(resources))
        return result


# ---------------------------------------------------------------------------
# Argument spec shared by the modules that take a resources list
# ---------------------------------------------------------------------------

def _keyed_provider_spec():
    return dict(
        type="dict",
        no_log=False,
        options=dict(
            keys=dict(
                type="list",
                elements="dict",
                no_log=False,
                options=dict(
                    name=dict(type="str"),
                    secret=dict(type="str", no_log=True),
                    fingerprint=dict(type="str"),
                ),
            ),
        ),
    )


def resources_argument_spec():
    """Suboptions of an upstream ``resources`` list; ``secret`` is no_log.

    Marking only ``secret`` (not the whole list) keeps provider and resource
    names readable in the output while Ansible masks every key, including in
    the invocation it logs on the target.
    """
    return dict(
        resources=dict(type="list", elements="str"),
        providers=dict(
            type="list",
            elements="dict",
            options=dict(
                aescbc=_keyed_provider_spec(),
                aesgcm=_keyed_provider_spec(),
                secretbox=_keyed_provider_spec(),
                identity=dict(type="dict", options=dict()),
                kms=dict(
                    type="dict",
                    options=dict(
                        apiVersion=dict(type="str"),
                        name=dict(type="str"),
                        cachesize=dict(type="int"),
                        endpoint=dict(type="str"),
                        timeout=dict(type="str"),
                    ),
                ),
            ),
        ),
    )
