"""A kubelet stand-in for the lab: runs one node's static pods as processes.

What it shares with the real kubelet, because the collection's safety depends
on it:

* every file in the manifests directory whose name does not start with a dot
  is decoded as a pod (so ``kube-apiserver.yaml.bak`` is a pod, and
  ``.kube-apiserver.yaml.tmp`` is not);
* pods are identified by ``metadata.name`` and namespace; a second file that
  declares a pod of the same name is ignored as a duplicate (files are read in
  name order, as os.ReadDir returns them);
* a pod is recreated when its decoded object changes (the kubelet's static pod
  UID is a hash of the object and its source file), so a change to an
  annotation restarts it and a change to a comment does not;
* a pod whose file disappears is stopped; a container that exits is restarted
  with a growing back-off, like restartPolicy Always.

What it does not do: images (``command[0]`` is looked up in the lab's bin
directory, then on PATH), probes, resource limits, and namespaces other than a
UTS namespace that gives each node its own hostname and, with ``--node-dir``,
a mount namespace that shows a directory private to the node at a path all
nodes share (the lab's KMS plugin socket).  Host paths and container paths
must be equal (kubeadm mounts them that way).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import yaml

POLL_SECONDS = 0.5
BACKOFF_START = 1.0
BACKOFF_MAX = 10.0


def log(message):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    sys.stdout.write("%s %s\n" % (stamp, message))
    sys.stdout.flush()


class Container:
    def __init__(self, pod, spec):
        self.pod = pod
        self.name = spec.get("name", "container")
        self.spec = spec
        self.process = None
        self.started_at = None
        self.restarts = 0
        self.next_start = 0.0
        self.backoff = BACKOFF_START
        self.last_exit = None

    def argv(self, bin_dir):
        command = list(self.spec.get("command") or []) + list(self.spec.get("args") or [])
        if not command:
            raise ValueError("container %s has no command" % self.name)
        binary = command[0]
        if "/" not in binary:
            candidate = os.path.join(bin_dir, binary)
            resolved = candidate if os.access(candidate, os.X_OK) else shutil.which(binary)
            if not resolved:
                raise ValueError("container %s: %s not found in %s or on PATH" % (self.name, binary, bin_dir))
            command[0] = resolved
        return [str(part) for part in command]

    def start(self, kubelet):
        argv = self.argv(kubelet.bin_dir)
        env = dict(os.environ)
        for item in self.spec.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
        log_path = os.path.join(kubelet.log_dir, "%s.log" % self.pod.name)
        handle = open(log_path, "ab")
        handle.write(("==== %s starting container %s (restart %d)\n" % (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), self.name, self.restarts)).encode())
        handle.flush()
        if kubelet.node_dirs:
            # A mount namespace of its own shows each of the node's private
            # directories at its shared path, as if that path were on the
            # node's own disk: three nodes on one machine can then use one
            # path (say, a KMS plugin's socket) in one EncryptionConfiguration.
            binds = " && ".join('mount --bind "%s" "%s"' % pair for pair in kubelet.node_dirs)
            argv = ["unshare", "--uts", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                    'hostname "$0" && %s && exec "$@"' % binds, kubelet.node] + argv
        elif kubelet.uts:
            # A UTS namespace of its own gives each node's apiserver its own
            # hostname, from which kube-apiserver derives its identity lease.
            argv = ["unshare", "--uts", "--", "/bin/sh", "-c",
                    'hostname "$0" && exec "$@"', kubelet.node] + argv
        self.process = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=kubelet.node_root, start_new_session=True,
        )
        handle.close()
        self.started_at = time.time()
        log("pod %s container %s started pid %d" % (self.pod.name, self.name, self.process.pid))

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def stop(self, grace):
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.time() + grace
            while time.time() < deadline and self.process.poll() is None:
                time.sleep(0.1)
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()
        log("pod %s container %s stopped (exit %s)" % (self.pod.name, self.name, self.process.returncode))
        self.process = None


class Pod:
    def __init__(self, name, source, uid, manifest):
        self.name = name
        self.source = source
        self.uid = uid
        self.grace = float((manifest.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        self.containers = [Container(self, spec) for spec in (manifest["spec"].get("containers") or [])]

    def stop(self):
        for container in self.containers:
            container.stop(self.grace)


class Kubelet:
    def __init__(self, node, node_root, manifests, bin_dir, log_dir, state_file, uts, node_dirs=()):
        self.node = node
        self.node_root = node_root
        self.manifests = manifests
        self.bin_dir = bin_dir
        self.log_dir = log_dir
        self.state_file = state_file
        self.uts = uts
        self.node_dirs = list(node_dirs)
        self.pods = {}
        self.ignored = {}
        self.reported = set()
        self.stopping = False

    def report_once(self, key, message):
        if key not in self.reported:
            self.reported.add(key)
            log(message)

    def desired(self):
        """Decode the manifests directory as the kubelet's file source does."""
        pods = {}
        ignored = {}
        try:
            names = sorted(os.listdir(self.manifests))
        except FileNotFoundError:
            names = []
        for filename in names:
            if filename.startswith("."):
                continue
            path = os.path.join(self.manifests, filename)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as handle:
                    raw = handle.read()
                manifest = yaml.safe_load(raw)
                if not isinstance(manifest, dict) or manifest.get("kind") != "Pod":
                    raise ValueError("not a Pod")
                name = manifest["metadata"]["name"]
                namespace = manifest["metadata"].get("namespace") or "default"
                if not (manifest.get("spec") or {}).get("containers"):
                    raise ValueError("pod has no containers")
            except Exception as error:  # the kubelet logs and skips undecodable files
                digest = hashlib.sha256(raw if "raw" in locals() else b"").hexdigest()
                ignored[filename] = "could not decode: %s" % error
                self.report_once(("bad", filename, digest), "ignoring %s: could not decode a pod: %s" % (filename, error))
                continue
            full_name = "%s_%s" % (name, namespace)
            if full_name in pods:
                ignored[filename] = "duplicate pod name %s (already declared by %s)" % (
                    name, pods[full_name][0])
                self.report_once(("dup", filename, full_name),
                                 "pod from %s failed validation due to duplicate pod name %s, ignoring"
                                 % (filename, name))
                continue
            uid = hashlib.md5(
                (json.dumps(manifest, sort_keys=True, default=str) + "host:" + self.node + "file:" + path).encode()
            ).hexdigest()
            pods[full_name] = (filename, uid, manifest, name)
        return pods, ignored

    def sync(self):
        desired, self.ignored = self.desired()
        for full_name in list(self.pods):
            pod = self.pods[full_name]
            want = desired.get(full_name)
            if want is None or want[1] != pod.uid:
                log("pod %s %s: stopping" % (
                    pod.name, "removed" if want is None else "changed (%s)" % want[0]))
                pod.stop()
                del self.pods[full_name]
        now = time.time()
        for full_name, (filename, uid, manifest, name) in desired.items():
            pod = self.pods.get(full_name)
            if pod is None:
                pod = Pod(name, filename, uid, manifest)
                self.pods[full_name] = pod
                log("pod %s from %s: creating (uid %s)" % (name, filename, uid))
            for container in pod.containers:
                if container.alive():
                    if now - (container.started_at or now) > 60:
                        container.backoff = BACKOFF_START
                    continue
                if container.process is not None:
                    container.last_exit = container.process.returncode
                    log("pod %s container %s exited with %s; back-off %.0fs" % (
                        pod.name, container.name, container.last_exit, container.backoff))
                    container.process = None
                    container.restarts += 1
                    container.next_start = now + container.backoff
                    container.backoff = min(container.backoff * 2, BACKOFF_MAX)
                if now >= container.next_start:
                    try:
                        container.start(self)
                    except (OSError, ValueError) as error:
                        self.report_once(("start", pod.uid, str(error)), "pod %s: cannot start: %s" % (pod.name, error))
                        container.next_start = now + container.backoff
        self.write_state()

    def write_state(self):
        state = {
            "node": self.node,
            "kubelet_pid": os.getpid(),
            "updated": time.time(),
            "pods": {
                pod.name: {
                    "source": pod.source,
                    "uid": pod.uid,
                    "containers": {
                        container.name: {
                            "pid": container.process.pid if container.alive() else None,
                            "started_at": container.started_at,
                            "restarts": container.restarts,
                            "last_exit": container.last_exit,
                        }
                        for container in pod.containers
                    },
                }
                for pod in self.pods.values()
            },
            "ignored": self.ignored,
        }
        temp = self.state_file + ".tmp"
        with open(temp, "w") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
        os.replace(temp, self.state_file)

    def run(self):
        def _terminate(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
        log("kubelet stand-in for %s watching %s" % (self.node, self.manifests))
        while not self.stopping:
            self.sync()
            time.sleep(POLL_SECONDS)
        log("stopping all pods")
        # Each pod with its own grace period, all at once as the kubelet does,
        # except that etcd goes last: an apiserver whose etcd went away first
        # spends its whole grace period failing to shut down cleanly.
        for last in (False, True):
            stoppers = [threading.Thread(target=pod.stop) for pod in self.pods.values()
                        if (pod.name == "etcd") == last]
            for stopper in stoppers:
                stopper.start()
            for stopper in stoppers:
                stopper.join()
        self.pods = {}
        self.write_state()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--node-root", required=True)
    parser.add_argument("--manifests", required=True)
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--state-file", required=True)
    parser.add_argument("--no-uts", action="store_true", help="do not give pods their own hostname")
    parser.add_argument("--node-dir", action="append", default=[], metavar="PRIVATE:SHARED",
                        help="show this node's directory PRIVATE to its pods at the path SHARED (a bind mount in "
                             "a mount namespace of each pod; implies a UTS namespace too); may be repeated")
    args = parser.parse_args(argv)
    node_dirs = []
    for pair in args.node_dir:
        private, sep, shared = pair.partition(":")
        if not sep or not os.path.isabs(private) or not os.path.isabs(shared) or '"' in pair:
            parser.error("--node-dir wants PRIVATE:SHARED, two absolute paths without quotes, not %r" % pair)
        node_dirs.append((private, shared))
    Kubelet(args.node, args.node_root, args.manifests, args.bin_dir, args.log_dir,
            args.state_file, not args.no_uts, node_dirs).run()


if __name__ == "__main__":
    main()
