"""etcd_encryption_info and its module_utils against real ciphertexts.

A standalone kube-apiserver (standalone_apiserver.py) on the lab's etcd, under
an etcd prefix of its own, writes one Secret with each write provider and
storage media type; the tests then read the raw values from etcd and check the
storage format facts, the decrypt check, and the module run by
ansible-playbook, including that nothing secret reaches its output.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid

import pytest
import yaml
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.secret import SecretBox

from labctl import NODES, REPO, etcdctl_env
from standalone_apiserver import StandaloneApiserver

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd import EtcdClient
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd_encryption import classify, decrypt_check

pytestmark = pytest.mark.usefixtures("lab")

PROTOBUF = "application/vnd.kubernetes.protobuf"
JSON = "application/json"
YAML = "application/yaml"
# (write provider, storage media type, Secret name): one Secret written in each phase.
PHASES = [
    ("identity", PROTOBUF, "plain-protobuf"),
    ("identity", JSON, "plain-json"),
    ("identity", YAML, "plain-yaml"),
    ("aescbc", PROTOBUF, "cbc"),
    ("aesgcm", PROTOBUF, "gcm"),
    ("aesgcm", JSON, "gcm-json"),
    ("secretbox", PROTOBUF, "sb"),
]
NAMES = {"aescbc": "cbc-1", "aesgcm": "gcm-1", "secretbox": "sb-1"}
EXPECTED = {
    "plain-protobuf": "identity", "plain-json": "identity", "plain-yaml": "identity",
    "cbc": "aescbc:cbc-1", "gcm": "aesgcm:gcm-1", "gcm-json": "aesgcm:gcm-1", "sb": "secretbox:sb-1",
}


class Lab(object):
    """What the fixture built: the server, its prefix, the keys, the plaintext marker."""

    def __init__(self, server, keys, marker, workdir):
        self.server = server
        self.prefix = server.etcd_prefix
        self.keys = keys  # provider -> raw bytes
        self.marker = marker
        self.workdir = workdir
        env = etcdctl_env()
        self.etcd = {
            "etcd_endpoints": ["https://%s:2379" % ip for ip in NODES.values()],
            "etcd_ca_cert": env["ETCDCTL_CACERT"],
            "etcd_cert": env["ETCDCTL_CERT"],
            "etcd_key": env["ETCDCTL_KEY"],
        }

    def etcd_key(self, name):
        return self.server.etcd_key("secrets", "default", name)

    def key_entries(self, providers=("aescbc", "aesgcm", "secretbox")):
        return [{"provider": provider, "name": NAMES[provider], "secret": _b64(self.keys[provider])}
                for provider in providers]

    def notation_keys(self):
        return {"%s:%s" % (provider, NAMES[provider]): raw for provider, raw in self.keys.items()}

    def client(self, **kwargs):
        return EtcdClient(self.etcd["etcd_endpoints"], self.etcd["etcd_ca_cert"], self.etcd["etcd_cert"],
                          self.etcd["etcd_key"], **kwargs)


def _b64(raw):
    return base64.b64encode(raw).decode()


def encryption_config(write_provider, keys):
    providers = [{provider: {"keys": [{"name": NAMES[provider], "secret": _b64(keys[provider])}]}}
                 for provider in ("aescbc", "aesgcm", "secretbox")]
    providers.append({"identity": {}})
    first = next(entry for entry in providers if write_provider in entry)
    providers.remove(first)
    providers.insert(0, first)
    return yaml.safe_dump({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": ["secrets"], "providers": providers}],
    })


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("standalone-apiserver"))
    server = StandaloneApiserver(workdir, "/kubecrypt-test-eei-%s" % uuid.uuid4().hex[:10])
    keys = {"aescbc": os.urandom(32), "aesgcm": os.urandom(16), "secretbox": os.urandom(32)}
    marker = "kubecrypt-plaintext-marker-%s" % uuid.uuid4().hex
    created = []
    try:
        for write_provider, media_type, name in PHASES:
            server.restart(encryption_config(write_provider, keys), storage_media_type=media_type)
            server.kubectl("create", "secret", "generic", name, "-n", "default",
                           "--from-literal=token=%s-%s" % (marker, name))
            created.append(name)
        # Every Secret reads back through the apiserver: the configuration holds every key.
        listed = json.loads(server.kubectl("get", "secrets", "-n", "default", "-o", "json").stdout)
        assert sorted(item["metadata"]["name"] for item in listed["items"]) == sorted(created)
        yield Lab(server, keys, marker, workdir)
    finally:
        for name in created:
            server.kubectl("delete", "secret", name, "-n", "default", "--wait=false", check=False)
        server.stop()
        server.purge_etcd_prefix()


# ---------------------------------------------------------------------------
# The storage format, checked on what kube-apiserver really wrote


def test_raw_values_are_classified(written):
    with written.client() as client:
        for name, notation in EXPECTED.items():
            value = client.get(written.etcd_key(name))
            assert value is not None, name
            assert classify(value) == notation, (name, value[:40])
            if notation != "identity":
                provider, key_name = notation.split(":")
                assert value.startswith(("k8s:enc:%s:v1:%s:" % (provider, key_name)).encode())
                assert written.marker.encode() not in value


def test_plaintext_serializations_start_as_documented(written):
    with written.client() as client:
        assert client.get(written.etcd_key("plain-protobuf")).startswith(b"k8s\x00")
        assert client.get(written.etcd_key("plain-json")).startswith(b"{")
        assert client.get(written.etcd_key("plain-yaml")).startswith(b"apiVersion:")


def _payload(value):
    return value.split(b":", 5)[5]


def test_format_facts_by_decrypting_by_hand(written):
    """aescbc: IV(16)+CBC+PKCS#7; aesgcm: nonce(12)+ct+tag(16), AAD = full etcd key; secretbox: nonce(24)+tag+ct."""
    marker = written.marker.encode()
    with written.client() as client:
        cbc = _payload(client.get(written.etcd_key("cbc")))
        decryptor = Cipher(algorithms.AES(written.keys["aescbc"]), modes.CBC(cbc[:16])).decryptor()
        padded = decryptor.update(cbc[16:]) + decryptor.finalize()
        assert padded[-padded[-1]:] == bytes([padded[-1]]) * padded[-1]
        assert padded.startswith(b"k8s\x00") and marker + b"-cbc" in padded

        gcm_key = written.etcd_key("gcm").encode()
        gcm = _payload(client.get(gcm_key))
        plaintext = AESGCM(written.keys["aesgcm"]).decrypt(gcm[:12], gcm[12:], gcm_key)
        assert plaintext.startswith(b"k8s\x00") and marker + b"-gcm" in plaintext
        gcm_json = _payload(client.get(written.etcd_key("gcm-json")))
        plaintext = AESGCM(written.keys["aesgcm"]).decrypt(gcm_json[:12], gcm_json[12:],
                                                           written.etcd_key("gcm-json").encode())
        assert plaintext.startswith(b"{")

        box = _payload(client.get(written.etcd_key("sb")))
        plaintext = SecretBox(written.keys["secretbox"]).decrypt(box[24:], box[:24])
        assert plaintext.startswith(b"k8s\x00") and marker + b"-sb" in plaintext


