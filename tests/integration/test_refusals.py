"""What the playbooks refuse, each with a clear message and nothing changed.

On an encrypted lab (secretbox, restart mode):

* nodes whose configs disagree in a way no phase explains (one node's config
  edited by hand to put identity first) -- enable and rotate refuse before any
  node is restarted;
* a key name that the keystore holds with other material (one node's config
  edited by hand: the keystore's key name, other bytes) -- the escrow refuses;
* a prune while etcd still holds data under the old key: a stray copy of a
  Secret's value, stored under the current key at an etcd key that no API
  object has, so no rewrite through the API can reach it -- rotate adds the new
  key, promotes it, rewrites, and then refuses to prune, naming the etcd key;
  once the stray value is gone, the re-run finishes the same rotation.

"Nothing changed" is checked on the files (every node's config and manifest,
the keystore), on etcd (every Secret's raw value) and on the apiserver
processes (their start times).  No output may contain key material.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess

import pytest
import yaml
from nacl.secret import SecretBox

import labcheck
from labctl import (NODES, config_path, create_secrets, etcdctl_env, kubelet_state, lab_path, read_providers, readyz,
                    reset_lab, run_playbook, write_atomically)

pytestmark = pytest.mark.usefixtures("plaintext_lab_afterwards")

NAMESPACE = "refusals"
SECRETS = 200
FAST = {"kubecrypt_automatic_reload": False, "kubecrypt_wait_timeout": 120}


def manifest_path(node):
    return lab_path("nodes", node, "etc", "kubernetes", "manifests", "kube-apiserver.yaml")


def digest(path):
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        return None


def keystore():
    with open(lab_path("keystore", "keys.yml")) as handle:
        return yaml.safe_load(handle)["keys"]


def etcd_values(prefix="/registry/secrets/"):
    """{etcd key: sha256 of the raw value} of every Secret."""
    result = subprocess.run([lab_path("bin", "etcdctl"), "get", prefix, "--prefix", "-w", "json"], env=etcdctl_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300, check=True)
    return {base64.b64decode(kv["key"]).decode(): hashlib.sha256(base64.b64decode(kv.get("value", ""))).hexdigest()
            for kv in json.loads(result.stdout).get("kvs") or []}


def apiserver_starts():
    return {node: kubelet_state(node)["pods"]["kube-apiserver"]["containers"]["kube-apiserver"]["started_at"]
            for node in NODES}


def state():
    """Everything a refused run must leave as it was."""
    return {
        "configs": {node: digest(config_path(node)) for node in NODES},
        "manifests": {node: digest(manifest_path(node)) for node in NODES},
        "keystore": digest(lab_path("keystore", "keys.yml")),
        "etcd": etcd_values(),
        "apiserver_starts": apiserver_starts(),
    }


def assert_unchanged(before, after):
    for part in ("configs", "manifests", "keystore", "apiserver_starts"):
        assert after[part] == before[part], "%s changed: %s -> %s" % (part, before[part], after[part])
    changed = sorted(key for key in set(before["etcd"]) | set(after["etcd"])
                     if before["etcd"].get(key) != after["etcd"].get(key))
    assert not changed, "etcd values changed: %s" % changed[:10]


def flat(output):
    """The output with every run of whitespace as one space (long messages may be folded over lines)."""
    return " ".join(output.split())


def show_refusal(title, output):
    """Print the refusal as the operator sees it (pytest -s shows it)."""
    text = flat(output)
    start = min([index for index in (text.find("[ERROR]"), text.find("fatal: [")) if index >= 0] or [0])
    print("\n%s:\n  %s" % (title, text[start:start + 1200]))


def assert_no_key_material(output, extra_secrets=()):
    for secret in [entry["secret"] for entry in keystore()] + list(extra_secrets):
        assert secret not in output, "key material in the output"


def edit_config(node, change):
    """Edit a node's config by hand (in memory, written back atomically, 0600); return the original bytes."""
    with open(config_path(node), "rb") as handle:
        original = handle.read()
    config = yaml.safe_load(original)
    change(config["resources"][0]["providers"])
    write_atomically(config_path(node), yaml.safe_dump(config, sort_keys=False))
    return original


def restore_config(node, original):
    write_atomically(config_path(node), original.decode())


def one_secretbox_key_everywhere():
    try:
        providers = [read_providers(node) for node in NODES]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    if len({tuple(names) for names in providers}) != 1 or len(providers[0]) != 1:
        return None
    if not providers[0][0].startswith("secretbox:") or not all(readyz(ip) for ip in NODES.values()):
        return None
    return providers[0][0]


@pytest.fixture(scope="module")
def encrypted_lab(lab):
    """An encrypted lab: secretbox with one key on every node, restart mode.

    A lab that already is one (what test_node_down leaves) is used as it is;
    otherwise a fresh lab gets its Secrets and is encrypted."""
    if not one_secretbox_key_everywhere():
        reset_lab()
        create_secrets(SECRETS, NAMESPACE)
        result = run_playbook("kubecrypt.at_rest.enable", extra_vars=dict(FAST, kubecrypt_provider="secretbox"))
        assert result.returncode == 0, result.stdout[-4000:]
    key = one_secretbox_key_everywhere()
    assert key, "the lab is not encrypted with one secretbox key"
    report = labcheck.check("secretbox")
    assert report["ok"], report
    return key


