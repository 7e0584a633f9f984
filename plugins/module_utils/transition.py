# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The transition planner: from the encryption configs observed on every
control-plane node, decide the next whole-cluster phase of a transition of one
resource group to a target provider/key, and the config every node gets next.

Pure logic, no Ansible imports.  The one safety invariant it keeps: no node
ever writes with a provider/key that another node cannot read yet, and no
provider/key is removed while etcd may still hold data under it.  The phases:

``add_read``
    the target is added as a read entry directly after the current write
    provider, which keeps writing;
``promote``
    once every node can read the target, it becomes the write provider;
``rewrite``
    configs unchanged; the caller rewrites the stored objects and scans etcd,
    until it passes ``rewrite_verified``;
``prune``
    (only when the target asks for it) everything but the target is removed
    from the group;
``done``
    nothing left to do.

Representation (deterministic, so every node gets the same bytes): a new key
of the write provider's type joins the write provider's element as its second
key (one element, first key writes, as in the upstream rotation procedure); a
provider of another type gets its own element directly after the write
provider's element.  Promotion makes the target key the first key of its
element and moves that element to the front.  Pruning leaves the target's
element with the target key only.

Providers and keys are written as notations: ``identity``, ``aescbc:key1``,
``secretbox:k2``, ``kms:<name>``.  Messages name keys by notation and
fingerprint, never by key material.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import json

from collections.abc import Mapping, Sequence

PHASES = ("add_read", "promote", "rewrite", "prune", "done")

_IDENTITY = "identity"
_KMS = "kms"
_KEYED_TYPES = ("aescbc", "aesgcm", "secretbox")
_PROVIDER_TYPES = (_IDENTITY,) + _KEYED_TYPES + (_KMS,)
_KEY_SIZES = {"aescbc": (16, 24, 32), "aesgcm": (16, 24, 32), "secretbox": (32,)}
_TARGET_FIELDS = ("resources", "provider", "prune")
_FINGERPRINT_CONTEXT = b"kubecrypt.at_rest key fingerprint\x00"

# One provider/key of a group in read order.  ``material`` identifies the key
# behind the name: a fingerprint for keyed providers, the settings for kms.
_Entry = collections.namedtuple("_Entry", "notation kind name material element_index key_index")
_Target = collections.namedtuple("_Target", "resources element entry prune")
_Step = collections.namedtuple("_Step", "phase config reason")


class TransitionError(ValueError):
    """The observed configs or the target cannot be planned safely; nothing was planned."""


def plan_transition(observed, target, rewrite_verified=False):
    """Plan the next phase of the transition of ``target['resources']`` to ``target['provider']``.

    ``observed`` maps each control-plane node to its EncryptionConfiguration
    ``resources`` list, or ``None`` when the node has no config file.
    ``target`` is ``{resources: [...], provider: <provider element>, prune: bool}``.
    ``rewrite_verified`` is ``True`` when the rewrite completed and a scan found
    nothing stored under any provider/key but the target's, or a list of the
    provider/key notations the scan found holding no data.

    Returns a dict with ``phase``, ``config``, ``changed_nodes``,
    ``write_provider``, ``read_providers``, ``stale_providers``, ``removable``
    and ``explanation``; raises ``TransitionError`` when no phase explains the
    observed configs.
    """
    target = _parse_target(target)
    is_verified = _parse_rewrite_verified(rewrite_verified)
    configs = _parse_observed(observed)

    views = dict((node, _group_view(groups, target, _node_label(node))) for node, groups in configs.items())
    _refuse_key_conflicts(views, target)

    states = _distinct_states(configs)
    all_nodes = list(configs)
    if len(states) == 1:
        from_groups, nodes = states[0][1], states[0][2]
        step = _next_step(from_groups, target, is_verified)
        changed_nodes = [] if _canonical(step.config) == states[0][0] else list(nodes)
        node_note = _node_note(changed_nodes, all_nodes, lagging=False)
    elif len(states) == 2:
        from_groups, step, changed_nodes = _consecutive_states(states, target, is_verified)
        node_note = _node_note(changed_nodes, all_nodes, lagging=True)
    else:
        raise TransitionError(
            "the nodes have %d different encryption configurations, which no phase of the transition to %s "
            "explains: %s. Nothing was planned: bring every node to one configuration and plan again."
            % (len(states), target.entry.notation,
               "; ".join("%s: %s" % (_node_list(nodes), _describe_config(groups, target))
                         for dummy, groups, nodes in states)))

    return _result(step, from_groups, target, is_verified, changed_nodes, node_note)


