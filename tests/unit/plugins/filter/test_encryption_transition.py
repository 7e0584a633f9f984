# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The encryption_transition filter: wiring, errors, and use from a template."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.kubecrypt.at_rest.plugins.filter import encryption_transition as filter_module
from ansible_collections.kubecrypt.at_rest.plugins.filter.encryption_transition import (
    FilterModule,
    encryption_transition,
)

SECRET = base64.b64encode(b"\x02" * 32).decode()
TARGET = {"resources": ["secrets"], "provider": {"secretbox": {"keys": [{"name": "k2", "secret": SECRET}]}}, "prune": True}


def test_filter_is_registered():
    assert FilterModule().filters() == {"encryption_transition": encryption_transition}


def test_filter_returns_the_plan():
    result = encryption_transition({"cp1": None, "cp2": None}, TARGET)
    assert result["phase"] == "add_read"
    assert result["changed_nodes"] == ["cp1", "cp2"]
    assert result["write_provider"] == "identity"


def test_rewrite_verified_is_passed_on():
    promoted = [{"resources": ["secrets"], "providers": [TARGET["provider"], {"identity": {}}]}]
    observed = {"cp1": promoted, "cp2": promoted}
    assert encryption_transition(observed, TARGET)["phase"] == "rewrite"
    assert encryption_transition(observed, TARGET, rewrite_verified=True)["phase"] == "prune"
    assert encryption_transition(observed, TARGET, rewrite_verified=["identity"])["phase"] == "prune"


def test_refusal_becomes_a_filter_error_without_key_material():
    other = [{"resources": ["secrets"], "providers": [{"secretbox": {"keys": [{"name": "k2", "secret": SECRET}]}}]}]
    with pytest.raises(AnsibleFilterError) as error:
        encryption_transition({"cp1": None, "cp2": other}, TARGET)
    assert "encryption_transition: cp1 and cp2" in str(error.value)
    assert SECRET not in str(error.value)


def test_filter_runs_in_a_playbook(tmp_path):
    """End to end through ansible-core's templating, with inputs as Ansible passes them."""
    collections_root = os.path.abspath(os.path.join(os.path.dirname(filter_module.__file__), *[os.pardir] * 5))
    variables = tmp_path / "vars.json"
    variables.write_text(json.dumps({"observed": {"cp1": None, "cp2": None}, "target": TARGET}))
    playbook = tmp_path / "plan.yml"
    playbook.write_text(
        "- hosts: localhost\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - ansible.builtin.copy:\n"
        "        dest: '{{ result_path }}'\n"
        "        content: \"{{ observed | kubecrypt.at_rest.encryption_transition(target) | to_json }}\"\n"
        "      no_log: true\n")
    result_path = tmp_path / "plan.json"
    environment = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_root, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
                       ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    completed = subprocess.run(
        [sys.executable, "-m", "ansible", "playbook", "-c", "local", "-i", "localhost,", str(playbook),
         "-e", "@%s" % variables, "-e", "result_path=%s" % result_path, "-e", "ansible_python_interpreter=%s" % sys.executable],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert completed.returncode == 0, completed.stdout
    plan = json.loads(result_path.read_text())
    assert plan["phase"] == "add_read"
    assert plan["changed_nodes"] == ["cp1", "cp2"]
    assert plan["config"][0]["providers"][1] == TARGET["provider"]
