"""A kube-apiserver of the tests' own, beside the lab.

The lab's apiservers run without encryption and are shared; tests that need an
EncryptionConfiguration, an automatic reload or restarts start one more
kube-apiserver on a 127.0.0.3x address, against the lab's etcd but under an
etcd prefix of its own (``/kubecrypt-test-<x>``), with the lab's certificates
and a serving certificate issued by the lab's CA for its address.  It is
stopped by pid and its etcd prefix is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import json
import time
import urllib.error
import urllib.request
import uuid

import yaml

from labctl import LAB, REPO, etcdctl_env, lab_path

sys.path.insert(0, os.path.join(REPO, "lab"))
import pki  # noqa: E402  (the lab's certificate helper)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

PORT = 6443
ETCD_SERVERS = "https://127.0.0.11:2379,https://127.0.0.12:2379,https://127.0.0.13:2379"


def _lab_authority():
    """The lab's kubernetes CA as a ``pki.Authority`` that can issue certificates."""
    ca_dir = lab_path("nodes", "cp1", "etc", "kubernetes", "pki")
    authority = pki.Authority.__new__(pki.Authority)
    with open(os.path.join(ca_dir, "ca.crt"), "rb") as handle:
        authority.cert = x509.load_pem_x509_certificate(handle.read())
    with open(os.path.join(ca_dir, "ca.key"), "rb") as handle:
        authority.key = serialization.load_pem_private_key(handle.read(), password=None)
    return authority


