"""The rotate playbook survives a SIGKILL at any point (issue 5).

A round is one key rotation on the lab (restart mode, small rewrite batches)
from the key the lab holds.  Its first run is SIGKILLed -- ansible-playbook
and every process below it, its workers and their modules included (the
workers call setsid(), so its process group is not enough) -- when its
output shows a chosen marker (a task, a phase of the plan, a rewrite batch),
or a chosen time after one or after the start; the re-run is killed at the
next point of the round, and so on; the last run of the round must finish.  So every kill point is
followed by a re-run that starts from exactly the state the kill left, and
one rotation carries them all (a rotation costs nine apiserver restarts).
More rounds chain: each starts from the key the previous one converged to.

After every kill, before the re-run, the lab is looked at from outside (the
node files, the keystore, raw etcd, every apiserver; never the collection's
own modules):

* the phase the kill left is the one the kill point aims at, so that the
  points are really different moments (timed kills are only recorded);
* every apiserver, once it is back, returns every Secret with the data it had
  before the rotation; every node can read what every other node writes;
* no key is on a node that is not in the keystore, and the manifests
  directories hold nothing the kubelet would run but the lab's static pods
  (etcd.yaml, kube-apiserver.yaml, kms-plugin.yaml).

After the round's last run (rc 0): every Secret in etcd is under the new key,
the only key the round generated (the first run escrows it and records the
rotation before its kill; a run that starts while a new key is recorded, or on
some node, must not generate another one); every node holds that key and
nothing else; the old key is on no node; every apiserver returns every Secret
unchanged.

One apiserver is also SIGKILLed (the process, not the playbook) while the
playbook waits for it during a roll; that run must go on undisturbed until
its own kill point.

Key material never reaches an assertion message or the output: keys are
compared by name and fingerprint.

    .venv/bin/python -m pytest -p no:cacheprovider tests/integration/test_resume.py -v -s
"""

from __future__ import annotations

import collections
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

import labcheck
from labctl import NODES, ansible_env, create_secrets, kubectl, lab_path, manifests_dir, pod_process, readyz, wait_for

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.encryption_config import key_fingerprint

pytestmark = pytest.mark.usefixtures("lab")

NAMESPACE = "kc-resume"
SECRETS = int(os.environ.get("KUBECRYPT_RESUME_SECRETS", "500"))
EXTRA_VARS = {
    "kubecrypt_automatic_reload": False,
    "kubecrypt_rewrite_batch_size": 100,
    "kubecrypt_wait_sleep": 1,
}
RESOURCES = ["secrets"]
# The lab's static pods; any other file without a leading dot in a manifests
# directory is one the kubelet would run too (a backup, a temp file).
STATIC_PODS = ("etcd", "kube-apiserver", "kms-plugin")
RUN_TIMEOUT = 900

# A kill point: ``markers`` are regular expressions the output must show in
# this order (each on a line of its own, searched from the line after the
# previous one); the kill comes ``delay`` seconds after the last one.  With
# ``after`` instead, the kill comes that many seconds after the run started.
# ``expect`` is the phase the kill must leave (see ``phase_of``), None for a
# timed kill.
Kill = collections.namedtuple("Kill", "name markers delay after expect")
# Kill the apiserver of ``node`` (not the playbook) at a marker; the run goes on.
ApiserverKill = collections.namedtuple("ApiserverKill", "name node markers delay")


def kill(name, *markers, delay=0.0, after=None, expect=None):
    return Kill(name, list(markers), delay, after, expect)


def task(name):
    """The banner ansible-playbook prints when a task starts (its name may go on after ``name``)."""
    return r"^TASK \[[^\]]*: %s(?:\]| [^\]]*\])" % re.escape(name)


def phase(name):
    """The plan shown at the start of a phase (the Show the plan task)."""
    return r"^\s+phase: %s$" % name


