"""Choosing the target of a run: resume what is in progress, never regenerate."""

from __future__ import annotations

import base64

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.target import TargetError, choose_target

K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 32).decode()
KEYSTORE = [
    {"name": "k1", "provider": "secretbox", "secret": K1, "created": "2026-01-01T00:00:00Z"},
    {"name": "k2", "provider": "secretbox", "secret": K2, "created": "2026-02-01T00:00:00Z"},
]


def box(*names):
    secrets = {"k1": K1, "k2": K2}
    return {"secretbox": {"keys": [{"name": name, "secret": secrets[name]} for name in names]}}


def group(*providers):
    return [{"resources": ["secrets"], "providers": list(providers)}]


def nodes(*configs):
    return dict(("cp%d" % (index + 1), config) for index, config in enumerate(configs))


def test_enable_on_plaintext_cluster_generates():
    choice = choose_target(nodes(None, None, None), ["secrets"], "enable", provider="secretbox", keystore=KEYSTORE)
    assert choice["generate"] and choice["target"] is None and choice["provider"] == "secretbox"
    assert not choice["scan_is_valid"]


def test_enable_resumes_the_key_an_interrupted_run_added_to_one_node():
    observed = nodes(group({"identity": {}}, box("k1")), None, None)
    choice = choose_target(observed, ["secrets"], "enable", provider="secretbox", keystore=KEYSTORE)
    assert not choice["generate"]
    assert choice["candidate"] == "secretbox:k1"
    assert choice["target"]["provider"] == box("k1")


def test_enable_when_done_changes_nothing():
    observed = nodes(group(box("k2")), group(box("k2")), group(box("k2")))
    choice = choose_target(observed, ["secrets"], "enable", provider="secretbox", keystore=KEYSTORE)
    assert not choice["generate"] and choice["candidate"] == "secretbox:k2"
    assert choice["scan_is_valid"]
    assert "nothing to do" in choice["reason"]


def test_rotate_resumes_an_unfinished_rotation_to_the_newest_key():
    observed = nodes(group(box("k2", "k1")), group(box("k1", "k2")), group(box("k1", "k2")))
    choice = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE)
    assert not choice["generate"] and choice["candidate"] == "secretbox:k2"
    assert not choice["scan_is_valid"], "cp2 and cp3 still write k1"


def test_rotate_after_a_complete_rotation_generates():
    observed = nodes(group(box("k2")), group(box("k2")), group(box("k2")))
    choice = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE)
    assert choice["generate"] and choice["provider"] == "secretbox"


def test_rotate_finishes_the_rotation_the_controller_has_not_recorded_as_finished():
    # Killed while the last node restarted with the pruned config: every node
    # holds k2 alone, exactly as after a finished rotation.
    observed = nodes(group(box("k2")), group(box("k2")), group(box("k2")))
    choice = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE, rotation_in_progress="secretbox:k2")
    assert not choice["generate"] and choice["candidate"] == "secretbox:k2"
    assert choice["target"]["provider"] == box("k2")
    assert "no new key" in choice["reason"]


def test_rotate_resumes_with_the_escrowed_key_of_a_rotation_that_reached_no_node():
    # Stopped after escrowing k2: the nodes still hold k1 alone.
    observed = nodes(group(box("k1")), group(box("k1")), group(box("k1")))
    choice = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE, rotation_in_progress="secretbox:k2")
    assert not choice["generate"] and choice["candidate"] == "secretbox:k2"
    assert choice["target"]["provider"] == box("k2")
    assert not choice["scan_is_valid"], "no node writes k2 yet"
    assert "reached no node" in choice["reason"]


def test_an_unfinished_rotation_record_of_another_provider_type_is_not_resumed():
    keystore = KEYSTORE + [{"name": "c3", "provider": "aescbc", "secret": K1, "created": "2026-03-01T00:00:00Z"}]
    observed = nodes(group(box("k1")), group(box("k1")), group(box("k1")))
    choice = choose_target(observed, ["secrets"], "rotate", keystore=keystore, rotation_in_progress="aescbc:c3")
    assert choice["generate"] and choice["provider"] == "secretbox"


def test_a_record_naming_a_key_the_keystore_lacks_is_not_resumed():
    observed = nodes(group(box("k1")), group(box("k1")), group(box("k1")))
    choice = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE, rotation_in_progress="secretbox:k9")
    assert choice["generate"]


