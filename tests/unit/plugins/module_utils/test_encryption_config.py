# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import base64
import copy
import hashlib

import pytest
import yaml

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # ansible-test units installs only tests/unit/requirements.txt
    given = None

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import encryption_config as ec


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _material(label, size):
    return hashlib.sha256(label.encode("ascii")).digest()[:size]


K32 = _b64(_material("k32", 32))
K24 = _b64(_material("k24", 24))
K16 = _b64(_material("k16", 16))
OTHER32 = _b64(_material("other32", 32))
SHORT = _b64(_material("short", 10))
SECRETS = (K32, K24, K16, OTHER32, SHORT)


def _keys(*pairs):
    return {"keys": [{"name": name, "secret": secret} for name, secret in pairs]}


def _group(resources, *providers):
    return {"resources": list(resources), "providers": list(providers)}


def _valid():
    return [
        _group(
            ["secrets", "configmaps"],
            {"aescbc": _keys(("key2", K32), ("key1", K16))},
            {"secretbox": _keys(("sb1", OTHER32))},
            {"identity": {}},
        ),
        _group(["*.apps"], {"kms": {"apiVersion": "v2", "name": "vault", "endpoint": "unix:///run/kms.sock", "timeout": "3s"}}),
        _group(["*."], {"identity": {}}),
    ]


def _problems(resources, **kwargs):
    with pytest.raises(ec.EncryptionConfigError) as exc_info:
        ec.validate_resources(resources, **kwargs)
    return str(exc_info.value)


def _assert_no_secret(text):
    for secret in SECRETS:
        assert secret not in text
        # no recognisable fragment either
        assert secret[:12] not in text


# ---------------------------------------------------------------------------
# key material
# ---------------------------------------------------------------------------

def test_fingerprint_definition():
    expected = "sha256:" + hashlib.sha256(b"kubecrypt.at_rest key fingerprint\x00" + base64.b64decode(K32)).hexdigest()[:16]
    assert ec.key_fingerprint(K32) == expected
    assert ec.key_fingerprint(K32) != ec.key_fingerprint(OTHER32)
    assert len(ec.key_fingerprint(K16)) == len("sha256:") + 16


@pytest.mark.parametrize("size", [16, 24, 32, 10])
def test_decode_secret_accepts_standard_base64(size):
    material = _material("x", size)
    assert ec.decode_secret(_b64(material)) == material


@pytest.mark.parametrize("bad, reason", [
    (K32.rstrip("="), "padding"),
    (K32[:10] + "\n" + K32[10:], "whitespace"),
    (" " + K32, "whitespace"),
    (K32 + "\n", "whitespace"),
    (base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "alphabet"),
    ("QUI=" [:-2] + "J=", "non-canonical"),
    ("", "empty"),
    (None, "type"),
    (12345, "type"),
])
def test_decode_secret_is_strict(bad, reason):
    with pytest.raises(ValueError) as exc_info:
        ec.decode_secret(bad)
    if isinstance(bad, str) and bad:
        assert bad.strip() not in str(exc_info.value)


def test_non_canonical_padding_bits_refused():
    # "QUI=" is canonical for b"AB"; "QUJ=" decodes to the same bytes in Go.
    assert ec.decode_secret("QUI=") == b"AB"
    with pytest.raises(ValueError, match="canonical"):
        ec.decode_secret("QUJ=")
    assert ec.decode_secret("QUJ=", canonical=False) == b"AB"


