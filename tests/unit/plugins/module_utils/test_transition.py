# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Example-based tests of the transition planner: each phase, lagging nodes and refusals."""

from __future__ import annotations

import base64
import copy
import hashlib

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.transition import (
    PHASES,
    TransitionError,
    _fingerprint,
    plan_transition,
)

NODES = ("cp1", "cp2", "cp3")


def _secret(seed, size=32):
    return base64.b64encode(bytes([seed]) * size).decode("ascii")


def _key(name, seed, size=32):
    return {"name": name, "secret": _secret(seed, size)}


def _aescbc(*keys):
    return {"aescbc": {"keys": list(keys)}}


def _secretbox(*keys):
    return {"secretbox": {"keys": list(keys)}}


IDENTITY = {"identity": {}}
KMS = {"kms": {"apiVersion": "v2", "name": "vault", "endpoint": "unix:///var/run/kms/vault.sock", "timeout": "3s"}}
K1 = _key("k1", 1)
K2 = _key("k2", 2)
K3 = _key("k3", 3)
CONFIGMAPS = {"resources": ["configmaps"], "providers": [{"aesgcm": {"keys": [_key("cm1", 9)]}}, IDENTITY]}


def _group(*providers, resources=("secrets",)):
    return {"resources": list(resources), "providers": list(providers)}


def _target(provider, prune=True, resources=("secrets",)):
    return {"resources": list(resources), "provider": provider, "prune": prune}


def _everywhere(config, nodes=NODES):
    return dict((node, copy.deepcopy(config)) for node in nodes)


def _walk(config, target, nodes=NODES):
    """Run a whole transition with every node following each step; return the (phase, config) sequence."""
    observed = _everywhere(config, nodes)
    verified = False
    steps = []
    for dummy in range(10):
        result = plan_transition(observed, target, rewrite_verified=verified)
        steps.append((result["phase"], result["config"]))
        if result["phase"] == "done":
            return steps
        if result["phase"] == "rewrite":
            verified = True
        for node in result["changed_nodes"]:
            observed[node] = result["config"]
    raise AssertionError("no done after 10 steps: %r" % steps)


def test_fingerprint_matches_the_collection_definition():
    raw = bytes(range(32))
    expected = "sha256:" + hashlib.sha256(b"kubecrypt.at_rest key fingerprint\x00" + raw).hexdigest()[:16]
    assert _fingerprint(base64.b64encode(raw).decode()) == expected
    assert len(expected) == len("sha256:") + 16


def test_enable_from_no_config():
    steps = _walk(None, _target(_secretbox(K2)))
    assert [phase for phase, dummy in steps] == ["add_read", "promote", "rewrite", "prune", "done"]
    assert steps[0][1] == [_group(IDENTITY, _secretbox(K2))]
    assert steps[1][1] == [_group(_secretbox(K2), IDENTITY)]
    assert steps[2][1] == steps[1][1]
    assert steps[3][1] == [_group(_secretbox(K2))]
    assert steps[4][1] == steps[3][1]


def test_rotation_keeps_one_element_with_the_write_key_first():
    steps = _walk([_group(_aescbc(K1), IDENTITY)], _target(_aescbc(K2)))
    assert [phase for phase, dummy in steps] == ["add_read", "promote", "rewrite", "prune", "done"]
    assert steps[0][1] == [_group(_aescbc(K1, K2), IDENTITY)]
    assert steps[1][1] == [_group(_aescbc(K2, K1), IDENTITY)]
    assert steps[3][1] == [_group(_aescbc(K2))]


def test_rotation_with_an_older_read_key_inserts_directly_after_the_write_key():
    steps = _walk([_group(_aescbc(K1, K3))], _target(_aescbc(K2)))
    assert steps[0][1] == [_group(_aescbc(K1, K2, K3))]
    assert steps[1][1] == [_group(_aescbc(K2, K1, K3))]
    assert steps[3][1] == [_group(_aescbc(K2))]


def test_switch_to_another_type_gets_its_own_element_after_the_write_provider():
    steps = _walk([_group(_aescbc(K1), IDENTITY), CONFIGMAPS], _target(_secretbox(K2)))
    assert steps[0][1] == [_group(_aescbc(K1), _secretbox(K2), IDENTITY), CONFIGMAPS]
    assert steps[1][1] == [_group(_secretbox(K2), _aescbc(K1), IDENTITY), CONFIGMAPS]
    assert steps[3][1] == [_group(_secretbox(K2)), CONFIGMAPS]


def test_switch_to_kms_v2():
    steps = _walk([_group(_secretbox(K2))], _target(KMS))
    assert steps[0][1] == [_group(_secretbox(K2), KMS)]
    assert steps[1][1] == [_group(KMS, _secretbox(K2))]
    assert steps[3][1] == [_group(KMS)]


