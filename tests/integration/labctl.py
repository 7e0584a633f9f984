"""Helpers the integration tests use to look at the lab from outside."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.environ.get("KUBECRYPT_LAB_DIR", os.path.join(REPO, ".lab"))
NET = os.environ.get("KUBECRYPT_LAB_NET", "127.0.0")
NODES = {"cp1": NET + ".11", "cp2": NET + ".12", "cp3": NET + ".13"}
LB = NET + ".10"


def lab_path(*parts):
    return os.path.join(LAB, *parts)


def config_path(node):
    """The lab's encryption config file on ``node`` (where the inventory puts it)."""
    return lab_path("nodes", node, "etc", "kubernetes", "enc", "encryption-config.yaml")


def read_providers(node):
    """``node``'s providers in order, as ``kind:key`` (``kind`` alone for a provider without keys)."""
    with open(config_path(node)) as handle:
        config = yaml.safe_load(handle)
    names = []
    for element in config["resources"][0]["providers"]:
        for kind, body in element.items():
            names += ["%s:%s" % (kind, key["name"]) for key in (body or {}).get("keys", [])] or [kind]
    return names


def manifests_dir(node):
    return lab_path("nodes", node, "etc", "kubernetes", "manifests")


def kubectl(*args, server=None, check=True, input=None):
    argv = [lab_path("bin", "kubectl"), "--kubeconfig", lab_path("admin.conf")]
    if server:
        argv += ["--server", "https://%s:6443" % server]
    result = subprocess.run(argv + list(args), input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise AssertionError("kubectl %s failed: %s" % (" ".join(args), result.stderr.strip()))
    return result


def etcdctl_env():
    env = dict(os.environ)
    with open(lab_path("etcdctl.env")) as handle:
        for line in handle:
            key, _sep, value = line.strip().partition("=")
            if key:
                env[key] = value
    return env


def etcd_get_raw(key):
    """The raw bytes etcd stores under ``key`` (b'' when absent)."""
    result = subprocess.run([lab_path("bin", "etcdctl"), "get", key, "--print-value-only"],
                            env=etcdctl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                            check=False)
    if result.returncode != 0:
        raise AssertionError("etcdctl get %s failed: %s" % (key, result.stderr.decode(errors="replace")))
    return result.stdout[:-1] if result.stdout.endswith(b"\n") else result.stdout


def kubelet_state(node):
    with open(lab_path("nodes", node, "kubelet-state.json")) as handle:
        return json.load(handle)


def pod_process(node, pod, container=None):
    """(pid, started_at) of a pod's container, or (None, None)."""
    pods = kubelet_state(node)["pods"]
    if pod not in pods:
        return None, None
    containers = pods[pod]["containers"]
    entry = containers[container] if container else next(iter(containers.values()))
    return entry["pid"], entry["started_at"]


def wait_for(predicate, timeout=90, interval=0.5, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))


def readyz(ip):
    result = kubectl("get", "--raw", "/readyz", server=ip, check=False)
    return result.returncode == 0 and result.stdout.strip() == "ok"


def write_atomically(path, text):
    """Replace a file the way a careful tool does: a dot-file, then rename."""
    directory, name = os.path.split(path)
    temp = os.path.join(directory, "." + name + ".test-tmp")
    with open(temp, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o600)
    os.replace(temp, path)


def ansible_env():
    """The environment ansible-playbook runs with in the tests: this checkout as the collection."""
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = os.path.join(REPO, ".venv", "collections")
    env["ANSIBLE_COLLECTIONS_SCAN_SYS_PATH"] = "false"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_STDOUT_CALLBACK"] = "default"
    env["ANSIBLE_CALLBACK_RESULT_FORMAT"] = "yaml"
    env["ANSIBLE_LOCALHOST_WARNING"] = "false"
    env["ANSIBLE_DEPRECATION_WARNINGS"] = "false"
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def run_playbook(playbook, *args, extra_vars=None, timeout=1800, inventory=None):
    """Run ``playbook`` (a path, or a collection playbook such as
    ``kubecrypt.at_rest.enable``) against the lab; return the CompletedProcess
    with stdout and stderr merged into stdout."""
    argv = [os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "ansible-playbook"),
            "-i", inventory or lab_path("inventory.yml"), playbook]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    argv += list(args)
    return subprocess.run(argv, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=False)


def ensure_namespace(namespace):
    if kubectl("get", "namespace", namespace, check=False).returncode != 0:
        kubectl("create", "namespace", namespace)


def create_secrets(count, namespace="default", prefix="secret", chunk=500):
    """Create ``count`` small Secrets (``<prefix>-<i>``) through the load balancer, in chunks."""
    ensure_namespace(namespace)
    for start in range(0, count, chunk):
        items = [{
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "%s-%05d" % (prefix, index), "namespace": namespace},
            "stringData": {"password": "value-%05d" % index, "note": "kubecrypt lab secret"},
        } for index in range(start, min(start + chunk, count))]
        kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def reset_lab():
    """A fresh lab: everything stopped and removed, then started again (plaintext, no config)."""
    script = os.path.join(REPO, "lab", "lab.py")
    for command in ("down", "up"):
        result = subprocess.run([sys.executable, script, command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, check=False)
        if result.returncode != 0:
            raise AssertionError("lab %s failed:\n%s" % (command, result.stdout))


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_molecule(command, scenario, state_dir, *args, timeout=3600):
    """Run ``molecule <command> -s <scenario>`` on this checkout and assert that it passed.

    Molecule keeps its state in ``state_dir`` (this run's, not another
    checkout's).  The scenarios pick up the config by rolling restarts
    (KUBECRYPT_AUTOMATIC_RELOAD=false, minutes faster than the apiservers'
    reload poll) unless the caller's environment says otherwise.  Returns
    (output without colours, seconds).
    """
    env = ansible_env()
    env.setdefault("KUBECRYPT_AUTOMATIC_RELOAD", "false")
    env.update({"MOLECULE_EPHEMERAL_DIRECTORY": str(state_dir), "NO_COLOR": "1", "PY_COLORS": "0"})
    executable = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "molecule")
    started = time.monotonic()
    result = subprocess.run([executable, command, "-s", scenario] + list(args), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - started
    output = ANSI.sub("", result.stdout)
    print("\nmolecule %s -s %s: rc %d in %.0fs" % (command, scenario, result.returncode, seconds))
    assert result.returncode == 0, "molecule %s -s %s failed (rc %d, %.0fs):\n%s" % (
        command, scenario, result.returncode, seconds, tail(output))
    return output, seconds


def assert_molecule_steps(scenario, output, steps):
    """Molecule reported each of ``steps`` of ``scenario`` as successful, and idempotence held."""
    for step in steps:
        assert re.search(r"%s \S+ %s\S* Executed: Successful" % (scenario, step), output), \
            "molecule did not report the %s step of %s as successful:\n%s" % (step, scenario, tail(output))
    assert "Idempotence test failed" not in output, tail(output)


def tail(output, lines=80):
    return "\n".join(output.splitlines()[-lines:])