def _fingerprint(secret):
    """Return the collection-wide fingerprint of a base64 key secret.

    Private helper: the same definition as the rest of the collection, so that
    fingerprints in messages match those the other modules report.
    """
    material = base64.b64decode(secret)
    return "sha256:" + hashlib.sha256(_FINGERPRINT_CONTEXT + material).hexdigest()[:16]


# --- input parsing ---------------------------------------------------------


def _plain(value):
    """Deep copy ``value`` into plain dicts, lists and strs (inputs may be templating types)."""
    if isinstance(value, Mapping):
        return dict((str(key), _plain(item)) for key, item in value.items())
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return [_plain(item) for item in value]
    return value


def _is_list(value):
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _parse_target(target):
    if not isinstance(target, Mapping):
        raise TransitionError("the target must be a mapping with resources, provider and prune")
    unknown = sorted(str(field) for field in target if field not in _TARGET_FIELDS)
    if unknown:
        raise TransitionError("the target has unknown fields %s (known: %s)" % (", ".join(unknown), ", ".join(_TARGET_FIELDS)))
    resources = target.get("resources")
    if not _is_list(resources) or not resources or not all(isinstance(name, str) and name for name in resources):
        raise TransitionError("target.resources must be a non-empty list of resource names, e.g. [secrets]")
    resources = [str(name) for name in resources]
    if len(set(resources)) != len(resources):
        raise TransitionError("target.resources lists a resource twice: %s" % ", ".join(resources))
    prune = target.get("prune", False)
    if not isinstance(prune, bool):
        raise TransitionError("target.prune must be a boolean")
    element = _plain(target.get("provider"))
    if isinstance(element, dict) and list(element) == [_IDENTITY] and element[_IDENTITY] is None:
        element = {_IDENTITY: {}}
    entries = _entries([element], "the target") if isinstance(element, dict) else []
    if len(entries) != 1:
        raise TransitionError(
            "target.provider must be one provider element with exactly one key (the key that is to write), "
            "e.g. {secretbox: {keys: [{name: k2, secret: ...}]}}, {kms: {apiVersion: v2, ...}} or {identity: {}}")
    entry = entries[0]
    _check_target_entry(entry, element)
    return _Target(resources, element, entry, prune)


def _check_target_entry(entry, element):
    """Refuse a target the apiserver would reject or that would be ambiguous in etcd."""
    if entry.kind == _IDENTITY:
        return
    if ":" in entry.name:
        raise TransitionError("the target name %r contains ':', which makes storage prefixes ambiguous" % entry.name)
    body = element[entry.kind]
    if entry.kind == _KMS:
        if body.get("apiVersion") != "v2":
            raise TransitionError("the target %s must set apiVersion: v2 (kms v1 is deprecated and off by default)" % entry.notation)
        if "cachesize" in body:
            raise TransitionError("the target %s sets cachesize, which kms v2 does not accept" % entry.notation)
        if not str(body.get("endpoint", "")).startswith("unix://"):
            raise TransitionError("the target %s needs an endpoint of the form unix:///path/to/socket" % entry.notation)
        return
    key = body["keys"][0]
    if "secret" in key:
        size = len(base64.b64decode(key["secret"]))
        if size not in _KEY_SIZES[entry.kind]:
            raise TransitionError(
                "the target %s (%s) is %d bytes long; %s keys are %s bytes"
                % (entry.notation, entry.material, size, entry.kind, " or ".join(str(length) for length in _KEY_SIZES[entry.kind])))