# One rotation, killed at each point in turn: every kill is followed by a re-run
# from exactly the state it left, and the re-run is killed at the next point.
ROUNDS = [
    ("rotation", [
        # The new key is escrowed and recorded as the rotation in progress, on no
        # node yet: the re-run resumes with it (no other key is generated).
        kill("key generated, on no node", task("Show the new key's name and fingerprint"), expect="keystore only"),
        # A resumed run, early: reading and settling the nodes, choosing the target.
        kill("timed: 20 s into the run", after=20.0),
        kill("add_read: cp1's file written, its manifest not yet", phase("add_read"),
             task("Point the apiserver manifest at the config on cp1"), expect="add_read"),
        kill("add_read: cp2 restarting", phase("add_read"), task("Wait until the config is served by cp2"),
             delay=1.0, expect="add_read"),
        ApiserverKill("cp3's apiserver SIGKILLed while the playbook waits for it (add_read)", "cp3",
                      [phase("add_read"), task("Wait until the config is served by cp3")], 1.0),
        kill("between add_read and promote", phase("promote"), expect="readable everywhere"),
        # Early in the promote (reading the nodes, cp1's roll), not at a task boundary.
        kill("timed: 8 s after the promote plan", phase("promote"), delay=8.0),
        kill("promote: cp2 restarting", phase("promote"), task("Wait until the config is served by cp2"),
             delay=1.0, expect="promote"),
        kill("rewrite: taking the etcd snapshot", phase("rewrite"), task("Take an etcd snapshot before rewriting"),
             delay=0.5, expect="rewrite, none done"),
        kill("rewrite: batch 3 running", phase("rewrite"), task("Rewrite stale objects, batch 3"),
             expect="rewrite, part done"),
        kill("rewrite: batch 5 running", phase("rewrite"), task("Rewrite stale objects, batch 5"),
             expect="rewrite, part done"),
        kill("scan before the prune", task("Show the rewrite"), task("Scan etcd, expecting"), delay=0.5,
             expect="rewritten"),
        kill("prune: cp2 restarting", phase("prune"), task("Wait until the config is served by cp2"),
             delay=1.0, expect="prune"),
    ]),
]


# ---------------------------------------------------------------------------
# Running and killing the playbook
# ---------------------------------------------------------------------------

class Run(object):
    """One ansible-playbook run, watched line by line."""

    def __init__(self, rc, killed_at, output, elapsed, events):
        self.rc = rc
        self.killed_at = killed_at
        self.output = output
        self.elapsed = elapsed
        self.events = events


def _children():
    """{parent pid: [child pids]} of every process."""
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children[parent].append(int(entry))
    return children


def _tree(root):
    children = _children()
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def kill_tree(root):
    """SIGKILL ``root`` and every process below it, as a crash of the controller would.

    Not the process group: ansible-core's workers call setsid(), so a module
    that runs survives a kill of ansible-playbook's group.  The tree is stopped
    first (until no new process appears), so that nothing forks or exits
    between the walk and the kill.  Returns the pids killed.
    """
    stopped = set()
    while True:
        new = _tree(root) - stopped
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        stopped |= new
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return stopped


def _wait_gone(pids, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if os.path.exists("/proc/%d" % pid) and not _is_zombie(pid)]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError("processes of the killed run are still alive: %s" % alive)


def _is_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def run_rotate(log_path, kill_point=None, apiserver_kills=()):
    """Run the rotate playbook; SIGKILL it and every process it started at ``kill_point``.

    ``apiserver_kills`` SIGKILL a node's apiserver when their markers show and
    let the run go on.
    """
    argv = [os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "ansible-playbook"),
            "-i", lab_path("inventory.yml"), "kubecrypt.at_rest.rotate", "-e", json.dumps(EXTRA_VARS)]
    env = ansible_env()
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    lines = queue.Queue()

    def pump():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    watchers = [[point, 0, None] for point in ([kill_point] if kill_point else []) + list(apiserver_kills)]
    output, events, killed_at, killed = [], [], None, set()
    with open(log_path, "w") as log:
        while True:
            now = time.monotonic()
            if now - started > RUN_TIMEOUT:
                kill_tree(process.pid)
                raise AssertionError("the run took longer than %ds; see %s" % (RUN_TIMEOUT, log_path))
            for watcher in watchers:
                point, _matched, due = watcher
                timed = isinstance(point, Kill) and point.after is not None
                if (timed and now - started >= point.after) or (due is not None and now >= due):
                    watcher[2] = float("inf")
                    event = "%.1fs: %s" % (now - started, point.name)
                    if isinstance(point, Kill):
                        killed = kill_tree(process.pid)
                        killed_at = event
                    else:
                        pid, _started = pod_process(point.node, "kube-apiserver")
                        assert pid, "%s has no apiserver process to kill" % point.node
                        os.kill(pid, signal.SIGKILL)
                    events.append(event)
                    log.write("#### %s\n" % event)
            if killed_at:
                break
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            output.append(line)
            log.write(line)
            for watcher in watchers:
                point, matched, due = watcher
                if due is None and point.markers and matched < len(point.markers):
                    if re.search(point.markers[matched], line.rstrip("\n")):
                        watcher[1] = matched = matched + 1
                        if matched == len(point.markers):
                            watcher[2] = time.monotonic() + point.delay
        process.wait()
        _wait_gone(killed)
        log.write("#### rc %s after %.1fs (%d processes killed)\n" % (
            process.returncode, time.monotonic() - started, len(killed)))
    return Run(process.returncode, killed_at, "".join(output), time.monotonic() - started, events)


