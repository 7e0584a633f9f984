"""etcd_snapshot streams a complete, verified, private snapshot from the lab's etcd."""

from __future__ import annotations

import hashlib
import os
import stat
import textwrap

import pytest

from labctl import run_playbook

pytestmark = pytest.mark.usefixtures("lab")


def _playbook(tmp_path, dest, extra=""):
    path = tmp_path / "snapshot.yml"
    path.write_text(textwrap.dedent("""\
        - hosts: cp2
          gather_facts: false
          tasks:
            - name: Snapshot etcd
              kubecrypt.at_rest.etcd_snapshot:
                etcd_endpoints: %s
                etcd_ca_cert: "{{ kubecrypt_etcd_ca }}"
                etcd_cert: "{{ kubecrypt_etcd_cert }}"
                etcd_key: "{{ kubecrypt_etcd_key }}"
                path: %s
        """) % (extra or '["{{ kubecrypt_etcd_endpoint }}"]', dest))
    return str(path)


def test_snapshot_is_complete_verified_and_private(tmp_path):
    dest = tmp_path / "snapshots" / "etcd.db"
    result = run_playbook(_playbook(tmp_path, dest))
    assert result.returncode == 0, result.stdout
    data = dest.read_bytes()
    # What etcdctl snapshot save writes: the bolt database, then its sha256.
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    assert data[16:20] == b"\xed\xda\x0c\xed", "not a bolt database (magic number)"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(dest.parent).st_mode) == 0o700
    assert os.listdir(dest.parent) == ["etcd.db"], "a temp file was left behind"


def test_snapshot_fails_over_to_a_member_that_answers_and_reports_dead_ones(tmp_path):
    dest = tmp_path / "etcd.db"
    endpoints = '["https://127.0.0.1:1", "https://127.0.0.13:2379"]'
    result = run_playbook(_playbook(tmp_path, dest, endpoints), "-v")
    assert result.returncode == 0, result.stdout
    assert "127.0.0.13:2379" in result.stdout
    dead = tmp_path / "dead.db"
    result = run_playbook(_playbook(tmp_path, dead, '["https://127.0.0.1:1"]'))
    assert result.returncode != 0
    assert "no snapshot was saved" in result.stdout and "127.0.0.1:1" in result.stdout
    assert not dead.exists()
