"""make demo: encryption at rest enabled on the lab, from plaintext to encrypted, with proof.

    python lab/demo.py

1. the lab: started when it is not running; reset (lab.py down, then up)
   when it is not at plaintext, for example after an earlier demo;
2. 1,000 Secrets in namespace kubecrypt-demo, and one of them as etcd stores it;
3. kubecrypt.at_rest.verify: the etcd scan before;
4. kubecrypt.at_rest.enable: each phase's plan, each node's roll, the rewrite;
5. kubecrypt.at_rest.verify: the etcd scan after;
6. an independent check (tests/integration/labcheck.py): raw etcd values, and
   every apiserver returns every Secret with the same data;
7. a before/after summary.

The playbooks' output is shown through lab/callback_plugins/kubecrypt_demo.py.
KUBECRYPT_LAB_NET and KUBECRYPT_LAB_DIR select another lab, as for lab.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import labcheck  # noqa: E402  (shared with the integration tests)
from labctl import LAB, LB, NODES, ansible_env, ensure_namespace, etcd_get_raw, kubectl, lab_path  # noqa: E402

NAMESPACE = "kubecrypt-demo"
COUNT = 1000
PROBE = "demo-00000"
CONFIG_NAME = "encryption-config.yaml"


def say(text=""):
    print(text, flush=True)


def heading(text):
    say("\n" + "=" * 100)
    say("== " + text)
    say("=" * 100)


def shown(path):
    relative = os.path.relpath(path, REPO)
    return path if relative.startswith("..") else relative


def lab(command):
    """Run lab.py ``command`` with its output shown; True when it succeeded."""
    return subprocess.run([sys.executable, os.path.join(HERE, "lab.py"), command], check=False).returncode == 0


def lab_is_up():
    return subprocess.run([sys.executable, os.path.join(HERE, "lab.py"), "status"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False).returncode == 0


def not_plaintext():
    """Why the lab is not at plaintext without any encryption configuration ([] when it is)."""
    with open(lab_path("inventory.yml")) as handle:
        hosts = yaml.safe_load(handle)["all"]["children"]["kube_control_plane"]["hosts"]
    reasons = []
    configured = [name for name, node in sorted(hosts.items())
                  if os.path.exists(os.path.join(node["kubecrypt_config_dir"], CONFIG_NAME))]
    if configured:
        reasons.append("%s hold an encryption configuration" % ", ".join(configured))
    flagged = []
    for name, node in sorted(hosts.items()):
        with open(node["kubecrypt_apiserver_manifest"]) as handle:
            if "--encryption-provider-config" in handle.read():
                flagged.append(name)
    if flagged:
        reasons.append("the apiservers of %s run with --encryption-provider-config" % ", ".join(flagged))
    stored = labcheck.etcd_secrets()
    encrypted = sum(1 for notation in stored.values() if notation != "identity")
    if encrypted:
        reasons.append("%d of %d secrets in etcd are encrypted" % (encrypted, len(stored)))
    return reasons


def create_secrets():
    """Create the demo's Secrets that are missing; returns how many were created."""
    ensure_namespace(NAMESPACE)
    listing = kubectl("get", "secrets", "-n", NAMESPACE, "-o", "name")
    existing = set(line.split("/", 1)[-1] for line in listing.stdout.split())
    missing = [index for index in range(COUNT) if "demo-%05d" % index not in existing]
    for start in range(0, len(missing), 500):
        items = [{
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "demo-%05d" % index, "namespace": NAMESPACE},
            "stringData": {"password": "value-%05d" % index, "note": "kubecrypt demo secret"},
        } for index in missing[start:start + 500]]
        kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return len(missing)