def _parse_rewrite_verified(rewrite_verified):
    """Return a predicate: is this notation verified to hold no data?"""
    if rewrite_verified is None or rewrite_verified is False:
        return lambda notation: False
    if rewrite_verified is True:
        return lambda notation: True
    if _is_list(rewrite_verified) and all(isinstance(notation, str) for notation in rewrite_verified):
        verified = frozenset(str(notation) for notation in rewrite_verified)
        return lambda notation: notation in verified
    raise TransitionError("rewrite_verified must be a boolean or a list of provider notations such as aescbc:key1 or identity")


def _parse_observed(observed):
    if not isinstance(observed, Mapping) or not observed:
        raise TransitionError("observed must be a non-empty mapping of node name to that node's encryption config (a resources list, or null)")
    configs = collections.OrderedDict()
    for node in sorted(observed, key=str):
        config = observed[node]
        if config is None:
            config = []
        if not _is_list(config):
            raise TransitionError("the config observed on %s must be a resources list or null" % node)
        configs[str(node)] = _plain(config)
    return configs


def _groups_check(groups, where):
    for index, group in enumerate(groups):
        if not isinstance(group, dict):
            raise TransitionError("resource group %d on %s is not a mapping" % (index + 1, where))
        resources = group.get("resources")
        if not isinstance(resources, list) or not resources or not all(isinstance(name, str) and name for name in resources):
            raise TransitionError("resource group %d on %s has no list of resource names" % (index + 1, where))
        providers = group.get("providers")
        if not isinstance(providers, list) or not providers:
            raise TransitionError("resource group %d (%s) on %s has no providers" % (index + 1, ", ".join(resources), where))


def _element_kind(element, where):
    if not isinstance(element, dict) or len(element) != 1 or next(iter(element)) not in _PROVIDER_TYPES:
        raise TransitionError(
            "a provider element on %s is not exactly one of %s: %s"
            % (where, ", ".join(_PROVIDER_TYPES), ", ".join(sorted(element)) if isinstance(element, dict) else type(element).__name__))
    kind = next(iter(element))
    body = element[kind]
    if kind == _IDENTITY and body is None:
        body = {}
    if not isinstance(body, dict):
        raise TransitionError("the %s provider on %s is not a mapping" % (kind, where))
    return kind, body


def _entries(providers, where):
    """Flatten a group's providers into entries, in read order (the first one writes)."""
    entries = []
    for element_index, element in enumerate(providers):
        kind, body = _element_kind(element, where)
        if kind == _IDENTITY:
            entries.append(_Entry(_IDENTITY, kind, "", "", element_index, None))
        elif kind == _KMS:
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise TransitionError("a kms provider on %s has no name" % where)
            settings = dict(body)
            settings.pop("name")
            settings.setdefault("apiVersion", "v1")
            material = ", ".join("%s=%s" % (field, json.dumps(settings[field], sort_keys=True)) for field in sorted(settings))
            entries.append(_Entry("%s:%s" % (kind, name), kind, name, material, element_index, None))
        else:
            keys = body.get("keys")
            if not isinstance(keys, list) or not keys:
                raise TransitionError("the %s provider on %s has no keys" % (kind, where))
            for key_index, key in enumerate(keys):
                entries.append(_key_entry(kind, key, where, element_index, key_index))
    seen = set()
    for entry in entries:
        if entry.notation in seen:
            raise TransitionError("%s appears twice in one resource group on %s; provider and key names must be unique" % (entry.notation, where))
        seen.add(entry.notation)
    return entries


def _key_entry(kind, key, where, element_index, key_index):
    name = key.get("name") if isinstance(key, dict) else None
    if not isinstance(name, str) or not name:
        raise TransitionError("a %s key on %s has no name" % (kind, where))
    notation = "%s:%s" % (kind, name)
    fingerprint = key.get("fingerprint")
    if "secret" in key:
        try:
            from_secret = _fingerprint(key["secret"])
        except (binascii.Error, ValueError, TypeError):
            raise TransitionError("the secret of %s on %s is not valid base64" % (notation, where))
        if fingerprint is not None and fingerprint != from_secret:
            raise TransitionError("%s on %s carries a fingerprint that does not match its secret" % (notation, where))
        fingerprint = from_secret
    if not isinstance(fingerprint, str) or not fingerprint:
        raise TransitionError("%s on %s has neither a secret nor a fingerprint" % (notation, where))
    return _Entry(notation, kind, name, fingerprint, element_index, key_index)


