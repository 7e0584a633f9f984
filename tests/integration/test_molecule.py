"""The molecule scenarios, each ``molecule test`` on the lab as the platform.

- ``enable``: plaintext to secretbox, a second run changes nothing.
- ``kms``: plaintext to KMS v2 through the lab's plugin.
- ``rotate``: enable (prepare), rotate (converge); no idempotence step, every
  run of rotate is a new rotation by design.
- ``switch_provider``: aescbc, then secretbox (prepare), then aesgcm (converge).
- ``disable``: enable (prepare), disable with kubecrypt_remove_config_flag.

All in restart mode (KUBECRYPT_AUTOMATIC_RELOAD=false), minutes faster than
the apiservers' reload poll; reload mode is tested end to end by the long
tests (test_enable, test_rotate, test_traffic).  Each scenario is left
standing (``--destroy never``) so that its keystore can be held against its
output: no key may appear there.  Each scenario starts on a fresh lab
(``molecule destroy`` first: ``--destroy never`` skips the sequence's first
destroy as well); ``plaintext_lab_afterwards`` leaves a fresh lab for what
comes next.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml

from labctl import assert_molecule_steps, lab_path, run_molecule

pytestmark = pytest.mark.usefixtures("plaintext_lab_afterwards")

IDEMPOTENT = ("create", "converge", "idempotence", "verify")
PREPARED = ("create", "prepare", "converge", "idempotence", "verify")

# scenario: (steps molecule must report as successful, what its output must show)
SCENARIOS = {
    "enable": (IDEMPOTENT, [r"generated secretbox:secretbox-\d{8}t\d{6}z"]),
    "kms": (IDEMPOTENT, [r"cp\d serves kms:lab-kms"]),
    "rotate": (("create", "prepare", "converge", "verify"),
               [r"generated secretbox:secretbox-\d{8}t\d{6}z"]),
    "switch_provider": (PREPARED, [r"generated %s:%s-\d{8}t\d{6}z" % (provider, provider)
                                   for provider in ("aescbc", "secretbox", "aesgcm")]),
    "disable": (PREPARED, [r"cp\d runs without an encryption config \(restarted"]),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_molecule_scenario(scenario, tmp_path):
    steps, expected = SCENARIOS[scenario]
    # --destroy never skips the destroy that starts the test sequence too:
    # the scenario before this one is destroyed here.
    run_molecule("destroy", scenario, tmp_path / "molecule")
    output, _seconds = run_molecule("test", scenario, tmp_path / "molecule", "--destroy", "never")
    assert_molecule_steps(scenario, output, steps)
    for pattern in expected:
        assert re.search(pattern, output), "no %r in the output of the %s scenario" % (pattern, scenario)
    assert_no_key_material(scenario, output)


def assert_no_key_material(scenario, output):
    """No key of the keystore the scenario filled appears in its output (the keys are never printed)."""
    path = lab_path("keystore", "keys.yml")
    if scenario == "kms" and not os.path.exists(path):
        return  # the KMS plugin holds the key-encryption keys; the controller escrows none
    with open(path) as handle:
        keys = yaml.safe_load(handle)["keys"]
    assert keys, "the %s scenario escrowed no key" % scenario
    for entry in keys:
        assert entry["secret"] not in output, "key material of %s in the output" % entry["name"]