# ---------------------------------------------------------------------------
# Looking at the lab from outside
# ---------------------------------------------------------------------------

def node_keys(node):
    """[(provider type, key name, fingerprint)] of the secrets group of a node's config file, in read order."""
    path = lab_path("nodes", node, "etc", "kubernetes", "enc", "encryption-config.yaml")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        config = yaml.safe_load(handle)
    for group in config.get("resources") or []:
        if sorted(group.get("resources") or []) == RESOURCES:
            entries = []
            for provider in group.get("providers") or []:
                for kind, body in provider.items():
                    keys = (body or {}).get("keys")
                    if keys is None:
                        entries.append((kind, None, None))
                    for key in keys or []:
                        entries.append((kind, key["name"], key_fingerprint(key["secret"])))
            return entries
    return []


def keystore():
    """{key name: (provider, fingerprint, source)} of the controller's keystore."""
    path = lab_path("keystore", "keys.yml")
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        entries = (yaml.safe_load(handle) or {}).get("keys") or []
    return {entry["name"]: (entry["provider"], key_fingerprint(entry["secret"]), entry.get("source"))
            for entry in entries}


def etcd_notations(namespace=None):
    """{provider notation: count} of the Secrets (of ``namespace``, or all) as stored in etcd."""
    prefix = "/registry/secrets/%s/" % namespace if namespace else "/registry/secrets/"
    counts = collections.Counter(notation for key, notation in labcheck.etcd_secrets().items()
                                 if key.startswith(prefix))
    return dict(counts)


def observe():
    return {
        "nodes": {node: node_keys(node) for node in NODES},
        "keystore": keystore(),
        "etcd": etcd_notations(),
    }


def phase_of(state, old):
    """Which moment of a rotation from key ``old`` the lab is at, judged from the files and etcd."""
    shapes = set()
    for entries in state["nodes"].values():
        shapes.add(tuple("O" if name == old else "N" for _kind, name, _fp in entries))
    stored_old = sum(count for notation, count in state["etcd"].items() if notation == "secretbox:" + old)
    if shapes == {("O",)}:
        return "keystore only"
    if shapes <= {("O",), ("O", "N")}:
        return "add_read" if ("O",) in shapes else "readable everywhere"
    if shapes <= {("O", "N"), ("N", "O")} and ("O", "N") in shapes:
        return "promote"
    if shapes == {("N", "O")}:
        if stored_old == 0:
            return "rewritten"
        return "rewrite, none done" if stored_old == sum(state["etcd"].values()) else "rewrite, part done"
    if shapes <= {("N", "O"), ("N",)} and ("N", "O") in shapes:
        return "prune"
    if shapes == {("N",)}:
        return "done"
    return "unexpected: %s" % sorted(shapes)


def describe(state, old):
    nodes = " ".join("%s=%s" % (node, "+".join("O" if name == old else name[-8:] for _k, name, _f in entries))
                     for node, entries in sorted(state["nodes"].items()))
    return "%s | etcd %s" % (nodes, {("O" if n == "secretbox:" + old else n[-8:]): c for n, c in state["etcd"].items()})


def namespace_data(ip):
    return labcheck.apiserver_secrets(ip, NAMESPACE)


def stray_manifests():
    """Non-dot files the kubelet would run, other than the lab's static pod manifests."""
    expected = {pod + ".yaml" for pod in STATIC_PODS}
    return {node: sorted(name for name in os.listdir(manifests_dir(node))
                         if not name.startswith(".") and name not in expected)
            for node in NODES}