def describe_stored(index=0):
    """How etcd stores one demo Secret: its prefix, never ciphertext or key material."""
    key = "/registry/secrets/%s/demo-%05d" % (NAMESPACE, index)
    raw = etcd_get_raw(key)
    value = b"value-%05d" % index
    if raw.startswith(b"k8s:enc:"):
        prefix = b":".join(raw.split(b":", 5)[:5]) + b":"
        form = "%r followed by %d bytes of ciphertext" % (prefix.decode(), len(raw) - len(prefix))
    else:
        form = "%r... (%d bytes of protobuf, not encrypted)" % (raw[:12], len(raw))
    say("etcd %s: %s" % (key, form))
    say("the Secret's value %r is %s in etcd" % (value.decode(), "READABLE" if value in raw else "not readable"))


def run_playbook(playbook):
    """Run a playbook of the collection with the demo's view; returns (rc, seconds, events)."""
    fd, events_path = tempfile.mkstemp(prefix="kubecrypt-demo-", suffix=".jsonl")
    os.close(fd)
    env = ansible_env()
    env.update(ANSIBLE_STDOUT_CALLBACK="kubecrypt_demo", ANSIBLE_CALLBACK_PLUGINS=os.path.join(HERE, "callback_plugins"),
               KUBECRYPT_DEMO_EVENTS=events_path)
    argv = [os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "ansible-playbook"),
            "-i", lab_path("inventory.yml"), playbook]
    say("$ ansible-playbook -i %s %s" % (shown(lab_path("inventory.yml")), playbook))
    started = time.monotonic()
    try:
        rc = subprocess.run(argv, env=env, check=False).returncode
        seconds = time.monotonic() - started
        with open(events_path) as handle:
            events = [json.loads(line) for line in handle if line.strip()]
    finally:
        os.unlink(events_path)
    say("(%s: exit %d after %s)" % (playbook, rc, duration(seconds)))
    return rc, seconds, events


def messages(events, task):
    return [event["msg"] for event in events if event.get("task") == task and "msg" in event]


def report(events):
    """The verify report: {provider: count} of the secrets, and the line about the write provider."""
    found = messages(events, "Report")
    if not found:
        return None
    last = found[-1]
    return dict(by_provider=(last.get("by_resource") or {}).get("secrets", {}).get("by_provider", {}),
                under_write=last.get("under_write_provider"), nodes_write=last.get("nodes_write", {}))