def test_decrypt_check_on_real_values(written):
    keys = written.notation_keys()
    with written.client() as client:
        for name, notation in EXPECTED.items():
            value = client.get(written.etcd_key(name))
            expected = (True, "not_encrypted") if notation == "identity" else (True, "ok")
            assert decrypt_check(written.etcd_key(name), value, keys) == expected, name
            assert decrypt_check(written.etcd_key(name).encode(), value, keys) == expected, name


def test_decrypt_check_with_wrong_keys_on_real_values(written):
    wrong = {notation: os.urandom(len(raw)) for notation, raw in written.notation_keys().items()}
    with written.client() as client:
        ok, reason = decrypt_check(written.etcd_key("cbc"), client.get(written.etcd_key("cbc")), wrong)
        assert not ok and reason in ("bad_padding", "not_an_object")
        for name in ("gcm", "gcm-json", "sb"):
            assert decrypt_check(written.etcd_key(name), client.get(written.etcd_key(name)), wrong) == \
                (False, "authentication_failed"), name
        assert decrypt_check(written.etcd_key("sb"), client.get(written.etcd_key("sb")), {}) == \
            (False, "undecryptable_unknown_key")


def test_aesgcm_authenticates_the_full_etcd_key_with_its_prefix(written):
    keys = written.notation_keys()
    with written.client() as client:
        value = client.get(written.etcd_key("gcm"))
    assert decrypt_check(written.etcd_key("gcm"), value, keys) == (True, "ok")
    # The same value read as if it were another object, or without the --etcd-prefix.
    assert decrypt_check(written.etcd_key("cbc"), value, keys) == (False, "authentication_failed")
    assert decrypt_check("/registry/secrets/default/gcm", value, keys) == (False, "authentication_failed")