def test_disable_goes_back_to_identity():
    steps = _walk([_group(_aescbc(K1, K3))], _target(IDENTITY))
    assert [phase for phase, dummy in steps] == ["add_read", "promote", "rewrite", "prune", "done"]
    assert steps[0][1] == [_group(_aescbc(K1, K3), IDENTITY)]
    assert steps[1][1] == [_group(IDENTITY, _aescbc(K1, K3))]
    assert steps[3][1] == [_group(IDENTITY)]


def test_disable_without_any_config_is_done():
    result = plan_transition(_everywhere(None), _target(IDENTITY))
    assert result["phase"] == "done"
    assert result["config"] == []
    assert result["changed_nodes"] == []
    assert result["write_provider"] == "identity"
    assert result["read_providers"] == ["identity"]


def test_new_group_is_placed_first_and_other_groups_are_kept():
    config = [CONFIGMAPS]
    result = plan_transition(_everywhere(config), _target(_secretbox(K2)))
    assert result["config"] == [_group(IDENTITY, _secretbox(K2)), CONFIGMAPS]


def test_target_already_readable_is_promoted_directly():
    result = plan_transition(_everywhere([_group(_aescbc(K1), IDENTITY, _secretbox(K2))]), _target(_secretbox(K2)))
    assert result["phase"] == "promote"
    assert result["config"] == [_group(_secretbox(K2), _aescbc(K1), IDENTITY)]


def test_promote_moves_the_whole_element_with_the_target_key_first():
    config = [_group(_secretbox(K3), _aescbc(K1, K2))]
    result = plan_transition(_everywhere(config), _target(_aescbc(K2)))
    assert result["phase"] == "promote"
    assert result["config"] == [_group(_aescbc(K2, K1), _secretbox(K3))]


def test_rewrite_reports_stale_providers_until_verified():
    config = [_group(_secretbox(K2), _aescbc(K1), IDENTITY)]
    result = plan_transition(_everywhere(config), _target(_secretbox(K2)))
    assert result["phase"] == "rewrite"
    assert result["config"] == config
    assert result["changed_nodes"] == []
    assert result["stale_providers"] == ["aescbc:k1", "identity"]
    assert result["removable"] == []


def test_partial_verification_keeps_rewriting():
    config = [_group(_secretbox(K2), _aescbc(K1), IDENTITY)]
    result = plan_transition(_everywhere(config), _target(_secretbox(K2)), rewrite_verified=["identity"])
    assert result["phase"] == "rewrite"
    assert result["stale_providers"] == ["aescbc:k1"]
    assert result["removable"] == ["identity"]


def test_verification_as_a_list_prunes():
    config = [_group(_secretbox(K2), _aescbc(K1), IDENTITY)]
    result = plan_transition(_everywhere(config), _target(_secretbox(K2)), rewrite_verified=["identity", "aescbc:k1"])
    assert result["phase"] == "prune"
    assert result["config"] == [_group(_secretbox(K2))]
    assert result["stale_providers"] == []
    assert result["removable"] == ["aescbc:k1", "identity"]


def test_without_prune_a_verified_rewrite_is_done():
    config = [_group(_secretbox(K2), _aescbc(K1), IDENTITY)]
    result = plan_transition(_everywhere(config), _target(_secretbox(K2), prune=False), rewrite_verified=True)
    assert result["phase"] == "done"
    assert result["config"] == config
    assert result["removable"] == ["aescbc:k1", "identity"]
    assert "prune is false" in result["explanation"]


def test_verified_early_never_skips_add_read_or_promote():
    steps = []
    observed = _everywhere([_group(_aescbc(K1))])
    for dummy in range(5):
        result = plan_transition(observed, _target(_aescbc(K2)), rewrite_verified=True)
        steps.append(result["phase"])
        if result["phase"] == "done":
            break
        observed = _everywhere(result["config"])
    assert steps == ["add_read", "promote", "prune", "done"]


def test_add_read_lag_is_finished_on_the_laggers():
    observed = {"cp1": [_group(_aescbc(K1, K2))], "cp2": [_group(_aescbc(K1))], "cp3": [_group(_aescbc(K1, K2))]}
    result = plan_transition(observed, _target(_aescbc(K2)))
    assert result["phase"] == "add_read"
    assert result["config"] == [_group(_aescbc(K1, K2))]
    assert result["changed_nodes"] == ["cp2"]
    assert "cp2" in result["explanation"]


def test_promote_lag_is_finished_on_the_laggers_in_either_order():
    behind, ahead = [_group(_aescbc(K1, K2))], [_group(_aescbc(K2, K1))]
    for observed in ({"cp1": behind, "cp2": ahead, "cp3": ahead}, {"cp1": ahead, "cp2": behind, "cp3": behind}):
        result = plan_transition(observed, _target(_aescbc(K2)))
        assert result["phase"] == "promote"
        assert result["config"] == ahead
        assert result["changed_nodes"] == sorted(node for node, config in observed.items() if config is behind)