def duration(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return "%dm%02ds" % (minutes, seconds) if minutes else "%ds" % seconds


def summarize(before, after, rewrites, phases, enable_seconds, check):
    """The before/after table and the facts under it."""
    write_provider = sorted(set(after["nodes_write"].values()))
    served = ", ".join("%s %d" % item for item in sorted(check["secrets_served"].items()))
    providers = sorted(set(before["by_provider"]) | set(after["by_provider"]),
                       key=lambda notation: (notation != "identity", notation))
    rows = [("secrets stored as", "before", "after")]
    for notation in providers:
        label = "identity (plaintext)" if notation == "identity" else notation
        rows.append((label, str(before["by_provider"].get(notation, 0)), str(after["by_provider"].get(notation, 0))))
    width = max(len(row[0]) for row in rows) + 2
    rule = "  " + "-" * (width + 18)
    for index, row in enumerate(rows):
        say("  %s %8s %8s" % (row[0].ljust(width), row[1], row[2]))
        if index == 0:
            say(rule)
    say(rule)
    rewritten = sum(result.get("rewritten", 0) for result in rewrites)
    rewrite_seconds = sum(result.get("elapsed", 0) for result in rewrites)
    rate = rewritten / rewrite_seconds if rewrite_seconds else 0
    facts = [
        ("objects rewritten", "%d in %.1fs (%.0f objects/s, %d batch%s)" % (
            rewritten, rewrite_seconds, rate, len(rewrites), "" if len(rewrites) == 1 else "es")),
        ("enable took", "%s, phases %s" % (duration(enable_seconds), ", ".join(phases))),
        ("under the write provider", "%s (%s)" % (after["under_write"], ", ".join(write_provider))),
        ("every apiserver returns", "%s: %s, %s" % (
            "every secret" if check["ok"] else "NOT every secret", served,
            "the same data" if check["apiservers_agree"] else "DIFFERENT data")),
    ]
    label_width = max(len(label) for label, _value in facts) + 2
    for label, value in facts:
        say("  %s %s" % (label.ljust(label_width), value))


def fail(text):
    say("\ndemo FAILED: %s" % text)
    return 1


def main():
    started = time.monotonic()
    heading("kubecrypt.at_rest demo: encryption at rest on a 3-node HA control plane (%s)" % shown(LAB))
    say("What it does: 1,000 Secrets stored in plaintext; scan etcd; enable encryption at rest with the")
    say("collection's playbooks; scan again; check that every apiserver still returns every Secret.")

    heading("1. The lab")
    if not lab_is_up():
        say("the lab is not running: starting it")
        if not lab("up"):
            return fail("the lab did not start")
    reasons = not_plaintext()
    if reasons:
        say("The lab is not at plaintext: %s." % "; ".join(reasons))
        say("The demo starts from plaintext, so it RESETS THE LAB now (lab.py down, then lab.py up):")
        say("everything stored in it is removed, and its keystore with it.")
        if not (lab("down") and lab("up")):
            return fail("the lab reset failed")
    say("the load balancer https://%s:6443 and the apiservers %s serve; no encryption configuration anywhere" % (
        LB, ", ".join("%s https://%s:6443" % item for item in sorted(NODES.items()))))

    heading("2. {:,} Secrets, stored in plaintext".format(COUNT))
    created = create_secrets()
    say("created %d Secrets in namespace %s (%d were there already)" % (created, NAMESPACE, COUNT - created))
    describe_stored()

    heading("3. Scan etcd before: kubecrypt.at_rest.verify")
    _rc, _seconds, events = run_playbook("kubecrypt.at_rest.verify")
    before = report(events)
    if before is None:
        return fail("the verify playbook gave no report")

    heading("4. Enable encryption at rest: kubecrypt.at_rest.enable")
    say("Every phase is confirmed on every apiserver before the next: add the new key as a read key, make it")
    say("the write key, rewrite the stored Secrets, scan etcd, then remove identity.  The apiservers pick up")
    say("each new config by automatic reload (they poll the file about once a minute), so this takes minutes.")
    rc, enable_seconds, enable_events = run_playbook("kubecrypt.at_rest.enable")
    if rc != 0:
        return fail("kubecrypt.at_rest.enable failed (exit %d); its output above says why" % rc)
    rewrites = [event["result"] for event in enable_events if event.get("module") == "storage_rewrite"]
    phases = [plan["phase"] for plan in messages(enable_events, "Show the plan")]

    heading("5. Scan etcd after: kubecrypt.at_rest.verify")
    _rc, _seconds, events = run_playbook("kubecrypt.at_rest.verify")
    after = report(events)
    if after is None:
        return fail("the verify playbook gave no report")

    heading("6. Independent check: raw etcd values and every apiserver's view (tests/integration/labcheck.py)")
    write_provider = sorted(set(after["nodes_write"].values()))
    check = labcheck.check(write_provider[0] if len(write_provider) == 1 else "secretbox")
    describe_stored()
    served = ", ".join("%s %d" % item for item in sorted(check["secrets_served"].items()))
    say("etcd holds %d Secrets: %s" % (check["secrets_in_etcd"], ", ".join(
        "%d under %s" % (count, notation) for notation, count in sorted(check["by_provider"].items()))))
    say("every apiserver returns every Secret, with the same data: %s (%s)" % (
        "yes" if check["apiservers_agree"] and not check["unreadable"] else "NO",
        served))

    heading("Summary")
    summarize(before, after, rewrites, phases, enable_seconds, check)
    say("\nThe lab keeps running, encrypted (make lab-status, make lab-down).  `make demo` again resets it first.")
    say("demo finished in %s" % duration(time.monotonic() - started))
    return 0 if check["ok"] else fail("the independent check did not pass: %s" % json.dumps(check))


if __name__ == "__main__":
    sys.exit(main())