def check_between(state, reference, where):
    """What must hold at any moment, even right after a kill."""
    for node, ip in NODES.items():
        wait_for(lambda ip=ip: readyz(ip), timeout=180, what="%s's apiserver to serve again (%s)" % (node, where))
    stray = {node: names for node, names in stray_manifests().items() if names}
    assert not stray, "%s: files the kubelet would run in the manifests directories: %s" % (where, stray)
    store = state["keystore"]
    for node, entries in state["nodes"].items():
        for kind, name, fingerprint in entries:
            assert name in store and store[name][1] == fingerprint, (
                "%s: %s holds %s:%s (%s), which the keystore does not hold" % (where, node, kind, name, fingerprint))
    reads = {node: {name for _k, name, _f in entries} for node, entries in state["nodes"].items()}
    for node, entries in state["nodes"].items():
        write = entries[0][1] if entries else None
        unreadable = sorted(other for other, names in reads.items() if write not in names)
        assert not unreadable, "%s: %s writes %s, which %s cannot read" % (where, node, write, unreadable)
    for node, ip in NODES.items():
        view = namespace_data(ip)
        lost = sorted(set(reference) - set(view))
        changed = sorted(name for name in reference if name in view and view[name] != reference[name])
        assert not lost and not changed and len(view) == len(reference), (
            "%s: %s's apiserver lost %d and changed %d Secrets (e.g. %s)" % (
                where, node, len(lost), len(changed), (lost + changed)[:5]))


# ---------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------

def _current_key():
    """The one secretbox key every node writes (and holds alone), or None."""
    held = {tuple(node_keys(node)) for node in NODES}
    if len(held) == 1:
        entries = held.pop()
        if len(entries) == 1 and entries[0][0] == "secretbox":
            return entries[0][1]
    return None


def enable_once(logs):
    """Converge the lab to one secretbox key (restart mode) unless every node already holds one alone."""
    if _current_key() is None:
        result = subprocess.run(
            [os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "ansible-playbook"),
             "-i", lab_path("inventory.yml"), "kubecrypt.at_rest.enable",
             "-e", json.dumps(dict(EXTRA_VARS, kubecrypt_provider="secretbox"))],
            env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT,
            check=False)
        log_path = os.path.join(logs, "enable.log")
        with open(log_path, "w") as handle:
            handle.write(result.stdout)
        assert result.returncode == 0, "enable failed; see %s" % log_path
    assert _current_key(), "the lab does not converge to one secretbox key"


@pytest.fixture(scope="module")
def rotation_lab():
    """The lab with NAMESPACE's Secrets, converged to one secretbox key.

    The logs of every run go to test-logs/resume/ in the lab directory (they
    show no key material).
    """
    logs = lab_path("test-logs", "resume")
    os.makedirs(logs, exist_ok=True)
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        create_secrets(SECRETS, namespace=NAMESPACE, prefix="resume")
    enable_once(logs)
    reference = namespace_data(NODES["cp1"])
    assert len(reference) == SECRETS, "%s holds %d Secrets, not %d" % (NAMESPACE, len(reference), SECRETS)
    return {"logs": logs, "reference": reference}


@pytest.mark.parametrize("round_name,points", ROUNDS, ids=[name for name, _points in ROUNDS])
def test_rotate_resumes_after_sigkill(rotation_lab, round_name, points):
    old = _current_key()
    assert old, "the round must start from one key on every node"
    started = time.monotonic()
    report = []
    try:
        _rotate_with_kills(round_name, points, old, rotation_lab["logs"], rotation_lab["reference"], report)
    finally:
        print("\nround %s (from %s), %.0fs:\n%s" % (round_name, old, time.monotonic() - started, "\n".join(report)))


