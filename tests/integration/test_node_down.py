"""A node whose apiserver goes away while the play waits on it.

rotate runs on an encrypted lab (secretbox, restart mode).  While the play
waits for cp2 to serve the promoted config, cp2's kube-apiserver.yaml is
moved out of the way (to a dot-file in the manifests directory, which the
kubelet ignores), as when an operator or a broken tool takes the static pod
away: the kubelet stops the apiserver and it does not come back.  The play
must stop with a message that names cp2 and says what was restored, leave cp3
untouched, keep every Secret readable; once the manifest is back, the re-run
must finish the same rotation (no new key).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import yaml

import labcheck
from labctl import NODES, ansible_env, create_secrets, lab_path, read_providers, readyz, reset_lab, run_playbook, wait_for

NAMESPACE = "node-down"
SECRETS = 200
FAST = {"kubecrypt_automatic_reload": False}
DOWN_NODE = "cp2"


def manifest_path(node, name="kube-apiserver.yaml"):
    return lab_path("nodes", node, "etc", "kubernetes", "manifests", name)


def keystore_names():
    with open(lab_path("keystore", "keys.yml")) as handle:
        return [entry["name"] for entry in yaml.safe_load(handle)["keys"]]


@pytest.fixture(scope="module")
def encrypted_lab(lab):
    reset_lab()
    create_secrets(SECRETS, NAMESPACE)
    result = run_playbook("kubecrypt.at_rest.enable", extra_vars=dict(FAST, kubecrypt_provider="secretbox"))
    assert result.returncode == 0, result.stdout[-4000:]
    old_key = read_providers("cp1")
    assert len(old_key) == 1
    return old_key[0]


def run_playbook_and_act(playbook, extra_vars, trigger, action, timeout=1800):
    """Run ``playbook`` against the lab; call ``action()`` once when a line of
    its output matches ``trigger`` (after the lines before it matched what
    ``trigger`` needs).  Return (returncode, output)."""
    argv = [os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "ansible-playbook"),
            "-i", lab_path("inventory.yml"), playbook, "-e", json.dumps(extra_vars)]
    process = subprocess.Popen(argv, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    fired = threading.Event()
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if not fired.is_set() and trigger(lines):
                fired.set()
                action()
        returncode = process.wait()
    finally:
        timer.cancel()
    assert fired.is_set(), "the trigger never matched:\n" + "".join(lines[-80:])
    return returncode, "".join(lines)


def waiting_on_promoted_node(lines):
    """The play has started to wait for DOWN_NODE to serve the promoted config."""
    return lines[-1].startswith("TASK [") and ("Wait until the config is served by %s]" % DOWN_NODE) in lines[-1] \
        and any(re.search(r'"?phase"?: "?promote', line) for line in lines)


def test_a_node_that_goes_down_stops_the_play_and_the_rerun_finishes(encrypted_lab):
    old_key = encrypted_lab
    keys_before = set(keystore_names())
    away = manifest_path(DOWN_NODE, ".kube-apiserver.yaml.taken-away")

    def take_the_manifest_away():
        os.rename(manifest_path(DOWN_NODE), away)

    started = time.monotonic()
    returncode, output = run_playbook_and_act(
        "kubecrypt.at_rest.rotate", dict(FAST, kubecrypt_wait_timeout=45), waiting_on_promoted_node,
        take_the_manifest_away)
    failed_after = time.monotonic() - started
    try:
        assert returncode != 0, output[-4000:]
        flat = " ".join(output.split())  # long messages may be folded over lines
        message = re.search(r"%s did not serve its new config: .*" % DOWN_NODE, flat)
        assert message, output[-4000:]
        message = message.group(0)
        print("\nthe play stopped with: %s" % message[:700])
        assert "No later node was touched" in message, message
        assert "its manifest could not be" in message and "it is NOT serving yet" in message, message
        assert not readyz(NODES[DOWN_NODE])

        new_keys = set(keystore_names()) - keys_before
        assert len(new_keys) == 1, new_keys
        new_key = "secretbox:" + new_keys.pop()
        # cp1 was promoted; cp2 got back the config it had before the promote; cp3 was not touched.
        assert read_providers("cp1") == [new_key, old_key]
        assert read_providers("cp2") == [old_key, new_key]
        assert read_providers("cp3") == [old_key, new_key]
        # Every Secret stays readable through the apiservers that run.
        for node in ("cp1", "cp3"):
            served = labcheck.apiserver_secrets(NODES[node], NAMESPACE)
            assert len(served) == SECRETS, node
    finally:
        os.rename(away, manifest_path(DOWN_NODE))

    wait_for(lambda: readyz(NODES[DOWN_NODE]), timeout=180, what="%s to serve again" % DOWN_NODE)
    started = time.monotonic()
    result = run_playbook("kubecrypt.at_rest.rotate", extra_vars=FAST)
    rerun = time.monotonic() - started
    print("\nnode down: the failing run stopped after %.0fs; the re-run finished in %.0fs" % (failed_after, rerun))
    assert result.returncode == 0, result.stdout[-4000:]
    assert set(keystore_names()) - keys_before == {new_key.split(":", 1)[1]}, "the re-run resumes the same key"
    for node in NODES:
        assert read_providers(node) == [new_key], node
    report = labcheck.check(new_key, NAMESPACE)
    assert report["ok"] and list(report["by_provider"]) == [new_key], report
