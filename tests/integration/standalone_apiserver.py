"""An extra kube-apiserver for tests, on the lab's etcd but under an etcd prefix of its own.

It lets a test configure encryption at rest (and restart with another write
provider) to get real ciphertexts, without touching the shared lab: its own
``--etcd-prefix``, its own address (a free ``127.0.0.2x``), its own CA,
serving and admin certificates and service-account keys; only the lab's etcd
client certificate is borrowed.  etcd compaction is off (compaction is global
to etcd and the lab's apiservers already do it).

    server = StandaloneApiserver(workdir, "/kubecrypt-test-eei-1a2b3c4d")
    server.start(encryption_config_yaml)        # waits for /readyz
    server.kubectl("create", "secret", ...)
    server.restart(other_config_yaml, storage_media_type="application/json")
    server.stop()                                # by pid
    server.purge_etcd_prefix()                   # removes everything it stored

Only for tests; nothing in the collection uses it.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

from labctl import LAB, NODES, REPO, etcdctl_env, lab_path

sys.path.insert(0, os.path.join(REPO, "lab"))
import pki  # noqa: E402  (lab-local module: certificate helpers)

PORT = 6443
CANDIDATE_IPS = ["127.0.0.%d" % last for last in range(21, 30)]
READY_TIMEOUT = 120.0
# What purge_etcd_prefix accepts, so that a bug can never delete the lab's /registry.
_TEST_PREFIX = re.compile(r"/kubecrypt-test-[a-z0-9][a-z0-9-]{3,62}")


def free_ip(candidates=CANDIDATE_IPS, port=PORT):
    """The first candidate address on which ``port`` can be bound."""
    for ip in candidates:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                continue
            raise
        finally:
            probe.close()
        return ip
    raise RuntimeError("no free address among %s for port %d" % (", ".join(candidates), port))


class StandaloneApiserver(object):
    """One kube-apiserver process; see the module docstring."""

    def __init__(self, workdir, etcd_prefix, ip=None, node="cp1"):
        if not _TEST_PREFIX.fullmatch(etcd_prefix):
            raise ValueError("etcd_prefix must look like /kubecrypt-test-<name>, not %r" % etcd_prefix)
        self.workdir = workdir
        self.etcd_prefix = etcd_prefix
        self.ip = ip or free_ip()
        self.url = "https://%s:%d" % (self.ip, PORT)
        self.node_pki = lab_path("nodes", node, "etc", "kubernetes", "pki")
        self.etcd_servers = ",".join("https://%s:2379" % ip for ip in NODES.values())
        self.process = None
        self.log_path = os.path.join(workdir, "kube-apiserver.log")
        self.encryption_config = os.path.join(workdir, "encryption-config.yaml")
        self.kubeconfig = os.path.join(workdir, "admin.conf")
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        self._write_pki()

    # -- files -----------------------------------------------------------------

    def _path(self, name):
        return os.path.join(self.workdir, name)

    def _write_pki(self):
        authority = pki.Authority("kubecrypt-test-ca")
        pki.write_public(self._path("ca.crt"), authority.cert_pem)
        pki.write_pair(self.workdir, "serving", authority.issue(
            "kube-apiserver", server=True, dns=("localhost", "kubernetes"), ips=(self.ip, "10.96.0.1")))
        pki.write_pair(self.workdir, "admin", authority.issue("kubernetes-admin", "system:masters", client=True))
        sa_key, sa_pub = pki.service_account_keys()
        pki.write_private(self._path("sa.key"), sa_key)
        pki.write_public(self._path("sa.pub"), sa_pub)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standalone", "cluster": {
                "server": self.url, "certificate-authority": self._path("ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": self._path("admin.crt"), "client-key": self._path("admin.key")}}],
            "contexts": [{"name": "admin@standalone", "context": {"cluster": "standalone", "user": "admin"}}],
            "current-context": "admin@standalone",
        }
        pki.write_private(self.kubeconfig, yaml.safe_dump(config).encode())

    def argv(self, storage_media_type=None):
        argv = [
            lab_path("bin", "kube-apiserver"),
            "--advertise-address=%s" % self.ip,
            "--bind-address=%s" % self.ip,
            "--secure-port=%d" % PORT,
            "--authorization-mode=Node,RBAC",
            "--client-ca-file=%s" % self._path("ca.crt"),
            "--tls-cert-file=%s" % self._path("serving.crt"),
            "--tls-private-key-file=%s" % self._path("serving.key"),
            "--cert-dir=%s" % self.workdir,
            "--endpoint-reconciler-type=none",
            "--etcd-servers=%s" % self.etcd_servers,
            "--etcd-cafile=%s" % os.path.join(self.node_pki, "etcd", "ca.crt"),
            "--etcd-certfile=%s" % os.path.join(self.node_pki, "apiserver-etcd-client.crt"),
            "--etcd-keyfile=%s" % os.path.join(self.node_pki, "apiserver-etcd-client.key"),
            "--etcd-prefix=%s" % self.etcd_prefix,
            # Compaction is global to etcd; leave it to the lab's apiservers.
            "--etcd-compaction-interval=0",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file=%s" % self._path("sa.pub"),
            "--service-account-signing-key-file=%s" % self._path("sa.key"),
            "--service-cluster-ip-range=10.96.0.0/12",
            "--profiling=false",
        ]
        if os.path.exists(self.encryption_config):
            argv.append("--encryption-provider-config=%s" % self.encryption_config)
        if storage_media_type:
            argv.append("--storage-media-type=%s" % storage_media_type)
        return argv

    # -- process -----------------------------------------------------------------

    def start(self, encryption_config=None, storage_media_type=None):
        """Write ``encryption_config`` (YAML text; none keeps the previous file), start, wait for /readyz."""
        if self.process is not None:
            raise RuntimeError("already running (pid %d)" % self.process.pid)
        if encryption_config is not None:
            pki.write_private(self.encryption_config, encryption_config.encode())
        with open(self.log_path, "ab") as log:
            log.write(("\n==== start %s\n" % " ".join(self.argv(storage_media_type)[1:])).encode())
            log.flush()
            self.process = subprocess.Popen(self.argv(storage_media_type), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.workdir)
        self._wait_ready()

    def restart(self, encryption_config=None, storage_media_type=None):
        self.stop()
        self.start(encryption_config, storage_media_type)

    def stop(self, grace=30.0):
        """Stop the process this object started (by its pid) and reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)

    def _tls(self):
        context = ssl.create_default_context(cafile=self._path("ca.crt"))
        context.load_cert_chain(self._path("admin.crt"), self._path("admin.key"))
        return context

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        detail = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("kube-apiserver exited with %s; end of %s:\n%s" % (
                    self.process.returncode, self.log_path, self.log_tail()))
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=3, context=self._tls()) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                detail = "HTTP %d" % exc.code
            except (OSError, ssl.SSLError) as exc:
                detail = str(exc)
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("kube-apiserver at %s not ready after %ds (%s); end of its log:\n%s" % (
            self.url, READY_TIMEOUT, detail, self.log_tail()))

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as handle:
                return "\n".join(handle.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- use -----------------------------------------------------------------------

    def kubectl(self, *args, check=True, input=None):
        result = subprocess.run([lab_path("bin", "kubectl"), "--kubeconfig", self.kubeconfig] + list(args),
                                input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError("kubectl %s failed: %s" % (" ".join(args), result.stderr.strip()))
        return result

    def etcd_key(self, resource_path, namespace, name):
        """The etcd key of an object, e.g. ``etcd_key("secrets", "default", "s1")``."""
        return "%s/%s/%s/%s" % (self.etcd_prefix, resource_path, namespace, name)

    def purge_etcd_prefix(self):
        """Delete every etcd key under this server's own prefix (refuses any other prefix)."""
        if not _TEST_PREFIX.fullmatch(self.etcd_prefix):
            raise ValueError("refusing to delete %r" % self.etcd_prefix)
        subprocess.run([lab_path("bin", "etcdctl"), "del", "--prefix", self.etcd_prefix + "/"],
                       env=etcdctl_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=True)


__all__ = ["StandaloneApiserver", "free_ip", "LAB"]