# --- resource groups -------------------------------------------------------


def _split_resource(name):
    resource, dummy, api_group = name.partition(".")
    return resource, api_group


def _resources_overlap(first, second):
    """Do two resource names (``secrets``, ``deployments.apps``, ``*.apps``, ``*.``, ``*.*``) cover a common resource?"""
    if first == second:
        return True
    first_resource, first_group = _split_resource(first)
    second_resource, second_group = _split_resource(second)
    resource_overlaps = first_resource == second_resource or "*" in (first_resource, second_resource)
    group_overlaps = first_group == second_group or "*" in (first_group, second_group)
    return resource_overlaps and group_overlaps


def _locate_group(groups, resources, where):
    """Index of the group for exactly ``resources``, or None when there is none yet.

    A group that covers some of the resources and comes first would mask or
    split the target group: refuse.  Groups after the target group are masked
    by it for these resources and stay as they are.
    """
    wanted = set(resources)
    for index, group in enumerate(groups):
        if set(group["resources"]) == wanted:
            return index
        shared = sorted(name for name in group["resources"] if any(_resources_overlap(name, wanted_name) for wanted_name in resources))
        if shared:
            raise TransitionError(
                "on %s, resource group %d (%s) covers %s as well: the target resources %s would be split across "
                "or masked by groups. Plan each group separately, with target.resources equal to a whole group."
                % (where, index + 1, ", ".join(group["resources"]), ", ".join(shared), ", ".join(resources)))
    return None


def _group_view(groups, target, where):
    """(index of the target group or None, its entries); no group means every resource is stored with identity."""
    _groups_check(groups, where)
    for group in groups:
        _entries(group["providers"], where)
    index = _locate_group(groups, target.resources, where)
    if index is None:
        return None, [_Entry(_IDENTITY, _IDENTITY, "", "", 0, None)]
    return index, _entries(groups[index]["providers"], where)


def _canonical(groups):
    """Comparable form of a config: keys by name and fingerprint, whether they carry a secret or a fingerprint."""
    canonical_groups = []
    for group in groups:
        canonical_group = dict(group)
        canonical_group["providers"] = [
            [entry.notation, entry.material, entry.element_index] for entry in _entries(group["providers"], "a node")]
        canonical_groups.append(canonical_group)
    return json.dumps(canonical_groups, sort_keys=True)


def _distinct_states(configs):
    """[(canonical, groups, [nodes])] for each distinct config, in node order."""
    states = collections.OrderedDict()
    for node, groups in configs.items():
        canonical = _canonical(groups)
        if canonical not in states:
            states[canonical] = (canonical, groups, [])
        states[canonical][2].append(node)
    return list(states.values())


def _refuse_key_conflicts(views, target):
    """The same provider/key name must mean the same key on every node and in the target."""
    holders = collections.OrderedDict()
    holders[target.entry.notation] = collections.OrderedDict([(target.entry.material, ["the target"])])
    for node, (dummy, entries) in views.items():
        for entry in entries:
            holders.setdefault(entry.notation, collections.OrderedDict()).setdefault(entry.material, []).append(node)
    for notation, by_material in holders.items():
        if len(by_material) > 1:
            raise TransitionError(
                "%s stands for different keys: %s. A key name is never reused for other key material; "
                "nothing was planned (choose a new key name, or restore the original key on the nodes that differ)."
                % (notation, "; ".join("%s on %s" % (material or "no settings", _node_list(nodes)) for material, nodes in by_material.items())))


# --- the phases ------------------------------------------------------------


