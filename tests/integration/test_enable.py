"""Issue 4 end to end: ``kubecrypt.at_rest.enable`` on a fresh lab holding 1,000 plaintext Secrets.

For each provider, on a lab of its own: every Secret in etcd ends up under the
new key, every apiserver returns every Secret with the data it had before, the
config file is 0600 and byte-identical on every node, nothing but dot-files
ever appears in a manifests directory, a second run changes nothing, and no
run prints the key.  The runs' wall times are printed (``pytest -s``) and
named in the assertion messages.

The restart cases are the fast ones; automatic reload waits for the
apiservers' poll of the file (about a minute per phase), so it runs once.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import os
import re
import stat
import struct
import time

import pytest
import yaml

from labcheck import apiserver_secrets, check
from labctl import LB, NODES, create_secrets, kubelet_state, lab_path, run_playbook

SECRETS = 1000
NAMESPACE = "enable-e2e"
CONFIG_FILE_NAME = "encryption-config.yaml"  # the role's default kubecrypt_config_file, in kubecrypt_config_dir

CASES = [
    pytest.param("aescbc", False, id="aescbc-restart"),
    pytest.param("aesgcm", False, id="aesgcm-restart"),
    pytest.param("secretbox", True, id="secretbox-automatic-reload"),
]

RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s", re.MULTILINE)

WALL_TIMES = []


@pytest.fixture(scope="module", autouse=True)
def wall_time_summary():
    yield
    if WALL_TIMES:
        print("\nenable wall times: " + "; ".join(WALL_TIMES))


# ---------------------------------------------------------------------------
# What the lab's inventory says about each node


def _inventory_hosts():
    with open(lab_path("inventory.yml")) as handle:
        inventory = yaml.safe_load(handle)
    return inventory["all"]["children"]["kube_control_plane"]["hosts"]


# ---------------------------------------------------------------------------
# Every name that ever appears in a directory (inotify: a file that lives for a
# millisecond is seen too, unlike with polling).

_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")


class NamesCreated(object):
    """Records every name created in, or moved into, some directories."""

    def __init__(self, directories):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._directories = {}
        for directory in directories:
            watch = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _IN_CREATE | _IN_MOVED_TO)
            if watch < 0:
                raise OSError(ctypes.get_errno(), "inotify_add_watch %s" % directory)
            self._directories[watch] = directory
        self.names = dict((directory, set()) for directory in directories)
        self.overflowed = False

    def collect(self):
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return self.names
            offset = 0
            while offset < len(data):
                watch, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    self.overflowed = True
                elif watch in self._directories:
                    self.names[self._directories[watch]].add(os.fsdecode(name))

    def close(self):
        os.close(self._fd)


# ---------------------------------------------------------------------------
# Key material: every form a key could be printed in


def _key_forms():
    """[(description, text)] for every escrowed key: base64 (padded, unpadded, URL-safe) and hex of its bytes."""
    try:
        with open(lab_path("keystore", "keys.yml")) as handle:
            entries = (yaml.safe_load(handle) or {}).get("keys") or []
    except OSError:
        return []
    forms = []
    for entry in entries:
        raw = base64.b64decode(entry["secret"])
        label = "%s:%s" % (entry["provider"], entry["name"])
        for kind, text in (("base64", base64.b64encode(raw).decode()),
                           ("unpadded base64", base64.b64encode(raw).decode().rstrip("=")),
                           ("url-safe base64", base64.urlsafe_b64encode(raw).decode().rstrip("=")),
                           ("hex", raw.hex()), ("upper-case hex", raw.hex().upper())):
            forms.append(("%s as %s" % (label, kind), text))
    return forms


class Run(object):
    """One playbook run as the test may show it: the output with every key form redacted."""

    def __init__(self, label, argv_extra, extra_vars):
        started = time.monotonic()
        result = run_playbook("kubecrypt.at_rest.enable", *argv_extra, extra_vars=extra_vars)
        self.seconds = time.monotonic() - started
        self.label = label
        self.rc = result.returncode
        output = result.stdout
        del result
        forms = _key_forms()
        self.leaks = sorted(set(description for description, text in forms if text in output))
        for _description, text in sorted(forms, key=lambda form: -len(form[1])):
            output = output.replace(text, "<redacted>")
        self.output = output

    def tail(self, lines=60):
        return "\n".join(self.output.splitlines()[-lines:])

    def changed_per_host(self):
        return dict((host, int(changed)) for host, changed in RECAP.findall(self.output))


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _keystore_notation(provider):
    """``provider:name`` of the one key the keystore holds for ``provider`` (a fresh lab escrows only this one)."""
    with open(lab_path("keystore", "keys.yml")) as handle:
        entries = (yaml.safe_load(handle) or {}).get("keys") or []
    names = [entry["name"] for entry in entries if entry["provider"] == provider]
    assert len(names) == 1, "the keystore holds %d %s keys: %s" % (len(names), provider, names)
    return "%s:%s" % (provider, names[0])


@pytest.mark.parametrize("provider, automatic_reload", CASES)
def test_enable_encrypts_every_secret_and_is_idempotent(fresh_lab, provider, automatic_reload):
    case = "%s (%s)" % (provider, "automatic reload" if automatic_reload else "restart")
    fresh_lab.reset()
    create_secrets(SECRETS, NAMESPACE)
    before = apiserver_secrets(LB, NAMESPACE)
    assert len(before) == SECRETS

    hosts = _inventory_hosts()
    manifests = dict((node, hosts[node]["kubecrypt_manifests_dir"]) for node in NODES)
    listed_before = dict((node, set(os.listdir(directory))) for node, directory in manifests.items())
    pods_before = dict((node, sorted(kubelet_state(node)["pods"])) for node in NODES)
    extra_vars = {"kubecrypt_provider": provider, "kubecrypt_automatic_reload": automatic_reload}

    created = NamesCreated(manifests.values())
    try:
        # -vvv on the run that generates, escrows and writes the key: the one most likely to print it.
        first = Run("first run (-vvv)", ["-vvv"], extra_vars)
        timing = "%s: first run %.0fs" % (case, first.seconds)
        assert not first.leaks, "%s printed key material: %s" % (first.label, first.leaks)
        assert first.rc == 0, "%s failed (rc %d, %s):\n%s" % (first.label, first.rc, timing, first.tail())

        # etcd: every Secret under the new key; every apiserver: every Secret, unchanged.
        notation = _keystore_notation(provider)
        report = check(notation, NAMESPACE)
        assert report["ok"] and report["offending"] == 0, "%s: %r" % (timing, report)
        assert report["by_provider"] == {notation: report["secrets_in_etcd"]}, report
        assert report["secrets_in_etcd"] >= SECRETS, report
        for node, ip in NODES.items():
            served = apiserver_secrets(ip, NAMESPACE)
            differ = sorted(name for name in set(before) | set(served) if before.get(name) != served.get(name))
            assert not differ, "%s returns %d Secrets that differ from before, e.g. %s" % (node, len(differ),
                                                                                           differ[:5])

        # The node files: the config 0600 and byte-identical everywhere; the manifests directories unchanged
        # but for dot-files, and the kubelet runs the same pods.
        configs = dict((node, os.path.join(hosts[node]["kubecrypt_config_dir"], CONFIG_FILE_NAME)) for node in NODES)
        modes = dict((node, oct(stat.S_IMODE(os.stat(path).st_mode))) for node, path in configs.items())
        assert set(modes.values()) == {"0o600"}, modes
        digests = dict((node, _sha256(path)) for node, path in configs.items())
        assert len(set(digests.values())) == 1, "the config differs between nodes: %s" % digests
        for node, directory in manifests.items():
            listed = set(os.listdir(directory))
            assert set(name for name in listed if not name.startswith(".")) == \
                set(name for name in listed_before[node] if not name.startswith(".")), (node, sorted(listed))
            assert sorted(kubelet_state(node)["pods"]) == pods_before[node], node

        second = Run("second run", [], extra_vars)
        timing += ", second run %.0fs" % second.seconds
        assert not second.leaks, "%s printed key material: %s" % (second.label, second.leaks)
        assert second.rc == 0, "%s failed (rc %d, %s):\n%s" % (second.label, second.rc, timing, second.tail())
        changed = second.changed_per_host()
        assert sorted(changed) == sorted(NODES) and set(changed.values()) == {0}, \
            "%s is not idempotent (%s): changed=%r\n%s" % (second.label, timing, changed, second.tail())

        names = created.collect()
        assert not created.overflowed, "inotify queue overflowed: cannot tell what was created"
        for node, directory in manifests.items():
            added = sorted(name for name in names[directory] - listed_before[node] if not name.startswith("."))
            assert not added, "%s: files the kubelet would run as pods appeared in %s: %s" % (
                node, directory, added)
    finally:
        created.close()
    WALL_TIMES.append(timing)
    print("\nenable " + timing)
