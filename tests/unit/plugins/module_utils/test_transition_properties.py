# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property tests of the transition planner: simulated rollouts keep the safety invariant.

A simulator plays the cluster: each round it asks the planner what to do with
the configs observed on every node, applies the planned config to an arbitrary
non-empty subset of the nodes that need it (so nodes lag), lets nodes write new
objects with their write provider, performs the rewrite when asked, and checks
the invariant at every intermediate moment.  Stored objects are modelled as the
set of provider/keys that hold data for the target resources.

The checks use their own reading of a config (below), not the planner's.
Settings are derandomized so that CI runs the same examples every time.
"""

from __future__ import annotations

import base64
import copy
import hashlib

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.transition import (
    PHASES,
    TransitionError,
    plan_transition,
)

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TARGET_RESOURCES = ["secrets"]
KEYED_TYPES = ["aescbc", "aesgcm", "secretbox"]
KEY_NAMES = ["k1", "k2", "k3", "k4"]
KMS_NAMES = ["vault", "hsm"]
OTHER_GROUP = {"resources": ["configmaps"], "providers": [{"aesgcm": {"keys": [{"name": "k1", "secret": "AAAAAAAAAAAAAAAAAAAAAA=="}]}}]}
LEGACY_KMS = {"kms": {"name": "legacy", "endpoint": "unix:///run/legacy.sock", "cachesize": 100}}


# --- the model's own reading of a config ------------------------------------


def _secret(kind, name):
    """Each (type, name) always stands for the same key material, so generated states never conflict."""
    return base64.b64encode(hashlib.sha256(("%s/%s" % (kind, name)).encode()).digest()).decode()


def _keyed(kind, names):
    return {kind: {"keys": [{"name": name, "secret": _secret(kind, name)} for name in names]}}


def _kms(name):
    return {"kms": {"apiVersion": "v2", "name": name, "endpoint": "unix:///run/%s.sock" % name, "timeout": "3s"}}


def _target_group(config):
    for group in config or []:
        if set(group["resources"]) == set(TARGET_RESOURCES):
            return group
    return None


def _notations(config):
    """Provider/keys the target resources can be read with, in order (the first one writes)."""
    group = _target_group(config)
    if group is None:
        return ["identity"]
    notations = []
    for element in group["providers"]:
        (kind, body), = element.items()
        if kind == "identity":
            notations.append("identity")
        elif kind == "kms":
            notations.append("kms:" + body["name"])
        else:
            notations.extend("%s:%s" % (kind, key["name"]) for key in body["keys"])
    return notations


def _write(config):
    return _notations(config)[0]


def _other_groups(config):
    return [group for group in config or [] if group is not _target_group(config)]


def _target_notation(provider):
    (kind, body), = provider.items()
    if kind == "identity":
        return "identity"
    if kind == "kms":
        return "kms:" + body["name"]
    return "%s:%s" % (kind, body["keys"][0]["name"])


# --- generated starting states and targets ---------------------------------


@st.composite
def _providers(draw):
    """A valid providers list: 1-3 elements, keyed ones with 1-3 keys, no duplicate names."""
    elements = []
    used = set()
    for dummy in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["identity", "kms", "legacy_kms"] + KEYED_TYPES))
        if kind == "identity" and "identity" not in used:
            used.add("identity")
            elements.append({"identity": {}})
        elif kind == "kms":
            name = draw(st.sampled_from(KMS_NAMES))
            if "kms:" + name not in used:
                used.add("kms:" + name)
                elements.append(_kms(name))
        elif kind == "legacy_kms" and "kms:legacy" not in used:
            used.add("kms:legacy")
            elements.append(copy.deepcopy(LEGACY_KMS))
        elif kind in KEYED_TYPES:
            names = draw(st.lists(st.sampled_from(KEY_NAMES), min_size=1, max_size=3, unique=True))
            names = [name for name in names if "%s:%s" % (kind, name) not in used]
            if names:
                used.update("%s:%s" % (kind, name) for name in names)
                elements.append(_keyed(kind, names))
    return elements or [{"identity": {}}]


@st.composite
def _start_configs(draw):
    """No config, identity only, a provider with 1-3 keys, other groups, partially transitioned states."""
    shape = draw(st.sampled_from(["none", "empty", "identity", "single", "mixed", "other_only"]))
    if shape == "none":
        return None
    if shape == "empty":
        return []
    if shape == "other_only":
        return [copy.deepcopy(OTHER_GROUP)]
    if shape == "identity":
        providers = [{"identity": {}}]
    elif shape == "single":
        kind = draw(st.sampled_from(KEYED_TYPES))
        providers = [_keyed(kind, draw(st.lists(st.sampled_from(KEY_NAMES), min_size=1, max_size=3, unique=True)))]
        if draw(st.booleans()):
            providers.append({"identity": {}})
    else:
        providers = draw(_providers())
    config = [{"resources": list(TARGET_RESOURCES), "providers": providers}]
    placement = draw(st.sampled_from(["alone", "before", "after"]))
    if placement == "before":
        config.insert(0, copy.deepcopy(OTHER_GROUP))
    elif placement == "after":
        config.append(copy.deepcopy(OTHER_GROUP))
    return config


@st.composite
def _targets(draw, start):
    """A new key for the current type, a key of another type (maybe already present), identity or kms v2."""
    current = _write(start)
    kind = draw(st.sampled_from(["same_type", "keyed", "identity", "kms"]))
    if kind == "identity":
        provider = {"identity": {}}
    elif kind == "kms":
        provider = _kms(draw(st.sampled_from(KMS_NAMES + ["newkms"])))
    else:
        if kind == "same_type" and current.split(":", 1)[0] in KEYED_TYPES:
            key_type = current.split(":", 1)[0]
        else:
            key_type = draw(st.sampled_from(KEYED_TYPES))
        provider = _keyed(key_type, [draw(st.sampled_from(KEY_NAMES + ["new"]))])
    return {"resources": list(TARGET_RESOURCES), "provider": provider, "prune": draw(st.booleans())}


# --- the simulator ---------------------------------------------------------


class _Cluster(object):
    """Nodes, stored data and what the simulated operator has verified."""

    def __init__(self, nodes, start, data, verification):
        self.configs = dict((node, copy.deepcopy(start)) for node in nodes)
        self.data = set(data)
        self.verification = verification
        self.rewrite_verified = False
        self.rewrites = 0
        self.other_groups = _other_groups(start)

    def check(self, where):
        readable = dict((node, set(_notations(config))) for node, config in self.configs.items())
        for node, config in self.configs.items():
            # (a) nobody writes with a provider/key that another node cannot read
            for other, notations in readable.items():
                assert _write(config) in notations, "%s: %s writes %s, which %s cannot read" % (where, node, _write(config), other)
            # other groups are carried over unchanged
            assert _other_groups(config) == self.other_groups, where
        # (b) every provider/key holding data is readable everywhere
        for notation in self.data:
            for node, notations in readable.items():
                assert notation in notations, "%s: data under %s, which %s cannot read" % (where, notation, node)

    def is_verified(self, notation):
        if self.rewrite_verified is True:
            return True
        return notation in (self.rewrite_verified or [])

    def writes(self, writers):
        self.data.update(_write(self.configs[node]) for node in writers)

    def rewrite(self, leave_one_behind):
        """Re-encrypt every stored object with the write key in effect, then scan."""
        writes = set(_write(config) for config in self.configs.values())
        assert len(writes) == 1, "rewrite while nodes write with %s" % sorted(writes)
        stale = sorted(self.data - writes)
        self.rewrites += 1
        kept = set(stale[:1]) if leave_one_behind and self.rewrites == 1 else set()
        self.data = (writes if self.data else set()) | kept
        if self.verification == "bool":
            self.rewrite_verified = not kept
        else:
            # the scan names every provider/key of the group that holds no data
            every = set()
            for config in self.configs.values():
                every.update(_notations(config))
            self.rewrite_verified = sorted(every - self.data)


def _plan(observed, target, rewrite_verified):
    """Call the planner and check determinism and that inputs stay untouched."""
    before = copy.deepcopy((observed, target, rewrite_verified))
    result = plan_transition(observed, target, rewrite_verified=rewrite_verified)
    assert (observed, target, rewrite_verified) == before
    reordered = dict(reversed(list(copy.deepcopy(observed).items())))
    assert plan_transition(reordered, copy.deepcopy(target), rewrite_verified=copy.deepcopy(rewrite_verified)) == result
    return result


def _simulate(data, nodes, start, target, initial_data, verification, leave_one_behind):
    cluster = _Cluster(nodes, start, initial_data, verification)
    cluster.check("start")
    target_notation = _target_notation(target["provider"])
    history = [copy.deepcopy(start)]
    rewrite_seen = False
    phases = []
    bound = 3 * len(nodes) + 3
    for round_number in range(bound + 1):
        result = _plan(copy.deepcopy(cluster.configs), target, cluster.rewrite_verified)
        assert result["phase"] in PHASES
        assert result["config"] is not None
        for node, config in cluster.configs.items():
            if node not in result["changed_nodes"]:
                assert (config or []) == result["config"], "%s is not in changed_nodes but differs" % node
        assert result["write_provider"] == _write(result["config"])
        assert result["read_providers"] == _notations(result["config"])
        if not phases or phases[-1] != result["phase"]:
            phases.append(result["phase"])
        if result["phase"] == "done":
            event("phases: %s" % " ".join(phases))
            event("some phase took several rounds: %s" % (round_number >= len(phases)))
            assert not result["changed_nodes"]
            assert _write(result["config"]) == target_notation
            if target["prune"]:
                assert _notations(result["config"]) == [target_notation]
            return history
        if result["phase"] == "rewrite":
            assert not result["changed_nodes"], "rewrite while nodes still differ"
            cluster.rewrite(leave_one_behind)
            rewrite_seen = True
            cluster.writes(data.draw(st.lists(st.sampled_from(nodes), unique=True), label="writers"))
            cluster.check("after rewrite %d" % round_number)
            continue
        # (c) nothing is pruned before a rewrite was observed on every node and verified
        assert result["phase"] != "prune" or rewrite_seen, "prune before any rewrite"
        assert result["phase"] != "prune" or target["prune"], "prune although target.prune is false"
        assert result["changed_nodes"], "%s changes no node" % result["phase"]
        appliers = data.draw(st.lists(st.sampled_from(result["changed_nodes"]), min_size=1, unique=True), label="appliers")
        for node in appliers:
            removed = set(_notations(cluster.configs[node])) - set(_notations(result["config"]))
            for notation in removed:
                assert rewrite_seen and cluster.is_verified(notation), "%s removed unverified from %s" % (notation, node)
            cluster.configs[node] = copy.deepcopy(result["config"])
            cluster.check("round %d, %s applied %s" % (round_number, node, result["phase"]))
        if result["config"] != history[-1]:
            history.append(copy.deepcopy(result["config"]))
        cluster.writes(data.draw(st.lists(st.sampled_from(nodes), unique=True), label="writers"))
        cluster.check("round %d after writes" % round_number)
    raise AssertionError("no done within %d rounds" % bound)


@st.composite
def _scenarios(draw):
    nodes = ["cp%d" % number for number in range(1, draw(st.integers(2, 4)) + 1)]
    start = draw(_start_configs())
    target = draw(_targets(start))
    initial_data = draw(st.sets(st.sampled_from(_notations(start))))
    verification = draw(st.sampled_from(["bool", "list"]))
    leave_one_behind = draw(st.booleans())
    return nodes, start, target, initial_data, verification, leave_one_behind


@SETTINGS
@given(st.data(), _scenarios())
def test_rollouts_keep_the_invariant_and_finish(data, scenario):
    _simulate(data, *scenario)


@SETTINGS
@given(st.data(), _scenarios())
def test_non_consecutive_states_are_refused(data, scenario):
    """Two states of a rollout that are not neighbours, or three states, never get a plan."""
    nodes, target = scenario[0], scenario[2]
    history = _simulate(data, *scenario)
    if len(history) < 3:
        return
    first = data.draw(st.integers(0, len(history) - 3), label="first")
    second = data.draw(st.integers(first + 2, len(history) - 1), label="second")
    observed = dict((node, copy.deepcopy(history[first])) for node in nodes)
    lagging = data.draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=len(nodes) - 1, unique=True), label="lagging")
    for node in lagging:
        observed[node] = copy.deepcopy(history[second])
    with pytest.raises(TransitionError):
        plan_transition(observed, target, rewrite_verified=True)
    if len(nodes) >= 3:
        observed = dict((node, copy.deepcopy(history[first + min(index, 2)])) for index, node in enumerate(nodes))
        with pytest.raises(TransitionError, match="3 different"):
            plan_transition(observed, target, rewrite_verified=True)


@SETTINGS
@given(st.data(), _scenarios())
def test_key_material_conflicts_are_refused(data, scenario):
    """A node whose key of some name has other material is refused, whatever the phase."""
    nodes, start, target = scenario[0], scenario[1], scenario[2]
    keyed = [notation for notation in _notations(start) if notation.split(":", 1)[0] in KEYED_TYPES]
    if not keyed:
        return
    notation = data.draw(st.sampled_from(keyed), label="notation")
    kind, name = notation.split(":")
    odd = copy.deepcopy(start)
    for element in _target_group(odd)["providers"]:
        for key in element.get(kind, {}).get("keys", []):
            if key["name"] == name:
                key["secret"] = base64.b64encode(b"\x07" * 32).decode()
    observed = dict((node, copy.deepcopy(start)) for node in nodes)
    observed[data.draw(st.sampled_from(nodes), label="odd node")] = odd
    with pytest.raises(TransitionError, match="%s stands for different keys" % notation):
        plan_transition(observed, target)


@st.composite
def _mixed_observations(draw):
    """Arbitrary per-node configs from a small pool: the planner either refuses or plans safely."""
    nodes = ["cp%d" % number for number in range(1, draw(st.integers(2, 4)) + 1)]
    pool = draw(st.lists(_start_configs(), min_size=1, max_size=3))
    start = pool[0]
    target = draw(_targets(start))
    observed = dict((node, copy.deepcopy(draw(st.sampled_from(pool)))) for node in nodes)
    return observed, target


@SETTINGS
@given(_mixed_observations())
def test_arbitrary_observations_are_refused_or_planned_safely(observation):
    observed, target = observation
    try:
        result = plan_transition(observed, target)
    except TransitionError:
        return
    planned = set(_notations(result["config"]))
    for node, config in observed.items():
        notations = set(_notations(config))
        # whichever nodes get the new config, writers and readers stay compatible
        assert _write(result["config"]) in notations
        assert _write(config) in planned
        if node in result["changed_nodes"]:
            # without a verified rewrite nothing is ever removed
            assert notations <= planned
        else:
            assert (config or []) == result["config"]
