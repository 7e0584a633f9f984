"""A lab that cannot start says which component failed and shows its log.

It uses a second lab on an address block of its own, so the shared lab is not
touched: cp2's apiserver port is taken before the lab starts, as another
process on a real node might take it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from labctl import REPO

NET = "127.0.7"


def _lab(command, lab_dir, timeout="25"):
    env = dict(os.environ, KUBECRYPT_LAB_NET=NET, KUBECRYPT_LAB_DIR=str(lab_dir),
               KUBECRYPT_LAB_READY_TIMEOUT=timeout)
    return subprocess.run([sys.executable, os.path.join(REPO, "lab", "lab.py"), command], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, check=False)


def test_failed_start_names_the_component_and_shows_its_log(tmp_path):
    lab_dir = tmp_path / "lab"
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((NET + ".12", 6443))
    squatter.listen(1)
    try:
        result = _lab("up", lab_dir)
    finally:
        squatter.close()
        down = _lab("down", lab_dir)
    assert result.returncode != 0, result.stdout
    assert "FAILED: kube-apiserver cp2 did not become ready" in result.stdout, result.stdout
    assert "address already in use" in result.stdout, "the tail of cp2's apiserver log should say why"
    assert down.returncode == 0, down.stdout
    assert not lab_dir.exists()