def test_enable_lag_from_no_config():
    observed = {"cp1": None, "cp2": [_group(IDENTITY, _secretbox(K2))], "cp3": None}
    result = plan_transition(observed, _target(_secretbox(K2)))
    assert result["phase"] == "add_read"
    assert result["changed_nodes"] == ["cp1", "cp3"]


def test_prune_lag_needs_the_rewrite_still_verified():
    observed = {"cp1": [_group(_aescbc(K2))], "cp2": [_group(_aescbc(K2, K1))], "cp3": [_group(_aescbc(K2))]}
    result = plan_transition(observed, _target(_aescbc(K2)), rewrite_verified=True)
    assert result["phase"] == "prune"
    assert result["changed_nodes"] == ["cp2"]
    assert result["removable"] == ["aescbc:k1"]
    with pytest.raises(TransitionError, match="already pruned"):
        plan_transition(observed, _target(_aescbc(K2)))


def test_non_consecutive_configs_are_refused():
    # cp1 has not even added k2, cp2 already writes with it.
    observed = {"cp1": [_group(_aescbc(K1))], "cp2": [_group(_aescbc(K2, K1))], "cp3": [_group(_aescbc(K2, K1))]}
    with pytest.raises(TransitionError) as error:
        plan_transition(observed, _target(_aescbc(K2)))
    message = str(error.value)
    assert "cp1" in message and "cp2, cp3" in message
    assert "cp1 cannot read aescbc:k2" in message
    assert K1["secret"] not in message and K2["secret"] not in message
    assert _fingerprint(K2["secret"]) in message


def test_three_distinct_configs_are_refused():
    observed = {"cp1": [_group(_aescbc(K1))], "cp2": [_group(_aescbc(K1, K2))], "cp3": [_group(_aescbc(K2, K1))]}
    with pytest.raises(TransitionError, match="3 different encryption configurations"):
        plan_transition(observed, _target(_aescbc(K2)))


def test_a_previous_transition_to_another_target_is_refused():
    observed = {"cp1": [_group(_aescbc(K1))], "cp2": [_group(_aescbc(K1, K3))], "cp3": [_group(_aescbc(K1))]}
    with pytest.raises(TransitionError, match="not consecutive"):
        plan_transition(observed, _target(_aescbc(K2)))


def test_other_groups_that_differ_are_refused():
    observed = {"cp1": [_group(_aescbc(K1)), CONFIGMAPS], "cp2": [_group(_aescbc(K1))], "cp3": [_group(_aescbc(K1))]}
    with pytest.raises(TransitionError, match="other resource groups differ"):
        plan_transition(observed, _target(_aescbc(K2)))


def test_same_key_name_with_other_material_on_a_node_is_refused():
    observed = _everywhere([_group(_aescbc(K1))])
    observed["cp3"] = [_group(_aescbc(_key("k1", 7)))]
    with pytest.raises(TransitionError) as error:
        plan_transition(observed, _target(_aescbc(K2)))
    message = str(error.value)
    assert "aescbc:k1 stands for different keys" in message
    assert _fingerprint(K1["secret"]) in message and _fingerprint(_secret(7)) in message
    assert "cp3" in message and K1["secret"] not in message


def test_target_key_conflicting_with_an_existing_key_is_refused():
    with pytest.raises(TransitionError, match="aescbc:k1 stands for different keys.*the target"):
        plan_transition(_everywhere([_group(_aescbc(K1))]), _target(_aescbc(_key("k1", 8))))


def test_kms_with_the_same_name_and_other_settings_is_refused():
    other = copy.deepcopy(KMS)
    other["kms"]["endpoint"] = "unix:///var/run/kms/other.sock"
    with pytest.raises(TransitionError, match="kms:vault stands for different keys"):
        plan_transition(_everywhere([_group(KMS)]), _target(other))


def test_fingerprints_and_secrets_describe_the_same_keys():
    stripped = [_group(_aescbc({"name": "k1", "fingerprint": _fingerprint(K1["secret"])}))]
    observed = {"cp1": stripped, "cp2": [_group(_aescbc(K1))], "cp3": stripped}
    result = plan_transition(observed, _target(_aescbc(K2)))
    assert result["phase"] == "add_read"
    assert result["changed_nodes"] == ["cp1", "cp2", "cp3"]
    # A node already at the next step, described with fingerprints only, is recognized too.
    observed["cp2"] = [_group(_aescbc({"name": "k1", "fingerprint": _fingerprint(K1["secret"])},
                                      {"name": "k2", "fingerprint": _fingerprint(K2["secret"])}))]
    result = plan_transition(observed, _target(_aescbc(K2)))
    assert result["phase"] == "add_read"
    assert result["changed_nodes"] == ["cp1", "cp3"]