def _non_canonical(secret):
    """The same key bytes with a non-zero padding bit (Go accepts it)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stem = secret.rstrip("=")
    last = alphabet[alphabet.index(stem[-1]) + 1]
    return stem[:-1] + last + secret[len(stem):]


def test_fingerprint_depends_on_the_key_bytes_only():
    odd = _non_canonical(K32)
    assert odd != K32 and base64.b64decode(odd) == base64.b64decode(K32)
    assert ec.key_fingerprint(odd) == ec.key_fingerprint(K32)


def test_non_canonical_secret_is_a_collection_rule():
    resources = [_group(["secrets"], {"aescbc": _keys(("k", _non_canonical(K32)))})]
    message = _problems(resources)
    assert "key 'k'" in message and "canonical" in message
    normalized, warnings = ec.validate_resources(resources, strict=False)
    assert len(warnings) == 1 and "canonical" in warnings[0]
    redacted = ec.redact_resources(normalized)
    assert redacted[0]["providers"][0]["aescbc"]["keys"][0]["fingerprint"] == ec.key_fingerprint(K32)


def test_secret_strings_walks_any_shape():
    data = {"a": [{"secret": K32}, {"x": {"secret": K16 + "\n"}}], "secret": 5, "b": ("secret", {"secret": ""})}
    found = ec.secret_strings(data)
    assert K32 in found
    assert K16 + "\n" in found
    assert K16 in found
    assert "" not in found


# ---------------------------------------------------------------------------
# validation: valid input
# ---------------------------------------------------------------------------

def test_valid_config_is_normalized_in_order():
    normalized, warnings = ec.validate_resources(_valid())
    assert warnings == []
    assert normalized == _valid()


def test_ansible_null_suboptions_are_dropped():
    with_nulls = [{
        "resources": ["secrets"],
        "providers": [
            {"aescbc": {"keys": [{"name": "k", "secret": K32, "fingerprint": None}]}, "aesgcm": None,
             "secretbox": None, "identity": None, "kms": None},
            {"identity": {}, "aescbc": None, "aesgcm": None, "secretbox": None, "kms": None},
            {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s", "cachesize": None, "timeout": None},
             "aescbc": None, "aesgcm": None, "secretbox": None, "identity": None},
        ],
    }]
    normalized, dummy = ec.validate_resources(with_nulls, accept_fingerprints=True)
    assert normalized == [{
        "resources": ["secrets"],
        "providers": [
            {"aescbc": {"keys": [{"name": "k", "secret": K32}]}},
            {"identity": {}},
            {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s"}},
        ],
    }]


@pytest.mark.parametrize("provider, secret", [
    ("aescbc", K16), ("aescbc", K24), ("aescbc", K32),
    ("aesgcm", K16), ("aesgcm", K24), ("aesgcm", K32),
    ("secretbox", K32),
])
def test_key_sizes_accepted(provider, secret):
    ec.validate_resources([_group(["secrets"], {provider: _keys(("k", secret))})])


def test_kms_v1_only_when_allowed():
    resources = [_group(["secrets"], {"kms": {"name": "old", "endpoint": "unix:///s", "cachesize": 100}})]
    message = _problems(resources)
    assert "KMS v1" in message and "'old'" in message
    normalized, dummy = ec.validate_resources(resources, allow_kms_v1=True)
    assert normalized[0]["providers"][0] == {"kms": {"name": "old", "cachesize": 100, "endpoint": "unix:///s"}}


@pytest.mark.parametrize("timeout", ["3s", "1m30s", "500ms", "1.5h", "2us", "1\u00b5s"])
def test_kms_timeouts_accepted(timeout):
    ec.validate_resources([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s", "timeout": timeout}})])


def test_masking_allows_specific_before_wildcard():
    ec.validate_resources([
        _group(["secrets"], {"identity": {}}),
        _group(["*."], {"identity": {}}),
        _group(["deployments.apps"], {"identity": {}}),
        _group(["*.apps"], {"identity": {}}),
        _group(["*.*"], {"identity": {}}),
    ])


def test_fingerprint_is_accepted_and_checked():
    good = [_group(["secrets"], {"aescbc": {"keys": [{"name": "k", "secret": K32, "fingerprint": ec.key_fingerprint(K32)}]}})]
    normalized, dummy = ec.validate_resources(good, accept_fingerprints=True)
    assert normalized[0]["providers"][0]["aescbc"]["keys"] == [{"name": "k", "secret": K32}]
    bad = copy.deepcopy(good)
    bad[0]["providers"][0]["aescbc"]["keys"][0]["fingerprint"] = ec.key_fingerprint(OTHER32)
    message = _problems(bad, accept_fingerprints=True)
    assert ec.key_fingerprint(OTHER32) in message and ec.key_fingerprint(K32) in message
    _assert_no_secret(message)
    assert "unknown field 'fingerprint'" in _problems(good)


# ---------------------------------------------------------------------------
# validation: every rule, and what the messages say
# ---------------------------------------------------------------------------

INVALID = [
    # (resources, fragments that must appear in the message)
    ([], ["at least one resource group"]),
    (None, ["at least one resource group"]),
    ([_group([], {"identity": {}})], ["resources[0] (no resources)", "at least one resource"]),
    ([_group(["secrets"])], ["resources[0] (secrets)", "at least one provider"]),
    ([_group(["Secrets"], {"identity": {}})], ["'Secrets'", "capital letters"]),
    ([_group(["*"], {"identity": {}})], ["'*'", "'*.'"]),
    ([_group(["serviceipallocations"], {"identity": {}})], ["REST API"]),
    ([_group(["apiserveripinfo"], {"identity": {}})], ["REST API"]),
    ([_group(["servicenodeportallocations"], {"identity": {}})], ["REST API"]),
    ([_group(["*.events.k8s.io"], {"identity": {}})], ["events"]),
    ([_group(["deployments.extensions"], {"identity": {}})], ["extensions"]),
    ([_group(["secrets.*"], {"identity": {}})], ["across groups"]),
    ([_group(["secr*ts"], {"identity": {}})], ["'secr*ts'", "only meaningful"]),
    ([_group(["*.ap*s"], {"identity": {}})], ["'*.ap*s'", "only meaningful"]),
    ([_group(["secrets", "secrets"], {"identity": {}})], ["multiple times"]),
    ([_group(["secrets", "*."], {"identity": {}})], ["overlapping"]),
    ([_group(["*.*", "*.apps"], {"identity": {}})], ["overlapping"]),
    ([_group(["*."], {"identity": {}}), _group(["secrets"], {"identity": {}})],
     ["resources[1] (secrets)", "masked by earlier rule '*.'", "resources[0]"]),
    ([_group(["*.*"], {"identity": {}}), _group(["*.apps"], {"identity": {}})], ["masked by earlier rule '*.*'"]),
    ([_group(["*.apps"], {"identity": {}}), _group(["deployments.apps"], {"identity": {}})], ["masked by earlier rule '*.apps'"]),
    ([_group(["*."], {"identity": {}}), _group(["*."], {"identity": {}})], ["masked"]),
    ([_group(["secrets"], {"identity": {}}), _group(["secrets"], {"identity": {}})], ["already listed in resources[0]"]),
    ([_group(["secrets"], {})], ["providers[0]", "does not contain any of the expected providers"]),
    ([_group(["secrets"], {"aescbc": _keys(("k", K32)), "identity": {}})],
     ["providers[0] (aescbc, identity)", "more than one provider"]),
    ([_group(["secrets"], {"aesgmc": _keys(("k", K32))})], ["unknown field 'aesgmc'"]),
    ([_group(["secrets"], {"aescbc": {"keys": []}})], ["providers[0] (aescbc)", "at least one key"]),
    ([_group(["secrets"], {"aescbc": _keys(("k1", SHORT))})],
     ["resources[0] (secrets)", "providers[0] (aescbc)", "key 'k1'", "got 10 bytes", "16 or 24 or 32"]),
    ([_group(["secrets", "configmaps"], {"identity": {}}, {"secretbox": _keys(("sb", K16))})],
     ["resources[0] (secrets, configmaps)", "providers[1] (secretbox)", "key 'sb'", "got 16 bytes", "expected 32"]),
    ([_group(["secrets"], {"aesgcm": _keys(("g", K32.rstrip("=")))})], ["key 'g'", "base64"]),
    ([_group(["secrets"], {"aesgcm": _keys(("g", K32[:20] + "\n" + K32[20:]))})], ["key 'g'", "base64"]),
    ([_group(["secrets"], {"aescbc": {"keys": [{"secret": K32}]}})], ["keys[0]", "name is a mandatory field"]),
    ([_group(["secrets"], {"aescbc": {"keys": [{"name": "k"}]}})], ["key 'k'", "secret is a mandatory field"]),
    ([_group(["secrets"], {"aescbc": {"keys": [{"name": 7, "secret": K32}]}})], ["keys[0]", "name must be a string"]),
    ([_group(["secrets"], {"aescbc": {"keys": [{"name": "k", "secret": 7}]}})], ["key 'k'", "secret must be a string"]),
    ([_group(["secrets"], {"aescbc": _keys(("k:1", K32))})], ["key 'k:1'", "':'"]),
    ([_group(["secrets"], {"aescbc": _keys(("k", K32), ("k", K16))})], ["key 'k'", "used twice"]),
    ([_group(["secrets"], {"aescbc": _keys(("k", K32))}, {"aescbc": _keys(("k", K16))})],
     ["providers[1] (aescbc)", "key 'k'", "another aescbc provider"]),
    ([_group(["secrets"], {"aescbc": {"keys": [{"name": "k", "secret": K32, "extra": 1}]}})], ["unknown field 'extra'"]),
    ([_group(["secrets"], {"identity": {"x": 1}})], ["providers[0] (identity)", "unknown field 'x'"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "endpoint": "unix:///s"}})], ["name is a mandatory field"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "a:b", "endpoint": "unix:///s"}})], ["'a:b'", "':'"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n"}})], ["endpoint is a mandatory field"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "tcp://1.2.3.4:80"}})], ["unix://"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix://"}})], ["unix://"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v3", "name": "n", "endpoint": "unix:///s"}})], ["apiVersion 'v3'"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s", "cachesize": 10}})],
     ["cachesize is not supported in v2"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s", "timeout": "0s"}})],
     ["timeout should be a positive value"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s", "timeout": "-1s"}})],
     ["timeout should be a positive value"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s", "timeout": "3"}})],
     ["timeout must be a duration"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s", "pandas": "yes"}})],
     ["unknown field 'pandas'"]),
    ([_group(["secrets"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s"}}),
      _group(["configmaps"], {"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///t"}})],
     ["resources[1] (configmaps)", "duplicate KMS provider name"]),
]


@pytest.mark.parametrize("resources, fragments", INVALID)
def test_invalid_input_is_refused_with_a_precise_message(resources, fragments):
    message = _problems(resources)
    for fragment in fragments:
        assert fragment in message
    _assert_no_secret(message)


def test_missing_secret_beside_a_fingerprint_gets_a_hint():
    resources = [_group(["secrets"], {"aescbc": {"keys": [{"name": "k", "fingerprint": "sha256:0"}]}})]
    message = _problems(resources, accept_fingerprints=True)
    assert "key 'k'" in message and "secret is a mandatory field" in message and "return_secrets" in message


def test_kms_v1_cachesize_zero_refused():
    resources = [_group(["secrets"], {"kms": {"apiVersion": "v1", "name": "n", "endpoint": "unix:///s", "cachesize": 0}})]
    assert "cachesize should be a positive value" in _problems(resources, allow_kms_v1=True)


def test_all_problems_are_reported_together():
    resources = [_group(["Secrets"], {"aescbc": _keys(("a", SHORT))}, {"secretbox": _keys(("b", K16))})]
    message = _problems(resources)
    assert "capital letters" in message and "key 'a'" in message and "key 'b'" in message
    _assert_no_secret(message)


def test_lenient_mode_turns_collection_rules_into_warnings():
    resources = [_group(["secrets"], {"aescbc": _keys(("k:1", K32), ("k:1", K16))})]
    with pytest.raises(ec.EncryptionConfigError):
        ec.validate_resources(resources)
    normalized, warnings = ec.validate_resources(resources, strict=False)
    assert len(warnings) == 3
    assert all("key 'k:1'" in warning for warning in warnings)
    # apiserver rules stay errors
    with pytest.raises(ec.EncryptionConfigError):
        ec.validate_resources([_group(["secrets"], {"aescbc": _keys(("k", SHORT))})], strict=False)


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------

GOLDEN = (
    ec.HEADER
    + "apiVersion: apiserver.config.k8s.io/v1\n"
    "kind: EncryptionConfiguration\n"
    "resources:\n"
    "  - resources:\n"
    "      - secrets\n"
    "      - configmaps\n"
    "    providers:\n"
    "      - aescbc:\n"
    "          keys:\n"
    "            - name: key2\n"
    "              secret: \"" + K32 + "\"\n"
    "            - name: key1\n"
    "              secret: \"" + K16 + "\"\n"
    "      - secretbox:\n"
    "          keys:\n"
    "            - name: sb1\n"
    "              secret: \"" + OTHER32 + "\"\n"
    "      - identity: {}\n"
    "  - resources:\n"
    "      - \"*.apps\"\n"
    "    providers:\n"
    "      - kms:\n"
    "          apiVersion: v2\n"
    "          name: vault\n"
    "          endpoint: \"unix:///run/kms.sock\"\n"
    "          timeout: \"3s\"\n"
    "  - resources:\n"
    "      - \"*.\"\n"
    "    providers:\n"
    "      - identity: {}\n"
).encode("utf-8")


def test_render_is_byte_exact():
    normalized, dummy = ec.validate_resources(_valid())
    assert ec.render_config(normalized) == GOLDEN


def test_render_fixes_field_order_but_keeps_list_order():
    shuffled = _valid()
    shuffled[0] = {"providers": shuffled[0]["providers"], "resources": shuffled[0]["resources"]}
    shuffled[1]["providers"][0]["kms"] = {"timeout": "3s", "endpoint": "unix:///run/kms.sock", "name": "vault", "apiVersion": "v2"}
    normalized, dummy = ec.validate_resources(shuffled)
    assert ec.render_config(normalized) == GOLDEN
    swapped = _valid()
    swapped[0]["providers"][0]["aescbc"]["keys"].reverse()
    normalized, dummy = ec.validate_resources(swapped)
    assert ec.render_config(normalized) != GOLDEN


def test_render_parses_back():
    normalized, dummy = ec.validate_resources(_valid())
    parsed, warnings = ec.parse_config(ec.render_config(normalized), "/etc/enc.yaml")
    assert parsed == normalized and warnings == []
    document = yaml.safe_load(GOLDEN)
    assert list(document) == ["apiVersion", "kind", "resources"]


if given is not None:
    _YAML_VALUES = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text()),
        lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(), children, max_size=4)),
        max_leaves=20,
    )

    @settings(max_examples=300, deadline=None)
    @given(_YAML_VALUES)
    def test_dump_yaml_round_trips_through_a_yaml_parser(value):
        document = {"value": value}
        assert yaml.safe_load(ec.dump_yaml(document).decode("utf-8")) == document

    _NAMES = st.text(min_size=1, max_size=12).filter(lambda name: ":" not in name)

    @st.composite
    def _configs(draw):
        groups = []
        used = set()
        for group_index in range(draw(st.integers(1, 3))):
            resource = "res%d" % group_index
            providers = []
            for provider_index in range(draw(st.integers(1, 3))):
                provider_type = draw(st.sampled_from(("aescbc", "aesgcm", "secretbox", "identity")))
                if provider_type == "identity":
                    providers.append({"identity": {}})
                    continue
                names = draw(st.lists(_NAMES, min_size=1, max_size=3, unique=True).filter(lambda found: not set(found) & used))
                used.update(names)
                size = draw(st.sampled_from(ec.KEY_SIZES[provider_type]))
                keys = [{"name": name, "secret": _b64(draw(st.binary(min_size=size, max_size=size)))} for name in names]
                providers.append({provider_type: {"keys": keys}})
            groups.append({"resources": [resource], "providers": providers})
        return groups

    @settings(max_examples=150, deadline=None)
    @given(_configs())
    def test_any_valid_config_renders_deterministically_and_parses_back(resources):
        normalized, warnings = ec.validate_resources(resources)
        assert warnings == [] and normalized == resources
        content = ec.render_config(normalized)
        assert ec.render_config(ec.validate_resources(copy.deepcopy(resources))[0]) == content
        assert ec.parse_config(content, "/x")[0] == normalized
        redacted = ec.render_config(ec.redact_resources(normalized)).decode("utf-8")
        for secret in ec.secret_strings(resources):
            assert secret not in redacted
else:
    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_dump_yaml_round_trips_through_a_yaml_parser():
        pass


@pytest.mark.parametrize("text", ["yes", "No", "on", "OFF", "null", "true", "y", "1", "0x1f", "1e3", "*.", "a: b",
                                  "#x", "- x", "[a]", "{a}", "'q'", '"q"', "", " lead", "trail ", "a\u0085b", "\ufeff",
                                  "a\u2028b", "tab\tand\nnewline", "\x00", "\U0001f600"])
def test_dump_yaml_quotes_ambiguous_strings(text):
    assert yaml.safe_load(ec.dump_yaml({"s": text})) == {"s": text}


# ---------------------------------------------------------------------------
# parsing files
# ---------------------------------------------------------------------------

def _parse_error(content, path="/etc/kubernetes/enc/config.yaml"):
    with pytest.raises(ec.EncryptionConfigError) as exc_info:
        ec.parse_config(content, path)
    message = str(exc_info.value)
    assert path in message
    _assert_no_secret(message)
    return message


def test_parse_accepts_hand_written_yaml_and_json():
    hand = (
        "kind: EncryptionConfiguration\n"
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "resources:\n"
        "- resources: [secrets]\n"
        "  providers:\n"
        "  - aesgcm:\n"
        "      keys:\n"
        "      - {name: key1, secret: '" + K16 + "'}\n"
        "  - identity: {}\n"
    ).encode()
    resources, dummy = ec.parse_config(hand, "/x")
    assert resources == [_group(["secrets"], {"aesgcm": _keys(("key1", K16))}, {"identity": {}})]
    as_json = ('{"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration", '
               '"resources": [{"resources": ["secrets"], "providers": [{"identity": {}}]}]}').encode()
    assert ec.parse_config(as_json, "/x")[0] == [_group(["secrets"], {"identity": {}})]


def test_parse_errors_name_the_path_and_the_problem():
    assert "is empty" in _parse_error(b"")
    assert "is empty" in _parse_error(b"  \n")
    assert "not a mapping" in _parse_error(b"- a\n")
    assert "UTF-8" in _parse_error(b"\xff\xfe")
    body = "resources:\n- resources: [secrets]\n  providers: [{identity: {}}]\n"
    assert "apiVersion must be" in _parse_error(("apiVersion: v1\nkind: EncryptionConfiguration\n" + body).encode())
    assert "kind must be" in _parse_error(("apiVersion: apiserver.config.k8s.io/v1\nkind: Foo\n" + body).encode())
    assert "unknown field 'metadata'" in _parse_error(
        ("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nmetadata: {}\n" + body).encode())


def test_parse_error_never_quotes_the_line_with_a_secret():
    content = (
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "kind: EncryptionConfiguration\n"
        "resources:\n"
        "- resources: [secrets]\n"
        "  providers:\n"
        "  - aescbc:\n"
        "      keys:\n"
        "      - name: k\n"
        "        secret: " + K32 + ": oops\n"
    ).encode()
    message = _parse_error(content)
    assert "line 9" in message


def test_parse_refuses_duplicate_fields():
    content = (
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "kind: EncryptionConfiguration\n"
        "resources:\n"
        "- resources: [secrets]\n"
        "  providers:\n"
        "  - aescbc:\n"
        "      keys:\n"
        "      - name: k\n"
        "        secret: " + K32 + "\n"
        "        secret: " + OTHER32 + "\n"
    ).encode()
    assert "duplicate field" in _parse_error(content)


def test_parse_reports_invalid_keys_without_material():
    content = (
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "kind: EncryptionConfiguration\n"
        "resources:\n"
        "- resources: [secrets]\n"
        "  providers:\n"
        "  - secretbox:\n"
        "      keys:\n"
        "      - name: k\n"
        "        secret: " + SHORT + "\n"
    ).encode()
    message = _parse_error(content)
    assert "key 'k'" in message and "providers[0] (secretbox)" in message


def test_parse_accepts_kms_v1_and_fingerprints_are_unknown_in_files():
    content = (
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "kind: EncryptionConfiguration\n"
        "resources:\n"
        "- resources: [secrets]\n"
        "  providers:\n"
        "  - kms: {name: legacy, endpoint: 'unix:///s', cachesize: 100}\n"
    ).encode()
    resources, dummy = ec.parse_config(content, "/x")
    assert resources[0]["providers"][0]["kms"]["name"] == "legacy"
    with_fingerprint = (
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "kind: EncryptionConfiguration\n"
        "resources:\n"
        "- resources: [secrets]\n"
        "  providers:\n"
        "  - aescbc: {keys: [{name: k, secret: '" + K32 + "', fingerprint: x}]}\n"
    ).encode()
    assert "unknown field 'fingerprint'" in _parse_error(with_fingerprint)


# ---------------------------------------------------------------------------
# describing and redacting
# ---------------------------------------------------------------------------

def test_describe_resources():
    normalized, dummy = ec.validate_resources(_valid())
    description = ec.describe_resources(normalized)
    assert description["write_provider"] == "aescbc:key2"
    assert description["read_providers"] == ["aescbc:key2", "aescbc:key1", "secretbox:sb1", "identity"]
    assert description["resource_groups"] == [
        {"resources": ["secrets", "configmaps"], "write_provider": "aescbc:key2",
         "read_providers": ["aescbc:key2", "aescbc:key1", "secretbox:sb1", "identity"]},
        {"resources": ["*.apps"], "write_provider": "kms:vault", "read_providers": ["kms:vault"]},
        {"resources": ["*."], "write_provider": "identity", "read_providers": ["identity"]},
    ]
    assert ec.describe_resources([]) == {"write_provider": None, "read_providers": [], "resource_groups": []}


def test_redact_resources():
    normalized, dummy = ec.validate_resources(_valid())
    redacted = ec.redact_resources(normalized)
    _assert_no_secret(repr(redacted))
    assert redacted[0]["providers"][0]["aescbc"]["keys"] == [
        {"name": "key2", "fingerprint": ec.key_fingerprint(K32)},
        {"name": "key1", "fingerprint": ec.key_fingerprint(K16)},
    ]
    assert redacted[1] == normalized[1]
    with_secrets = ec.redact_resources(normalized, include_secrets=True)
    assert with_secrets[0]["providers"][0]["aescbc"]["keys"][0] == {
        "name": "key2", "secret": K32, "fingerprint": ec.key_fingerprint(K32)}
    # the input is not modified
    assert normalized == _valid()