def test_range_iter_is_a_consistent_snapshot_of_real_etcd(written):
    extra = "snapshot-%s" % uuid.uuid4().hex[:6]
    with written.client() as client:
        scan = client.range_iter(written.prefix + "/secrets/", page_size=1)
        first = next(scan)
        written.server.kubectl("create", "secret", "generic", extra, "-n", "default", "--from-literal=a=b")
        try:
            rest = list(scan)
            keys = [first[0]] + [key for key, _value in rest]
            assert written.etcd_key(extra).encode() not in keys
            assert sorted(keys) == sorted(written.etcd_key(name).encode() for name in EXPECTED)
            assert client.get(written.etcd_key(extra)) is not None
            assert scan.pages == len(EXPECTED)  # etcd says "more" is false on the last page
        finally:
            written.server.kubectl("delete", "secret", extra, "-n", "default", "--wait=false", check=False)


# ---------------------------------------------------------------------------
# The module, run by ansible-playbook


def run_module(written, args, check=False, verbosity="-vvv"):
    """Run the module in a playbook; return (registered result, everything ansible printed)."""
    run_dir = os.path.join(written.workdir, "run-%s" % uuid.uuid4().hex[:8])
    os.makedirs(run_dir, mode=0o700)
    result_path = os.path.join(run_dir, "result.json")
    with open(os.path.join(run_dir, "vars.json"), "w") as handle:
        json.dump({"scan_args": args}, handle)
    playbook = [{
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "Scan etcd", "kubecrypt.at_rest.etcd_encryption_info": {
                option: "{{ scan_args['%s'] }}" % option for option in args}, "register": "scan",
             "ignore_errors": True},
            {"name": "Save the result", "ansible.builtin.copy": {
                "content": "{{ scan | to_json }}", "dest": result_path, "mode": "0600"}, "check_mode": False},
        ],
    }]
    with open(os.path.join(run_dir, "playbook.yml"), "w") as handle:
        yaml.safe_dump(playbook, handle)
    env = dict(os.environ)
    env.update(ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, ".venv", "collections"),
               ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    for name in ("ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY"):
        env.pop(name, None)
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "@" + os.path.join(run_dir, "vars.json"), "-e", "ansible_python_interpreter=" + sys.executable,
            os.path.join(run_dir, "playbook.yml")]
    if verbosity:
        argv.append(verbosity)
    if check:
        argv.append("--check")
    completed = subprocess.run(argv, env=env, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=300, check=False)
    assert os.path.exists(result_path), "the playbook did not run:\n" + completed.stdout[-3000:]
    with open(result_path) as handle:
        return json.load(handle), completed.stdout


def _assert_nothing_secret(written, *texts):
    keys = list(written.keys.values())
    for text in texts:
        for raw in keys:
            assert _b64(raw) not in text
            assert raw.hex() not in text
        assert written.marker not in text
        assert _b64(written.marker.encode())[:24] not in text


def test_module_reports_every_provider_and_decrypts_with_the_escrowed_keys(written):
    args = dict(written.etcd, etcd_prefix=written.prefix, resources=["secrets", "configmaps"],
                expected_provider="secretbox:sb-1", keys=written.key_entries(), page_size=2, sample_size=10)
    result, output = run_module(written, args)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    secrets = result["by_resource"]["secrets"]
    assert secrets["total"] == len(EXPECTED)
    assert secrets["by_provider"] == {"identity": 3, "aescbc:cbc-1": 1, "aesgcm:gcm-1": 2, "secretbox:sb-1": 1}
    # The apiserver wrote its own ConfigMaps unencrypted: not in the EncryptionConfiguration.
    assert result["by_resource"]["configmaps"]["total"] >= 1
    assert set(result["by_resource"]["configmaps"]["by_provider"]) == {"identity"}
    configmaps = result["by_resource"]["configmaps"]["total"]
    assert result["total"] == len(EXPECTED) + configmaps
    assert result["offending"] == len(EXPECTED) - 1 + configmaps
    offending_secrets = sorted(key for key in result["offending_sample"] if "/secrets/" in key)
    assert offending_secrets == sorted(written.etcd_key(name) for name in EXPECTED if name != "sb")
    assert result["decrypt_checked"] == 4
    assert result["decrypt_failures"] == 0 and result["decrypt_failure_sample"] == []
    assert result["all_expected"] is False
    assert result["encrypted_percent"] == round(100.0 * 4 / result["total"], 2)
    assert result["revision"] > 0
    assert result["prefixes"] == {"secrets": written.prefix + "/secrets/",
                                  "configmaps": written.prefix + "/configmaps/"}
    assert result["etcd_endpoint"] == written.etcd["etcd_endpoints"][0]
    _assert_nothing_secret(written, output, json.dumps(result))


