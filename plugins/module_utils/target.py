# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which provider/key a run converges to.

A run of ``enable``, ``rotate`` or ``disable`` must be resumable: when an
earlier run was interrupted after the new key reached some node, the re-run has
to finish the transition to *that* key, never start over with a fresh one
(which would strand the first key's data, or lock a node out of it).  So the
target is chosen from what the nodes hold, and a key is generated only when no
node holds a transition in progress.

Pure logic, no Ansible imports.  Keys are compared by provider type, name and
fingerprint, never by printing material.
"""

from __future__ import annotations

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.transition import (
    TransitionError,
    plan_transition,
)

ACTIONS = ("enable", "rotate", "disable")
KEYED_TYPES = ("aescbc", "aesgcm", "secretbox")


class TargetError(ValueError):
    """No target can be chosen safely; the message says why (names only)."""


def _target_group(config, resources):
    """The providers of the group that holds exactly ``resources``, or None."""
    wanted = set(resources)
    for group in config or []:
        if set(group.get("resources") or []) == wanted:
            return group.get("providers") or []
    return None


def _entries(providers):
    """(type, name, notation) of each provider/key in read order."""
    result = []
    for element in providers or []:
        for kind, body in element.items():
            if kind in KEYED_TYPES:
                for key in (body or {}).get("keys") or []:
                    result.append((kind, key.get("name"), "%s:%s" % (kind, key.get("name"))))
            elif kind == "kms":
                result.append((kind, (body or {}).get("name"), "kms:%s" % (body or {}).get("name")))
            else:
                result.append((kind, None, kind))
    return result


def _write_notations(observed, resources):
    """The write provider of the target group on each node (identity without a group)."""
    writes = {}
    for node, config in observed.items():
        entries = _entries(_target_group(config, resources))
        writes[node] = entries[0][2] if entries else "identity"
    return writes


def _keystore_index(keystore):
    index = {}
    for position, entry in enumerate(keystore or []):
        index["%s:%s" % (entry.get("provider"), entry.get("name"))] = (str(entry.get("created") or ""), position, entry)
    return index


def _newest(notations, keystore_index):
    """The most recently created of ``notations`` (all must be escrowed)."""
    missing = [notation for notation in notations if notation not in keystore_index]
    if missing:
        raise TargetError(
            "%s is configured on a node but not in the keystore: import the node's keys into the keystore first "
            "(encryption_key with import_resources) so that no key exists only on the nodes." % ", ".join(sorted(missing)))
    return max(notations, key=lambda notation: keystore_index[notation][:2])


def _provider_element(notation, keystore_index):
    entry = keystore_index[notation][2]
    return {entry["provider"]: {"keys": [{"name": entry["name"], "secret": entry["secret"]}]}}


def choose_target(observed, resources, action, provider=None, keystore=None, prune=True, kms=None,
                  rewrite_verified=False, rotation_in_progress=None):
    """Choose the target of a run.

    ``observed``: node -> EncryptionConfiguration ``resources`` list or None
    (with secrets).  ``keystore``: the escrowed keys, each ``{name, provider,
    secret, created}``.  ``provider``: the provider type ``enable`` converges
    to; ``rotate`` keeps the current write provider's type; ``disable`` goes to
    identity.  ``kms``: the kms provider settings when ``provider`` is kms.
    ``rewrite_verified``: a scan made while every node wrote the candidate
    found nothing under any other provider/key (see ``scan_is_valid``).
    ``rotation_in_progress``: the provider/key (``type:name``) of the rotation
    the controller started and has not recorded as finished.  The nodes look
    the same when a rotation is finished and when its run was stopped while
    the last node restarted with the pruned config, so only the controller
    can tell: ``rotate`` then finishes that rotation instead of starting
    another one.  When that key is on no node yet (the run was stopped after
    escrowing it), ``rotate`` rotates to it instead of generating another.

    Returns ``{target, generate, provider, candidate, scan_is_valid,
    kms_key_rotation, reason}``: ``target`` is the planner's target (None when
    ``generate`` asks for a new key of type ``provider`` first).

    ``rotate`` while every node writes with one kms provider is a KEK
    rotation: the key lives in the KMS, which rotates it itself (a new key
    ID), so no key is generated; the target is that kms provider as the nodes
    hold it (a transition to it that is not finished is resumed first), and
    ``kms_key_rotation`` asks the caller to rewrite every object under the
    KMS's current key ID once every apiserver has seen it.
    """
    if action not in ACTIONS:
        raise TargetError("action must be one of %s, not %r" % (", ".join(ACTIONS), action))
    if not observed:
        raise TargetError("no node configuration was observed")
    resources = list(resources)
    writes = _write_notations(observed, resources)
    keystore_index = _keystore_index(keystore)

    if action == "disable":
        target = {"resources": resources, "provider": {"identity": {}}, "prune": prune}
        return _result(target, False, "identity", "identity", writes,
                       "disable converges every node to identity")

    if action == "rotate":
        write_types = set(notation.split(":", 1)[0] for notation in writes.values())
        if write_types == set(["kms"]):
            return _kms_key_rotation(observed, resources, writes, prune, rewrite_verified)
        keyed = write_types & set(KEYED_TYPES)
        if len(keyed) != 1 or len(write_types) != 1:
            raise TargetError(
                "rotate needs every node to write %s with one keyed provider type (aescbc, aesgcm or secretbox) "
                "or with one kms provider; "
                "the nodes write %s" % (", ".join(resources), ", ".join(
                    "%s: %s" % (node, writes[node]) for node in sorted(writes))))
        provider = keyed.pop()
    elif provider == "kms":
        if not kms or not kms.get("name"):
            raise TargetError("provider kms needs the kms settings (name, endpoint, timeout)")
        element = dict((key, value) for key, value in kms.items() if value is not None)
        element.setdefault("apiVersion", "v2")
        target = {"resources": resources, "provider": {"kms": element}, "prune": prune}
        return _result(target, False, "kms", "kms:%s" % kms["name"], writes,
                       "enable converges every node to kms provider %s" % kms["name"])
    elif provider not in KEYED_TYPES:
        raise TargetError("provider must be one of %s or kms, not %r" % (", ".join(KEYED_TYPES), provider))

    held = set()
    for config in observed.values():
        for kind, _name, notation in _entries(_target_group(config, resources)):
            if kind == provider:
                held.add(notation)
    if not held:
        return _result(None, True, provider, None, writes,
                       "no node holds a %s key for %s yet: a new key is generated and escrowed" % (
                           provider, ", ".join(resources)))

    candidate = _newest(sorted(held), keystore_index)
    target = {"resources": resources, "provider": _provider_element(candidate, keystore_index), "prune": prune}
    try:
        plan = plan_transition(observed, target, rewrite_verified=rewrite_verified)
    except TransitionError as error:
        # A prune interrupted between nodes is explained only by a verified
        # rewrite, which is not known yet when the target is chosen: resume
        # the candidate, and let the run scan etcd before it prunes the rest.
        try:
            plan = plan_transition(observed, target, rewrite_verified=True)
        except TransitionError:
            raise TargetError("the transition to %s cannot be resumed: %s" % (candidate, error))

    if plan["phase"] != "done" or action == "enable":
        reason = ("%s is the newest %s key on the nodes and the transition to it is not finished (next: %s): "
                  "it is resumed" % (candidate, provider, plan["phase"]))
        if plan["phase"] == "done":
            reason = "%s is already the only %s write key: nothing to do" % (candidate, provider)
        return _result(target, False, provider, candidate, writes, reason)
    if rotation_in_progress and candidate == rotation_in_progress:
        return _result(target, False, provider, candidate, writes,
                       "the rotation to %s reached every node's config, but the run that started it did not finish "
                       "(the controller has not recorded it as finished): it is confirmed on every node and finished; "
                       "no new key is generated" % candidate)
    pending = _pending_rotation_key(rotation_in_progress, provider, candidate, keystore_index)
    if pending:
        target = {"resources": resources, "provider": _provider_element(pending, keystore_index), "prune": prune}
        return _result(target, False, provider, pending, writes,
                       "the rotation to %s was started by this controller and its key reached no node yet: it is "
                       "resumed with that key, no new key is generated" % pending)
    return _result(None, True, provider, candidate, writes,
                   "the rotation to %s is complete: a new %s key is generated and escrowed" % (candidate, provider))


def _pending_rotation_key(rotation_in_progress, provider, candidate, keystore_index):
    """The escrowed key of an unfinished rotation that no node holds yet, when it is newer than ``candidate``."""
    entry = keystore_index.get(rotation_in_progress or "")
    if not entry or entry[2].get("provider") != provider:
        return None
    if entry[:2] <= keystore_index[candidate][:2]:
        return None  # older than what the nodes hold: a record left by another transition
    return rotation_in_progress


def _kms_key_rotation(observed, resources, writes, prune, rewrite_verified):
    """Rotate while every node writes with one kms provider: rewrite under the KMS's current key."""
    notations = sorted(set(writes.values()))
    if len(notations) != 1:
        raise TargetError(
            "rotate needs every node to write %s with the same kms provider; the nodes write %s" % (
                ", ".join(resources), ", ".join("%s: %s" % (node, writes[node]) for node in sorted(writes))))
    notation = notations[0]
    name = notation.split(":", 1)[1]
    element = None
    for node in sorted(observed):
        for provider in _target_group(observed[node], resources) or []:
            body = provider.get("kms") if isinstance(provider, dict) else None
            if isinstance(body, dict) and body.get("name") == name:
                element = dict(body)
                break
        if element is not None:
            break
    target = {"resources": resources, "provider": {"kms": element}, "prune": prune}
    try:
        plan = plan_transition(observed, target, rewrite_verified=rewrite_verified)
    except TransitionError as error:
        raise TargetError("the transition to %s cannot be resumed: %s" % (notation, error))
    reason = ("every node writes with %s: its key lives in the KMS, which rotates it; every object is rewritten "
              "under the key ID the KMS reports now, once every apiserver has seen it" % notation)
    if plan["phase"] != "done":
        reason = ("the transition to %s is not finished (next: %s): it is resumed, then %s"
                  % (notation, plan["phase"], reason))
    return _result(target, False, "kms", notation, writes, reason, kms_key_rotation=True)


def _result(target, generate, provider, candidate, writes, reason, kms_key_rotation=False):
    return {
        "target": target,
        "generate": generate,
        "provider": provider,
        "candidate": candidate,
        # A scan proves a rewrite only while no node can write anything but the
        # candidate any more; before that, new data may still land elsewhere.
        "scan_is_valid": bool(candidate) and all(write == candidate for write in writes.values()),
        "write_providers": dict(writes),
        "kms_key_rotation": kms_key_rotation,
        "reason": reason,
    }
