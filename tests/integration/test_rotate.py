"""rotate on the lab, with 1,000 Secrets, in both ways of picking up a config.

The molecule scenario ``rotate`` runs step by step (destroy, create with
1,000 plaintext Secrets, prepare: enable, converge: rotate, verify), the
rotate with rolling restarts (KUBECRYPT_AUTOMATIC_RELOAD=false); then the
same lab is rotated once more with --encryption-provider-config-automatic-reload,
where every phase after the first (which adds the flag) must be a reload, not
a restart, and the scenario's verify runs again.  Both wall times are
printed: the restart one is the molecule converge step (the rotate playbook
plus molecule's start-up), the reload one is the playbook alone.
"""

from __future__ import annotations

import re
import time

import pytest

from labctl import NODES, lab_path, read_providers, run_molecule, run_playbook

pytestmark = pytest.mark.usefixtures("plaintext_lab_afterwards")

SECRETS = 1000
DURATIONS = {}


@pytest.fixture(scope="module")
def molecule(tmp_path_factory):
    """Run one molecule step of the scenario rotate, its state in a directory of this module's own."""
    state = tmp_path_factory.mktemp("molecule-rotate")

    def step(name):
        return run_molecule(name, "rotate", state)

    return step


def manifest(node):
    with open(lab_path("nodes", node, "etc", "kubernetes", "manifests", "kube-apiserver.yaml")) as handle:
        return handle.read()


def test_molecule_scenario_rotate_with_rolling_restarts(molecule):
    for step in ("destroy", "create", "prepare"):
        molecule(step)
    before = read_providers("cp1")
    output, seconds = molecule("converge")
    DURATIONS["restart"] = seconds
    print("\nrotate of %d Secrets with rolling restarts (molecule converge): %.0fs" % (SECRETS, seconds))
    assert "failed=0" in output
    after = read_providers("cp1")
    assert len(before) == len(after) == 1 and before != after
    molecule("verify")
    for node in NODES:
        text = manifest(node)
        assert "encryption-provider-config-automatic-reload" not in text
        assert "at-rest.kubecrypt.io/encryption-config-sha256" in text


def test_rotate_with_automatic_reload(molecule):
    before = read_providers("cp1")
    assert len(before) == 1, "runs after the molecule scenario, on its rotated lab"
    started = time.monotonic()
    result = run_playbook("kubecrypt.at_rest.rotate", extra_vars={"kubecrypt_automatic_reload": True})
    seconds = time.monotonic() - started
    DURATIONS["reload"] = seconds
    print("\nrotate of %d Secrets with automatic reload (playbook): %.0fs" % (SECRETS, seconds))
    assert result.returncode == 0, result.stdout[-4000:]
    after = read_providers("cp1")
    assert len(after) == 1 and after != before

    # The first phase changes the manifests (the reload flag in, the hash
    # annotation out): one restart per node.  Promote and prune are reloads.
    rolls = re.findall(r"(cp\d) serves (\S+) \((restarted|no restart),", result.stdout)
    restarted = [node for node, _provider, how in rolls if how == "restarted"]
    assert sorted(restarted) == sorted(NODES), rolls
    phases = re.findall(r'"?phase"?: "?(\w+)', result.stdout)
    assert [phase for phase in phases if phase != "done"] == ["add_read", "promote", "rewrite", "prune"], phases
    reloads = [node for node, provider, how in rolls if how == "no restart" and provider == after[0]]
    assert len(reloads) >= 2 * len(NODES), rolls
    for node in NODES:
        text = manifest(node)
        assert "--encryption-provider-config-automatic-reload=true" in text
        assert "at-rest.kubecrypt.io/encryption-config-sha256" not in text
    molecule("verify")
    if "restart" in DURATIONS:
        print("rotate of %d Secrets: %.0fs with rolling restarts, %.0fs with automatic reload"
              % (SECRETS, DURATIONS["restart"], DURATIONS["reload"]))