def _rotate_with_kills(round_name, points, old, logs, reference, report):
    keys_before = set(keystore())
    kills = [point for point in points if isinstance(point, Kill)]
    apiserver_kills = [point for point in points if isinstance(point, ApiserverKill)]
    on_nodes = None  # the first key of this round seen on a node after a kill
    for number in range(len(kills) + 1):
        point = kills[number] if number < len(kills) else None
        log_path = os.path.join(logs, "%s-%02d.log" % (round_name, number))
        store_before = keystore()
        run = run_rotate(log_path, point, apiserver_kills if point else ())
        # What a run adds to the keystore as "generated" is what it generated,
        # even when the kill came before it could say so.
        run_generated = sorted(name for name, entry in keystore().items()
                               if name not in store_before and entry[2] == "generated")
        if on_nodes is not None:
            assert not run_generated, (
                "run %d generated %s although %s of this rotation was already on a node; see %s"
                % (number, run_generated, on_nodes, log_path))
        if point is None:
            assert run.rc == 0, "the final run of round %s failed (rc %s); see %s" % (round_name, run.rc, log_path)
            report.append("  final run: rc 0 in %.0fs%s" % (
                run.elapsed, ", generated %s" % run_generated if run_generated else ""))
            break
        assert run.killed_at, "run %d ended (rc %s) before its kill point %r; see %s" % (
            number, run.rc, point.name, log_path)
        for apiserver_kill in list(apiserver_kills):
            if any(apiserver_kill.name in event for event in run.events):
                apiserver_kills.remove(apiserver_kill)
                report.append("  %s" % apiserver_kill.name)
        state = observe()
        moment = phase_of(state, old)
        report.append("  killed at %-55s -> %-20s %s%s" % (
            run.killed_at, moment, describe(state, old),
            " (this run generated %s)" % ", ".join(run_generated) if run_generated else ""))
        if point.expect:
            assert moment == point.expect, "kill point %r left the lab at %r, not %r (%s); see %s" % (
                point.name, moment, point.expect, describe(state, old), log_path)
        new_on_nodes = {name for entries in state["nodes"].values() for _k, name, _f in entries} - {old}
        if on_nodes is None and new_on_nodes:
            assert len(new_on_nodes) == 1, "more than one new key on the nodes: %s" % sorted(new_on_nodes)
            on_nodes = new_on_nodes.pop()
        check_between(state, reference, "after kill %r" % point.name)
    assert not apiserver_kills, "these apiserver kills never happened: %s" % [p.name for p in apiserver_kills]

    # The round's end state.
    new = _current_key()
    assert new and new != old, "every node must hold one new key alone; they hold %s" % {
        node: [name for _k, name, _f in node_keys(node)] for node in NODES}
    if on_nodes is not None:
        assert new == on_nodes, "the rotation ended with %s, not %s, which was on the nodes when a run was killed" % (
            new, on_nodes)
    store = keystore()
    made = sorted(set(store) - keys_before)
    # The first run escrowed the key and recorded the rotation before its kill;
    # every re-run resumed that key.
    assert made == [new], "the round generated %s, not only %s: a re-run generated a key of its own" % (made, new)
    assert store[new][2] == "generated", "%s was imported into the keystore, not generated" % new
    for node in NODES:
        names = {name for _k, name, _f in node_keys(node)}
        assert old not in names, "the old key %s is still on %s" % (old, node)
        assert node_keys(node)[0][2] == store[new][1], "%s's key %s differs from the keystore's" % (node, new)
    result = labcheck.check("secretbox:" + new)
    assert result["ok"], "labcheck after round %s: %s" % (round_name, json.dumps(result, sort_keys=True))
    check_between(observe(), reference, "after round %s" % round_name)
    assert etcd_notations(NAMESPACE) == {"secretbox:" + new: SECRETS}, etcd_notations(NAMESPACE)
    report.append("  -> every Secret under %s on every apiserver, old key %s on no node; keys generated: %s"
                  % (new, old, made))


def test_rotate_killed_in_the_last_prune_roll_does_not_rotate_again(rotation_lab):
    """A kill while the last node restarts with the pruned config: the re-run only finishes that rotation."""
    logs, reference = rotation_lab["logs"], rotation_lab["reference"]
    old = _current_key()
    assert old, "the test must start from one key on every node"
    run = run_rotate(os.path.join(logs, "last-prune-00.log"),
                     kill("prune: cp3 restarting", phase("prune"), task("Wait until the config is served by cp3"),
                          delay=1.0))
    assert run.killed_at, "the run ended (rc %s) before the last prune roll" % run.rc
    state = observe()
    assert phase_of(state, old) == "done", describe(state, old)
    check_between(state, reference, "after the kill in the last prune roll")
    killed_runs_key = _current_key()
    store_before = keystore()
    run = run_rotate(os.path.join(logs, "last-prune-01.log"))
    assert run.rc == 0, "the re-run failed (rc %s)" % run.rc
    check_between(observe(), reference, "after the re-run")
    final = _current_key()
    assert final, "the re-run did not converge to one key on every node"
    assert etcd_notations(NAMESPACE) == {"secretbox:" + final: SECRETS}, etcd_notations(NAMESPACE)
    generated = sorted(set(keystore()) - set(store_before))
    # The nodes looked exactly like a finished rotation; the controller's
    # record of the rotation it started is what tells the re-run to finish it.
    assert not generated, "the re-run generated %s instead of only finishing the rotation to %s" % (
        generated, killed_runs_key)
    assert final == killed_runs_key, "the re-run rotated again, to %s, instead of finishing the rotation to %s" % (
        final, killed_runs_key)
    result = labcheck.check("secretbox:" + final)
    assert result["ok"], "labcheck after the re-run: %s" % json.dumps(result, sort_keys=True)