def test_configs_no_phase_explains_are_refused_before_anything_changes(encrypted_lab):
    original = edit_config("cp3", lambda providers: providers.insert(0, {"identity": {}}))
    try:
        before = state()
        for playbook, expected in (("kubecrypt.at_rest.enable", "not consecutive phases"),
                                   ("kubecrypt.at_rest.rotate", "rotate needs every node to write")):
            result = run_playbook(playbook, extra_vars=dict(FAST, kubecrypt_provider="secretbox"))
            output = flat(result.stdout)
            show_refusal("%s with cp3's config edited by hand" % playbook, result.stdout)
            assert result.returncode != 0, result.stdout[-3000:]
            assert expected in output, result.stdout[-3000:]
            assert "on cp3, secrets written with identity" in output or "cp3: identity" in output, output[-3000:]
            assert "output has been hidden" not in output, "the refusal must say why"
            assert "Make sure every node serves the config it holds" not in output, \
                "the refusal must come before any node is rolled"
            assert_no_key_material(result.stdout)
            assert_unchanged(before, state())
    finally:
        restore_config("cp3", original)
    assert one_secretbox_key_everywhere() == encrypted_lab


def test_a_key_name_the_keystore_holds_with_other_material_is_refused(encrypted_lab):
    other_material = base64.b64encode(os.urandom(32)).decode()

    def same_name_other_bytes(providers):
        providers[0]["secretbox"]["keys"][0]["secret"] = other_material

    original = edit_config("cp2", same_name_other_bytes)
    try:
        before = state()
        result = run_playbook("kubecrypt.at_rest.rotate", extra_vars=FAST)
        output = flat(result.stdout)
        show_refusal("rotate with cp2's key replaced by other bytes", result.stdout)
        assert result.returncode != 0, result.stdout[-3000:]
        name = encrypted_lab.split(":", 1)[1]
        assert "Escrow every key found on the nodes" in output, result.stdout[-3000:]
        failure = output[output.index("fatal: [cp2"):]
        assert name in failure and "different material" in failure, failure[:2000]
        assert len(re.findall(r"sha256:[0-9a-f]{16}", failure)) >= 2, \
            "the refusal names both fingerprints: " + failure[:2000]
        assert "Make sure every node serves the config it holds" not in output
        assert_no_key_material(result.stdout, [other_material])
        assert_unchanged(before, state())
        assert [entry["name"] for entry in keystore()].count(name) == 1
    finally:
        restore_config("cp2", original)


def stray_copy(old_key):
    """(etcd key, raw value): a copy of a Secret renamed to ``strayy-*``, encrypted with ``old_key``, to be put
    below the Secret's namespace at ``stray/<name>``, an etcd key that no API object has."""
    kind, name = old_key.split(":", 1)
    assert kind == "secretbox"
    secret = next(entry["secret"] for entry in keystore() if entry["provider"] == kind and entry["name"] == name)
    box = SecretBox(base64.b64decode(secret))
    prefix = ("k8s:enc:%s:v1:%s:" % (kind, name)).encode()
    source = sorted(key for key in etcd_values() if re.match(r"^/registry/secrets/[^/]+/secret-\d{5}$", key))[0]
    namespace, original_name = source.split("/")[3:5]
    stray_name = original_name.replace("secret-", "strayy-")  # same length: the protobuf stays valid
    value = subprocess.run([lab_path("bin", "etcdctl"), "get", source, "--print-value-only"], env=etcdctl_env(),
                           stdout=subprocess.PIPE, check=True).stdout[:-1]
    assert value.startswith(prefix)
    stored_object = box.decrypt(value[len(prefix):])
    assert stored_object.startswith(b"k8s\x00") and original_name.encode() in stored_object
    renamed = stored_object.replace(original_name.encode(), stray_name.encode())
    return "/registry/secrets/%s/stray/%s" % (namespace, stray_name), prefix + bytes(box.encrypt(renamed))


def test_a_prune_is_refused_while_etcd_still_holds_data_under_the_old_key(encrypted_lab):
    old_key = encrypted_lab
    # An object under the current (soon old) key, written directly in etcd
    # where the rewrite through the API cannot reach it.
    stray, value = stray_copy(old_key)
    env = etcdctl_env()
    subprocess.run([lab_path("bin", "etcdctl"), "put", stray], input=value, env=env, stdout=subprocess.DEVNULL,
                   check=True)
    assert labcheck.etcd_secrets()[stray] == old_key
    keys_before = {entry["name"] for entry in keystore()}
    try:
        result = run_playbook("kubecrypt.at_rest.rotate", extra_vars=dict(FAST, kubecrypt_rewrite_max_rounds=1))
        assert result.returncode != 0, result.stdout[-4000:]
        output = flat(result.stdout)
        show_refusal("rotate with a stray value under the old key", result.stdout)
        assert "Nothing was pruned" in output and stray in output, result.stdout[-4000:]
        assert "stored with: {'%s': 1}" % old_key in output, result.stdout[-4000:]
        assert_no_key_material(result.stdout)
        new_keys = {entry["name"] for entry in keystore()} - keys_before
        assert len(new_keys) == 1, new_keys
        new_key = "secretbox:" + new_keys.pop()
        for node in NODES:
            # Promoted, rewritten, and the old key still there to read the stray value.
            assert read_providers(node) == [new_key, old_key], node
        report = labcheck.check(new_key)
        assert report["by_provider"] == {new_key: report["secrets_in_etcd"] - 1, old_key: 1}, report
    finally:
        subprocess.run([lab_path("bin", "etcdctl"), "del", stray], env=env, stdout=subprocess.DEVNULL, check=True)

    # Nothing left under the old key: the re-run finishes the same rotation (no new key) and prunes.
    result = run_playbook("kubecrypt.at_rest.rotate", extra_vars=FAST)
    assert result.returncode == 0, result.stdout[-4000:]
    assert {entry["name"] for entry in keystore()} - keys_before == {new_key.split(":", 1)[1]}
    for node in NODES:
        assert read_providers(node) == [new_key], node
    report = labcheck.check(new_key)
    assert report["ok"] and list(report["by_provider"]) == [new_key], report