@pytest.mark.parametrize("groups, message", [
    ([_group(_aescbc(K1), resources=("secrets", "configmaps"))], "covers secrets"),
    ([_group(_aescbc(K1), resources=("*.",))], "covers \\*\\."),
    ([_group(_aescbc(K1), resources=("*.*",)), _group(_aescbc(K1))], "covers \\*\\.\\*"),
])
def test_split_or_masked_groups_are_refused(groups, message):
    with pytest.raises(TransitionError, match=message):
        plan_transition(_everywhere(groups), _target(_aescbc(K2)))


def test_groups_after_the_target_group_are_masked_and_kept():
    catch_all = _group(IDENTITY, resources=("*.*",))
    result = plan_transition(_everywhere([_group(_aescbc(K1)), catch_all]), _target(_aescbc(K2)))
    assert result["config"] == [_group(_aescbc(K1, K2)), catch_all]


def test_target_group_matches_resources_as_a_set():
    config = [_group(_aescbc(K1), resources=("configmaps", "secrets"))]
    result = plan_transition(_everywhere(config), _target(_aescbc(K2), resources=("secrets", "configmaps")))
    assert result["config"] == [_group(_aescbc(K1, K2), resources=("configmaps", "secrets"))]


@pytest.mark.parametrize("target, message", [
    (_target(_aescbc(K1, K2)), "exactly one key"),
    (_target({"aescbc": {"keys": []}}), "no keys"),
    (_target(_aescbc(_key("a:b", 1))), "contains ':'"),
    (_target(_secretbox(_key("k9", 9, size=16))), "16 bytes long"),
    (_target(_aescbc({"name": "k9", "secret": "not base64!"})), "not valid base64"),
    (_target({"kms": {"name": "vault", "endpoint": "unix:///x.sock"}}), "apiVersion: v2"),
    (_target({"kms": {"apiVersion": "v2", "name": "vault", "endpoint": "unix:///x.sock", "cachesize": 10}}), "cachesize"),
    (_target({"kms": {"apiVersion": "v2", "name": "vault", "endpoint": "tcp://x"}}), "unix://"),
    (_target({"rot13": {}}), "exactly one of"),
    ({"resources": [], "provider": IDENTITY}, "non-empty list"),
    ({"resources": ["secrets"], "providers": [IDENTITY]}, "unknown fields providers"),
    ({"resources": ["secrets"], "provider": IDENTITY, "prune": "yes"}, "boolean"),
])
def test_invalid_targets_are_refused(target, message):
    with pytest.raises(TransitionError, match=message):
        plan_transition(_everywhere(None), target)


@pytest.mark.parametrize("observed, verified, message", [
    ({}, False, "non-empty mapping"),
    ({"cp1": {"resources": []}}, False, "resources list or null"),
    ({"cp1": [{"resources": ["secrets"], "providers": []}]}, False, "no providers"),
    ({"cp1": [_group(_aescbc(K1, K1))]}, False, "appears twice"),
    ({"cp1": [_group(_aescbc({"name": "k1"}))]}, False, "neither a secret nor a fingerprint"),
    ({"cp1": None}, "yes", "rewrite_verified"),
])
def test_invalid_observations_are_refused(observed, verified, message):
    with pytest.raises(TransitionError, match=message):
        plan_transition(observed, _target(_aescbc(K2)), rewrite_verified=verified)


def test_inputs_are_not_modified_and_outputs_do_not_alias_them():
    observed = _everywhere([_group(_aescbc(K1), IDENTITY), CONFIGMAPS])
    target = _target(_aescbc(K2))
    before = copy.deepcopy((observed, target))
    result = plan_transition(observed, target)
    assert (observed, target) == before
    result["config"][0]["providers"][0]["aescbc"]["keys"].append("x")
    assert (observed, target) == before


def test_node_order_does_not_change_the_result():
    ahead = [_group(_aescbc(K2, K1))]
    behind = [_group(_aescbc(K1, K2))]
    first = plan_transition({"b": ahead, "a": behind, "c": ahead}, _target(_aescbc(K2)))
    second = plan_transition({"c": ahead, "a": behind, "b": ahead}, _target(_aescbc(K2)))
    assert first == second


def test_result_fields():
    result = plan_transition(_everywhere(None), _target(_secretbox(K2)))
    assert set(result) == {"phase", "config", "changed_nodes", "write_provider", "read_providers",
                           "stale_providers", "removable", "explanation"}
    assert result["phase"] in PHASES
    assert result["write_provider"] == "identity"
    assert result["read_providers"] == ["identity", "secretbox:k2"]
    assert result["stale_providers"] == ["identity"]
    assert K2["secret"] not in result["explanation"]