def test_module_all_expected_when_only_the_expected_key_is_scanned(written):
    args = dict(written.etcd, prefixes={"sb": written.etcd_key("sb")}, expected_provider="secretbox:sb-1",
                keys=written.key_entries(["secretbox"]))
    result, output = run_module(written, args, check=True)
    assert not result.get("failed"), result.get("msg")
    assert result["total"] == 1 and result["all_expected"] is True and result["encrypted_percent"] == 100.0
    assert result["changed"] is False
    _assert_nothing_secret(written, output)


def test_module_reports_values_under_keys_not_in_escrow(written):
    args = dict(written.etcd, etcd_prefix=written.prefix, keys=written.key_entries(["secretbox"]))
    result, output = run_module(written, args)
    assert not result.get("failed"), result.get("msg")
    assert result["decrypt_failures"] == 3
    assert result["decrypt_failures_by_reason"] == {"undecryptable_unknown_key": 3}
    assert sorted((entry["key"], entry["provider"]) for entry in result["decrypt_failure_sample"]) == sorted([
        (written.etcd_key("cbc"), "aescbc:cbc-1"), (written.etcd_key("gcm"), "aesgcm:gcm-1"),
        (written.etcd_key("gcm-json"), "aesgcm:gcm-1")])
    assert result["offending"] == 0 and result["all_expected"] is False
    _assert_nothing_secret(written, output)


def test_module_with_wrong_key_bytes(written):
    entries = [dict(entry, secret=_b64(os.urandom(len(written.keys[entry["provider"]]))))
               for entry in written.key_entries()]
    args = dict(written.etcd, etcd_prefix=written.prefix, keys=entries, sample_size=1)
    result, output = run_module(written, args)
    assert result["decrypt_failures"] == 4 and result["decrypt_checked"] == 0
    assert len(result["decrypt_failure_sample"]) == 1
    assert result["decrypt_failures_by_reason"]["authentication_failed"] == 3
    for entry in entries:
        assert entry["secret"] not in output
    _assert_nothing_secret(written, output)


def test_module_fails_over_past_a_dead_endpoint(written):
    etcd = dict(written.etcd, etcd_endpoints=["https://127.0.0.29:2379"] + written.etcd["etcd_endpoints"][1:])
    result, _output = run_module(written, dict(etcd, prefix=written.prefix), verbosity=None)
    assert not result.get("failed"), result.get("msg")
    assert result["etcd_endpoint"] == written.etcd["etcd_endpoints"][1]
    assert result["total"] == len(EXPECTED)


def test_module_names_unreachable_endpoints(written):
    etcd = dict(written.etcd, etcd_endpoints=["https://127.0.0.29:2379", "127.0.0.28"], etcd_timeout=5)
    result, _output = run_module(written, dict(etcd, prefix=written.prefix), verbosity=None)
    assert result["failed"]
    assert result["msg"] == ("no etcd endpoint answered: https://127.0.0.29:2379: connection refused; "
                             "https://127.0.0.28:2379: connection refused")


def test_module_explains_a_tls_failure(written):
    etcd = dict(written.etcd, etcd_ca_cert=os.path.join(written.workdir, "ca.crt"),
                etcd_endpoints=written.etcd["etcd_endpoints"][:1])
    result, _output = run_module(written, dict(etcd, prefix=written.prefix), verbosity=None)
    assert result["failed"]
    assert result["msg"].startswith("etcd at %s: TLS: the server certificate was not accepted"
                                    % written.etcd["etcd_endpoints"][0])


def test_module_refuses_a_key_of_the_wrong_length_before_reading(written):
    short = _b64(os.urandom(20))
    args = dict(written.etcd, etcd_prefix=written.prefix,
                keys=[{"provider": "secretbox", "name": "sb-1", "secret": short}])
    result, output = run_module(written, args)
    assert result["failed"]
    assert result["msg"] == "keys[0]: the secret of secretbox:sb-1 is 20 bytes; secretbox keys must be 32 bytes"
    assert short not in output


def test_module_refuses_a_bad_expected_provider(written):
    result, _output = run_module(written, dict(written.etcd, prefix=written.prefix, expected_provider="secretbox"),
                                 verbosity=None)
    assert result["failed"] and "not a provider notation" in result["msg"]