def _next_step(groups, target, is_verified):
    """The next phase and config from a config that every node has."""
    index, entries = _group_view(groups, target, "the nodes")
    target_notation = target.entry.notation
    write = entries[0].notation
    notations = [entry.notation for entry in entries]
    resources = ", ".join(target.resources)

    if index is None:
        if target.entry.kind == _IDENTITY:
            return _Step("done", groups, "%s have no resource group, so they are stored with identity already." % resources)
        group = {"resources": list(target.resources), "providers": _with_read_entry([{_IDENTITY: {}}], target)}
        return _Step(
            "add_read", [group] + groups,
            "%s have no resource group yet (stored with identity): a group for them is added first, where identity "
            "keeps writing and %s is added as a read entry." % (resources, target_notation))

    if target_notation not in notations:
        new_groups = _replace_providers(groups, index, _with_read_entry(groups[index]["providers"], target))
        return _Step(
            "add_read", new_groups,
            "%s is not readable on every node yet: it is added as a read entry directly after the write provider %s, "
            "which keeps writing until every node can read %s." % (target_notation, write, target_notation))

    if write != target_notation:
        new_groups = _replace_providers(groups, index, _promoted(groups[index]["providers"], entries, target))
        return _Step(
            "promote", new_groups,
            "every node can read %s: it becomes the write provider; nodes still writing %s and nodes already writing "
            "%s can read each other's data." % (target_notation, write, target_notation))

    stale = notations[1:]
    unverified = [notation for notation in stale if not is_verified(notation)]
    if not stale:
        return _Step("done", groups, "%s is the only provider for %s on every node." % (target_notation, resources))
    if unverified:
        return _Step(
            "rewrite", groups,
            "%s writes on every node, but stored %s may still be encrypted with %s: rewrite them, scan etcd, and "
            "plan again with rewrite_verified." % (target_notation, resources, ", ".join(unverified)))
    if target.prune:
        new_groups = _replace_providers(groups, index, _pruned(groups[index]["providers"], entries, target))
        return _Step(
            "prune", new_groups,
            "the rewrite is verified (nothing is stored under %s any more): remove %s so that %s is the only provider."
            % (", ".join(stale), ", ".join(stale), target_notation))
    return _Step(
        "done", groups,
        "%s writes on every node and the rewrite is verified; %s stay as read entries because target.prune is false."
        % (target_notation, ", ".join(stale)))


def _replace_providers(groups, index, providers):
    new_groups = _plain(groups)
    new_groups[index]["providers"] = providers
    return new_groups


def _with_read_entry(providers, target):
    """Add the target as a read entry directly after the write provider."""
    new_providers = _plain(providers)
    first_kind = next(iter(new_providers[0]))
    if target.entry.kind in _KEYED_TYPES and first_kind == target.entry.kind:
        new_providers[0][first_kind]["keys"].insert(1, _plain(target.element[target.entry.kind]["keys"][0]))
    else:
        new_providers.insert(1, _plain(target.element))
    return new_providers


def _promoted(providers, entries, target):
    """Make the target key the first of its element and move that element to the front."""
    new_providers = _plain(providers)
    entry = next(entry for entry in entries if entry.notation == target.entry.notation)
    element = new_providers.pop(entry.element_index)
    if entry.key_index is not None:
        keys = element[entry.kind]["keys"]
        keys.insert(0, keys.pop(entry.key_index))
    new_providers.insert(0, element)
    return new_providers


def _pruned(providers, entries, target):
    """Keep only the target: its element, with the target key alone."""
    entry = next(entry for entry in entries if entry.notation == target.entry.notation)
    element = _plain(providers[entry.element_index])
    if entry.key_index is not None:
        element[entry.kind]["keys"] = [element[entry.kind]["keys"][entry.key_index]]
    return [element]