def test_an_older_unfinished_rotation_does_not_stop_a_new_one():
    # The journal names k1, but the nodes moved on to k2 since (by another
    # action): the record is stale, and the rotation from k2 is a new one.
    observed = nodes(group(box("k2")), group(box("k2")), group(box("k2")))
    choice = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE, rotation_in_progress="secretbox:k1")
    assert choice["generate"]


def test_an_unfinished_rotation_record_changes_no_other_action():
    observed = nodes(group(box("k2")), group(box("k2")), group(box("k2")))
    choice = choose_target(observed, ["secrets"], "enable", provider="secretbox", keystore=KEYSTORE,
                           rotation_in_progress="secretbox:k2")
    assert not choice["generate"] and "nothing to do" in choice["reason"]


def test_rotate_without_prune_needs_a_verified_scan_to_count_as_complete():
    observed = nodes(group(box("k2", "k1")), group(box("k2", "k1")), group(box("k2", "k1")))
    unverified = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE, prune=False)
    assert not unverified["generate"] and unverified["scan_is_valid"]
    verified = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE, prune=False, rewrite_verified=True)
    assert verified["generate"]


def test_rotate_refuses_a_plaintext_cluster():
    with pytest.raises(TargetError, match="rotate needs every node to write"):
        choose_target(nodes(None, None), ["secrets"], "rotate", keystore=KEYSTORE)


def test_a_key_missing_from_the_keystore_is_refused_without_its_material():
    observed = nodes(group(box("k1")), group(box("k1")))
    with pytest.raises(TargetError) as error:
        choose_target(observed, ["secrets"], "enable", provider="secretbox", keystore=[])
    assert "secretbox:k1" in str(error.value)
    assert K1 not in str(error.value)


def test_disable_and_kms_need_no_key():
    observed = nodes(group(box("k1")), group(box("k1")))
    disable = choose_target(observed, ["secrets"], "disable", keystore=KEYSTORE)
    assert disable["target"]["provider"] == {"identity": {}} and not disable["generate"]
    kms = choose_target(observed, ["secrets"], "enable", provider="kms",
                        kms={"name": "lab", "endpoint": "unix:///run/kms.sock", "timeout": "3s"})
    assert kms["target"]["provider"] == {"kms": {"name": "lab", "endpoint": "unix:///run/kms.sock",
                                                 "timeout": "3s", "apiVersion": "v2"}}


def test_unknown_action_is_refused():
    with pytest.raises(TargetError, match="action must be one of"):
        choose_target(nodes(None), ["secrets"], "explode")


def test_a_prune_interrupted_between_nodes_is_resumed():
    # cp1 was pruned, cp2 and cp3 not yet: only a verified rewrite explains
    # that, and the run scans etcd again before it prunes the others.
    observed = nodes(group(box("k2")), group(box("k2", "k1")), group(box("k2", "k1")))
    for action in ("rotate", "enable"):
        choice = choose_target(observed, ["secrets"], action, provider="secretbox", keystore=KEYSTORE)
        assert not choice["generate"] and choice["candidate"] == "secretbox:k2"
        assert choice["scan_is_valid"]
        assert "next: prune" in choice["reason"]


KMS = {"kms": {"apiVersion": "v2", "name": "lab", "endpoint": "unix:///run/kms.sock", "timeout": "3s"}}


def test_rotate_under_kms_is_a_kek_rotation_of_that_provider():
    observed = nodes(group(KMS), group(KMS))
    choice = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE)
    assert choice["kms_key_rotation"] and not choice["generate"]
    assert choice["candidate"] == "kms:lab" and choice["provider"] == "kms"
    assert choice["target"]["provider"] == KMS
    assert choice["scan_is_valid"]


def test_rotate_under_kms_resumes_an_unfinished_transition_first():
    observed = nodes(group(KMS, box("k1")), group(KMS, box("k1")))
    choice = choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE)
    assert choice["kms_key_rotation"] and "not finished (next: rewrite)" in choice["reason"]


def test_rotate_refuses_nodes_writing_with_different_kms_providers():
    other = {"kms": dict(KMS["kms"], name="other")}
    with pytest.raises(TargetError, match="same kms provider"):
        choose_target(nodes(group(KMS), group(other)), ["secrets"], "rotate", keystore=KEYSTORE)


def test_other_choices_are_no_kek_rotation():
    observed = nodes(group(box("k1")), group(box("k1")))
    assert not choose_target(observed, ["secrets"], "rotate", keystore=KEYSTORE)["kms_key_rotation"]