class StandaloneApiserver:
    """One kube-apiserver process on ``ip``:6443 with an etcd prefix of its own."""

    def __init__(self, ip="127.0.0.31", name=None, encryption_config=None, automatic_reload=False,
                 extra_flags=()):
        self.ip = ip
        self.name = name or "t%s" % uuid.uuid4().hex[:8]
        self.prefix = "/kubecrypt-test-%s" % self.name
        self.url = "https://%s:%d" % (ip, PORT)
        self.work_dir = tempfile.mkdtemp(prefix="kubecrypt-standalone-")
        self.config_dir = os.path.join(self.work_dir, "enc")
        os.makedirs(self.config_dir, mode=0o700)
        self.config_path = os.path.join(self.config_dir, "encryption-config.yaml")
        self.log_path = os.path.join(self.work_dir, "kube-apiserver.log")
        self.automatic_reload = automatic_reload
        self.extra_flags = list(extra_flags)
        self.encrypted = encryption_config is not None
        if encryption_config is not None:
            self.write_encryption_config(encryption_config)
        self.process = None
        self.ca_cert = lab_path("pki", "ca.crt")
        self.client_cert = lab_path("pki", "admin.crt")
        self.client_key = lab_path("pki", "admin.key")
        self.etcd = {
            "etcd_endpoints": ETCD_SERVERS.split(","),
            "etcd_ca_cert": lab_path("pki", "etcd-ca.crt"),
            "etcd_cert": lab_path("pki", "etcd-client.crt"),
            "etcd_key": lab_path("pki", "etcd-client.key"),
        }
        self._issue_serving_cert()
        self.kubeconfig = os.path.join(self.work_dir, "admin.conf")
        self._write_kubeconfig()

    # -- files -------------------------------------------------------------

    def _issue_serving_cert(self):
        cert_pem, key_pem = _lab_authority().issue(
            "kube-apiserver", server=True, dns=("localhost",), ips=(self.ip, "127.0.0.1"))
        self.tls_cert = os.path.join(self.work_dir, "apiserver.crt")
        self.tls_key = os.path.join(self.work_dir, "apiserver.key")
        pki.write_public(self.tls_cert, cert_pem)
        pki.write_private(self.tls_key, key_pem)

    def _write_kubeconfig(self):
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standalone", "cluster": {"server": self.url,
                                                            "certificate-authority": self.ca_cert}}],
            "users": [{"name": "admin", "user": {"client-certificate": self.client_cert,
                                                 "client-key": self.client_key}}],
            "contexts": [{"name": "admin@standalone", "context": {"cluster": "standalone", "user": "admin"}}],
            "current-context": "admin@standalone",
        }
        with open(self.kubeconfig, "w") as handle:
            yaml.safe_dump(config, handle)
        os.chmod(self.kubeconfig, 0o600)

    def write_encryption_config(self, text):
        """Replace the EncryptionConfiguration atomically; return its bytes."""
        data = text.encode() if isinstance(text, str) else text
        temp = os.path.join(self.config_dir, ".encryption-config.yaml.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, self.config_path)
        return data

    def auth_params(self, **extra):
        """Module parameters (k8s auth) for this apiserver."""
        params = {"kubeconfig": self.kubeconfig, "host": self.url}
        params.update(extra)
        return params

    # -- process -----------------------------------------------------------

    def argv(self):
        pki_dir = lab_path("nodes", "cp1", "etc", "kubernetes", "pki")
        argv = [
            lab_path("bin", "kube-apiserver"),
            "--advertise-address=%s" % self.ip,
            "--allow-privileged=true",
            "--authorization-mode=Node,RBAC",
            "--bind-address=%s" % self.ip,
            "--client-ca-file=%s/ca.crt" % pki_dir,
            "--enable-admission-plugins=NodeRestriction",
            "--endpoint-reconciler-type=none",
            "--etcd-cafile=%s/etcd/ca.crt" % pki_dir,
            "--etcd-certfile=%s/apiserver-etcd-client.crt" % pki_dir,
            "--etcd-keyfile=%s/apiserver-etcd-client.key" % pki_dir,
            "--etcd-servers=%s" % ETCD_SERVERS,
            "--etcd-prefix=%s" % self.prefix,
            "--proxy-client-cert-file=%s/front-proxy-client.crt" % pki_dir,
            "--proxy-client-key-file=%s/front-proxy-client.key" % pki_dir,
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-client-ca-file=%s/front-proxy-ca.crt" % pki_dir,
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-username-headers=X-Remote-User",
            "--secure-port=%d" % PORT,
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file=%s/sa.pub" % pki_dir,
            "--service-account-signing-key-file=%s/sa.key" % pki_dir,
            "--service-cluster-ip-range=10.96.0.0/12",
            "--tls-cert-file=%s" % self.tls_cert,
            "--tls-private-key-file=%s" % self.tls_key,
        ]
        if self.encrypted:
            argv.append("--encryption-provider-config=%s" % self.config_path)
            if self.automatic_reload:
                argv.append("--encryption-provider-config-automatic-reload=true")
        return argv + self.extra_flags

    def start(self, wait=True, timeout=120):
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("already running (pid %d)" % self.process.pid)
        handle = open(self.log_path, "ab")
        handle.write(("==== start %s\n" % time.strftime("%H:%M:%S")).encode())
        handle.flush()
        self.process = subprocess.Popen(self.argv(), stdout=handle, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.work_dir)
        handle.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def stop(self, grace=30):
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def restart(self, wait=True, timeout=120):
        self.stop()
        return self.start(wait=wait, timeout=timeout)

    def _context(self):
        context = ssl.create_default_context(cafile=self.ca_cert)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def get(self, path, timeout=5):
        """(status, body text) of a GET, or (None, error text)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout, context=self._context()) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except (OSError, ssl.SSLError) as error:
            return None, str(error)

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError("kube-apiserver exited (%s); log:\n%s" % (self.process.returncode, self.log_tail()))
            last = self.get("/readyz")
            if last[0] == 200:
                return
            time.sleep(0.5)
        raise RuntimeError("kube-apiserver on %s not ready after %ss (%r); log:\n%s" % (
            self.ip, timeout, last, self.log_tail()))

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as handle:
                return "\n".join(handle.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def metrics(self):
        status, body = self.get("/metrics", timeout=15)
        if status != 200:
            raise RuntimeError("GET /metrics: %s %s" % (status, body[:200]))
        return body

    def kubectl(self, *args, check=True, input=None):
        result = subprocess.run([lab_path("bin", "kubectl"), "--kubeconfig", self.kubeconfig] + list(args),
                                input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError("kubectl %s failed: %s" % (" ".join(args), result.stderr.strip()))
        return result

    # -- etcd --------------------------------------------------------------

    def etcd_key(self, resource, namespace, name):
        return "%s/%s/%s/%s" % (self.prefix, resource, namespace, name)

    def etcd_get_raw(self, key):
        result = subprocess.run([lab_path("bin", "etcdctl"), "get", key, "--print-value-only"],
                                env=etcdctl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                timeout=60, check=False)
        if result.returncode != 0:
            raise AssertionError("etcdctl get %s failed: %s" % (key, result.stderr.decode(errors="replace")))
        return result.stdout[:-1] if result.stdout.endswith(b"\n") else result.stdout

    def cleanup(self):
        """Stop the process, remove this apiserver's etcd prefix and its files."""
        self.stop()
        subprocess.run([lab_path("bin", "etcdctl"), "del", "--prefix", self.prefix + "/"],
                       env=etcdctl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                       check=False)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()


def run_module(name, args, check_mode=False, timeout=600):
    """Run ``kubecrypt.at_rest.<name>`` with ``args`` as Ansible runs a module; return its JSON result.

    The result has ``failed`` set when the module failed.
    """
    collections = os.path.join(REPO, ".venv", "collections")
    if not os.path.isdir(os.path.join(collections, "ansible_collections", "kubecrypt", "at_rest")):
        raise RuntimeError("the collection is not linked into .venv/collections (run make venv)")
    module_args = dict(args)
    module_args["_ansible_check_mode"] = check_mode
    fd, args_path = tempfile.mkstemp(prefix="kubecrypt-args-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": module_args}, handle)
    env = dict(os.environ)
    env["PYTHONPATH"] = collections + os.pathsep + env.get("PYTHONPATH", "")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ansible_collections.kubecrypt.at_rest.plugins.modules.%s" % name, args_path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=timeout, check=False)
    finally:
        os.unlink(args_path)
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise AssertionError("module %s printed no JSON (rc %d):\n%s\n%s" % (
            name, result.returncode, result.stdout[-2000:], result.stderr[-2000:]))


def secretbox_config(keys, identity_first=False, resources=("secrets",)):
    """An EncryptionConfiguration for ``resources``: secretbox ``keys`` [(name, b64)], identity last.

    With ``identity_first`` identity is the write provider and the keys only read.
    """
    secretbox = {"secretbox": {"keys": [{"name": name, "secret": secret} for name, secret in keys]}}
    providers = [secretbox, {"identity": {}}]
    if identity_first:
        providers.reverse()
    return yaml.safe_dump({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": list(resources), "providers": providers}],
    }, sort_keys=False)


__all__ = ["StandaloneApiserver", "run_module", "secretbox_config", "LAB"]
