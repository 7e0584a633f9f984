"""Every module that touches key material, run by ansible-playbook at -vvv with
--diff, in normal and check mode, prints none of it: not the base64 secret,
not its raw bytes, not a fragment.  Needs no lab: the files are local."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from labctl import ansible_env

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(os.path.dirname(HERE), "unit", "plugins", "module_utils", "fixtures", "kube-apiserver.yaml")

HAND_MADE = base64.b64encode(b"hand-made-key-material-32-bytes!").decode()

PLAYBOOK = textwrap.dedent("""\
    - hosts: localhost
      gather_facts: false
      vars:
        keystore: "{{ workdir }}/keystore/keys.yml"
        config: "{{ workdir }}/enc/config.yaml"
      tasks:
        - name: Generate a key
          kubecrypt.at_rest.encryption_key:
            keystore: "{{ keystore }}"
            provider: secretbox
            name: generated
            return_secret: true
          register: generated
          no_log: true

        - name: Generate an aescbc key without returning it
          kubecrypt.at_rest.encryption_key:
            keystore: "{{ keystore }}"
            provider: aescbc
            name: cbc

        - name: Write a config with both keys and a hand-made one
          kubecrypt.at_rest.encryption_config:
            path: "{{ config }}"
            resources:
              - resources: [secrets]
                providers:
                  - secretbox:
                      keys:
                        - name: generated
                          secret: "{{ generated.secret }}"
                        - name: hand-made
                          secret: "{{ hand_made }}"
                  - identity: {}

        - name: Change it (diff shows fingerprints only)
          kubecrypt.at_rest.encryption_config:
            path: "{{ config }}"
            resources:
              - resources: [secrets]
                providers:
                  - secretbox:
                      keys:
                        - name: hand-made
                          secret: "{{ hand_made }}"

        - name: Refuse a bad key (the error names the key, not its bytes)
          kubecrypt.at_rest.encryption_config:
            path: "{{ config }}"
            resources:
              - resources: [secrets]
                providers:
                  - aescbc:
                      keys:
                        - name: too-short
                          secret: "{{ hand_made[:20] }}"
          ignore_errors: true

        - name: Read the config
          kubecrypt.at_rest.encryption_config_info:
            path: "{{ config }}"

        - name: Read it with secrets, as the role does
          kubecrypt.at_rest.encryption_config_info:
            path: "{{ config }}"
            return_secrets: true
          register: with_secrets
          no_log: true

        - name: Adopt the node's keys into the keystore
          kubecrypt.at_rest.encryption_key:
            keystore: "{{ keystore }}"
            import_resources: "{{ with_secrets.resources }}"

        - name: Point a manifest at the config
          kubecrypt.at_rest.apiserver_manifest:
            path: "{{ workdir }}/manifests/kube-apiserver.yaml"
            encryption_config: "{{ config }}"
            backup_dir: "{{ workdir }}/backups"
    """)


def _needles(secret_b64):
    raw = base64.b64decode(secret_b64)
    return [secret_b64, secret_b64[:12], secret_b64[-12:], raw.hex()[:16], repr(raw)[2:14]]


@pytest.mark.parametrize("check_mode", [False, True], ids=["apply", "check"])
def test_modules_at_vvv_print_no_key_material(tmp_path, check_mode):
    (tmp_path / "manifests").mkdir()
    (tmp_path / "enc").mkdir()
    with open(FIXTURE) as source:
        (tmp_path / "manifests" / "kube-apiserver.yaml").write_text(source.read())
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    argv = [os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "ansible-playbook"), "-i", "localhost,",
            "-c", "local", "-vvv", "--diff", str(playbook),
            "-e", "workdir=%s" % tmp_path, "-e", "hand_made=%s" % HAND_MADE,
            "-e", "ansible_python_interpreter=%s" % sys.executable]
    if check_mode:
        argv.append("--check")
    result = subprocess.run(argv, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=600, check=False)
    assert "failed=0" in result.stdout, result.stdout[-3000:]
    assert "too-short" in result.stdout, "the refusal should name the key"
    keystore = tmp_path / "keystore" / "keys.yml"
    secrets = [HAND_MADE]
    if not check_mode:
        entries = yaml.safe_load(keystore.read_text())["keys"]
        # generated, cbc, and hand-made adopted from the node's config
        assert sorted(entry["name"] for entry in entries) == ["cbc", "generated", "hand-made"]
        secrets += [entry["secret"] for entry in entries]
    for secret in secrets:
        for needle in _needles(secret):
            assert needle not in result.stdout, "key material (%d chars) found in the -vvv output" % len(needle)
    if not check_mode:
        assert "sha256:" in result.stdout, "the diff should show fingerprints"