def _consecutive_states(states, target, is_verified):
    """Two distinct configs: fine only when one is the next step of the other (an interrupted rollout)."""
    for behind, ahead in ((states[0], states[1]), (states[1], states[0])):
        step = _next_step(behind[1], target, is_verified)
        if _canonical(step.config) == ahead[0]:
            return behind[1], step, list(behind[2])
    hint = ""
    if _explained_by_pruning(states, target):
        hint = (" Some nodes were already pruned: if the rewrite is verified and pruning is intended, "
                "plan with target.prune true and rewrite_verified.")
    raise TransitionError(
        "%s and %s have encryption configurations that are not consecutive phases of the transition "
        "to %s: on %s, %s; on %s, %s. %s Nothing was planned: bring every node to one configuration, or finish the "
        "interrupted transition with its own target, and plan again.%s"
        % (_node_list(states[0][2]), _node_list(states[1][2]), target.entry.notation,
           _node_list(states[0][2]), _describe_config(states[0][1], target),
           _node_list(states[1][2]), _describe_config(states[1][1], target),
           _describe_difference(states[0], states[1], target), hint))


def _explained_by_pruning(states, target):
    """Would a verified prune explain the two configs (an interrupted prune planned with other inputs)?"""
    pruning_target = target._replace(prune=True)
    for behind, ahead in ((states[0], states[1]), (states[1], states[0])):
        if _canonical(_next_step(behind[1], pruning_target, lambda notation: True).config) == ahead[0]:
            return True
    return False


# --- output ----------------------------------------------------------------


def _result(step, from_groups, target, is_verified, changed_nodes, node_note):
    dummy, entries = _group_view(step.config, target, "the planned config")
    dummy, from_entries = _group_view(from_groups, target, "the nodes")
    others = [entry.notation for entry in from_entries if entry.notation != target.entry.notation]
    return {
        "phase": step.phase,
        "config": step.config,
        "changed_nodes": changed_nodes,
        "write_provider": entries[0].notation,
        "read_providers": [entry.notation for entry in entries],
        "stale_providers": [notation for notation in others if not is_verified(notation)],
        "removable": [notation for notation in others if is_verified(notation)],
        "explanation": "%s: %s %s" % (step.phase, step.reason, node_note),
    }


def _node_note(changed_nodes, all_nodes, lagging):
    if not changed_nodes:
        return "No node needs a new config."
    if lagging:
        ahead = [node for node in all_nodes if node not in changed_nodes]
        return ("%s already %s this config; write it to %s, which %s one step behind."
                % (_node_list(ahead), "has" if len(ahead) == 1 else "have", _node_list(changed_nodes),
                   "lags" if len(changed_nodes) == 1 else "lag"))
    return "Write this config to %s." % _node_list(changed_nodes)


def _node_label(node):
    return "node %s" % node


def _node_list(nodes):
    return ", ".join(nodes)


def _describe_entries(entries):
    described = []
    for entry in entries:
        if entry.kind in _KEYED_TYPES:
            described.append("%s (%s)" % (entry.notation, entry.material))
        else:
            described.append(entry.notation)
    return described


def _describe_config(groups, target):
    """The target group in words: names and fingerprints, never key material."""
    index, entries = _group_view(groups, target, "a node")
    described = _describe_entries(entries)
    text = "%s written with %s" % (", ".join(target.resources), described[0])
    if len(described) > 1:
        text += " and also readable with %s" % ", ".join(described[1:])
    if index is None:
        text += " (no resource group)"
    return text


def _describe_difference(first, second, target):
    first_index, first_entries = _group_view(first[1], target, "a node")
    second_index, second_entries = _group_view(second[1], target, "a node")
    first_notations = [entry.notation for entry in first_entries]
    second_notations = [entry.notation for entry in second_entries]
    differences = []
    for nodes, notations, other_nodes, other_notations in (
            (first[2], first_notations, second[2], second_notations),
            (second[2], second_notations, first[2], first_notations)):
        missing = [notation for notation in notations if notation not in other_notations]
        if missing:
            differences.append("%s cannot read %s" % (_node_list(other_nodes), ", ".join(missing)))
    if not differences and first_notations != second_notations:
        differences.append("the providers are in a different order")
    if _other_groups(first[1], first_index) != _other_groups(second[1], second_index):
        differences.append("the other resource groups differ")
    if not differences:
        differences.append("the group is laid out differently")
    return "Difference: %s." % "; ".join(differences)


def _other_groups(groups, index):
    return _canonical([group for position, group in enumerate(groups) if position != index])
