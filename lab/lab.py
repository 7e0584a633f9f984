"""The lab: a real HA control plane on one machine, loopback only.

    python lab/lab.py up       build (cached), generate, start; return when ready
    python lab/lab.py down     stop every process the lab started, remove .lab/
    python lab/lab.py status   what runs, and whether each apiserver is ready

Three etcd members and three kube-apiservers (nodes cp1..cp3 on
127.0.0.11..13), each node a kubeadm-shaped directory under .lab/nodes/, run by
one kubelet stand-in per node (lab/kubelet.py) from the node's static pod
manifests; haproxy balances 127.0.0.10:6443 across the apiservers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LAB = os.environ.get("KUBECRYPT_LAB_DIR", os.path.join(REPO, ".lab"))
# The lab's addresses: NET.10 (load balancer) and NET.11-13 (nodes).  The
# default is the lab's public contract; another NET (say 127.0.1) and another
# KUBECRYPT_LAB_DIR run a second, independent lab beside it.
NET = os.environ.get("KUBECRYPT_LAB_NET", "127.0.0")
LB_IP = NET + ".10"
PORT = 6443
NODES = [("cp1", NET + ".11"), ("cp2", NET + ".12"), ("cp3", NET + ".13")]
BINARIES = ("kube-apiserver", "kubectl", "etcd", "etcdctl")
READY_TIMEOUT = float(os.environ.get("KUBECRYPT_LAB_READY_TIMEOUT", "180"))
# The lab's KMS v2 plugin (lab/kms_plugin.py): a static pod on every node, all
# reading one KEK file.  Each node's plugin listens in a directory private to
# the node, which that node's pods see at one shared path (a mount namespace
# per pod, see kubelet.py --node-dir), so the EncryptionConfiguration names one
# endpoint and stays byte-identical on every node, as on real machines.
KMS_NAME = "lab-kms"
KMS_DIR = os.path.join(LAB, "kms")
KMS_KEKS = os.path.join(KMS_DIR, "keks.json")
KMS_SOCKET_DIR = os.path.join(LAB, "run", "kms")
KMS_SOCKET = os.path.join(KMS_SOCKET_DIR, "kms.sock")
KMS_ENDPOINT = "unix://" + KMS_SOCKET
# sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
UNIX_SOCKET_PATH_MAX = 107

sys.path.insert(0, HERE)
import pki  # noqa: E402  (lab-local module)


class LabError(Exception):
    """A component failed; the message names it and shows its log."""


def say(message):
    print("[lab] %s" % message, flush=True)


def versions():
    result = {}
    with open(os.path.join(HERE, "versions.env")) as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                result[key] = value
    return result


def node_root(name):
    return os.path.join(LAB, "nodes", name)


def kube_dir(name):
    return os.path.join(node_root(name), "etc", "kubernetes")


def kms_socket_dir(name):
    """The node-private directory its pods see at KMS_SOCKET_DIR."""
    return os.path.join(node_root(name), "run", "kms")


def pid_file(component):
    return os.path.join(LAB, "pids", component + ".pid")


# --------------------------------------------------------------------------
# Files


def link_binaries():
    bin_dir = subprocess.run(
        ["bash", os.path.join(HERE, "build-binaries.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip().splitlines()[-1]
    pins = versions()
    target = os.path.join(LAB, "bin")
    os.makedirs(target, exist_ok=True)
    for name in BINARIES:
        version = pins["ETCD_VERSION"] if name.startswith("etcd") else pins["KUBERNETES_VERSION"]
        source = os.path.join(bin_dir, "%s-%s" % (name, version))
        link = os.path.join(target, name)
        if os.path.islink(link) or os.path.exists(link):
            os.unlink(link)
        os.symlink(source, link)


def _dump(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = yaml.safe_dump(data, default_flow_style=False, sort_keys=False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def host_path_volume(name, path, kind="DirectoryOrCreate"):
    return {"hostPath": {"path": path, "type": kind}, "name": name}


def etcd_manifest(name, ip):
    pki_dir = os.path.join(kube_dir(name), "pki", "etcd")
    data_dir = os.path.join(node_root(name), "var", "lib", "etcd")
    cluster = ",".join("%s=https://%s:2380" % node for node in NODES)
    version = versions()["ETCD_VERSION"]
    command = [
        "etcd",
        "--advertise-client-urls=https://%s:2379" % ip,
        "--cert-file=%s/server.crt" % pki_dir,
        "--client-cert-auth=true",
        "--data-dir=%s" % data_dir,
        "--initial-advertise-peer-urls=https://%s:2380" % ip,
        "--initial-cluster=%s" % cluster,
        "--initial-cluster-state=new",
        "--key-file=%s/server.key" % pki_dir,
        "--listen-client-urls=https://%s:2379" % ip,
        "--listen-metrics-urls=http://%s:2381" % ip,
        "--listen-peer-urls=https://%s:2380" % ip,
        "--name=%s" % name,
        "--peer-cert-file=%s/peer.crt" % pki_dir,
        "--peer-client-cert-auth=true",
        "--peer-key-file=%s/peer.key" % pki_dir,
        "--peer-trusted-ca-file=%s/ca.crt" % pki_dir,
        "--snapshot-count=10000",
        "--trusted-ca-file=%s/ca.crt" % pki_dir,
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "annotations": {"kubeadm.kubernetes.io/etcd.advertise-client-urls": "https://%s:2379" % ip},
            "creationTimestamp": None,
            "labels": {"component": "etcd", "tier": "control-plane"},
            "name": "etcd",
            "namespace": "kube-system",
        },
        "spec": {
            "containers": [{
                "command": command,
                "image": "registry.k8s.io/etcd:%s-0" % version.lstrip("v"),
                "imagePullPolicy": "IfNotPresent",
                "name": "etcd",
                "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}},
                "volumeMounts": [
                    {"mountPath": data_dir, "name": "etcd-data"},
                    {"mountPath": pki_dir, "name": "etcd-certs"},
                ],
            }],
            "hostNetwork": True,
            "priority": 2000001000,
            "priorityClassName": "system-node-critical",
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [
                host_path_volume("etcd-certs", pki_dir),
                host_path_volume("etcd-data", data_dir),
            ],
        },
        "status": {},
    }


def apiserver_manifest(name, ip):
    pki_dir = os.path.join(kube_dir(name), "pki")
    version = versions()["KUBERNETES_VERSION"]

    def probe(path, failure, initial):
        result = {
            "failureThreshold": failure,
            "httpGet": {"host": ip, "path": path, "port": PORT, "scheme": "HTTPS"},
            "periodSeconds": 10 if path != "/readyz" else 1,
            "timeoutSeconds": 15,
        }
        if initial:
            result["initialDelaySeconds"] = initial
        return result

    command = [
        "kube-apiserver",
        "--advertise-address=%s" % ip,
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        "--bind-address=%s" % ip,
        "--client-ca-file=%s/ca.crt" % pki_dir,
        "--enable-admission-plugins=NodeRestriction",
        "--enable-bootstrap-token-auth=true",
        # Endpoints may not hold loopback addresses; the lab has no Service
        # traffic, so the apiservers do not reconcile the kubernetes Endpoints.
        "--endpoint-reconciler-type=none",
        "--etcd-cafile=%s/etcd/ca.crt" % pki_dir,
        "--etcd-certfile=%s/apiserver-etcd-client.crt" % pki_dir,
        "--etcd-keyfile=%s/apiserver-etcd-client.key" % pki_dir,
        "--etcd-servers=https://%s:2379" % ip,
        "--kubelet-client-certificate=%s/apiserver-kubelet-client.crt" % pki_dir,
        "--kubelet-client-key=%s/apiserver-kubelet-client.key" % pki_dir,
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
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
        # Not a kubeadm default, but what an apiserver behind a load balancer
        # needs: on SIGTERM it fails /readyz at once and goes on serving for
        # this long, so that the load balancer's checks (haproxy: every 1s,
        # down after 2 failures) take it out before it stops listening.
        # Without it, a rolling restart makes clients fail at random.
        "--shutdown-delay-duration=5s",
        "--tls-cert-file=%s/apiserver.crt" % pki_dir,
        "--tls-private-key-file=%s/apiserver.key" % pki_dir,
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "annotations": {
                "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": "%s:%d" % (ip, PORT)
            },
            "creationTimestamp": None,
            "labels": {"component": "kube-apiserver", "tier": "control-plane"},
            "name": "kube-apiserver",
            "namespace": "kube-system",
        },
        "spec": {
            "containers": [{
                "command": command,
                "image": "registry.k8s.io/kube-apiserver:%s" % version,
                "imagePullPolicy": "IfNotPresent",
                "livenessProbe": probe("/livez", 8, 10),
                "name": "kube-apiserver",
                "readinessProbe": probe("/readyz", 3, None),
                "resources": {"requests": {"cpu": "250m"}},
                "startupProbe": probe("/livez", 24, 10),
                "volumeMounts": [
                    {"mountPath": "/etc/ssl/certs", "name": "ca-certs", "readOnly": True},
                    {"mountPath": pki_dir, "name": "k8s-certs", "readOnly": True},
                ],
            }],
            "hostNetwork": True,
            "priority": 2000001000,
            "priorityClassName": "system-node-critical",
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [
                host_path_volume("ca-certs", "/etc/ssl/certs", "DirectoryOrCreate"),
                host_path_volume("k8s-certs", pki_dir),
            ],
        },
        "status": {},
    }


def kms_plugin_manifest(name):
    """The KMS plugin as a static pod; the kubelet stand-in starts it with the node's other pods."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "creationTimestamp": None,
            "labels": {"component": "kms-plugin", "tier": "control-plane"},
            "name": "kms-plugin",
            "namespace": "kube-system",
        },
        "spec": {
            "containers": [{
                "command": ["kms-plugin", "serve", "--keks", KMS_KEKS, "--socket", KMS_SOCKET, "--node", name],
                "image": "kubecrypt-lab/kms-plugin:local",
                "imagePullPolicy": "Never",
                "name": "kms-plugin",
                "volumeMounts": [
                    {"mountPath": KMS_DIR, "name": "keks", "readOnly": True},
                    {"mountPath": KMS_SOCKET_DIR, "name": "socket"},
                ],
            }],
            "hostNetwork": True,
            "priority": 2000001000,
            "priorityClassName": "system-node-critical",
            "terminationGracePeriodSeconds": 5,
            "volumes": [
                host_path_volume("keks", KMS_DIR, "Directory"),
                host_path_volume("socket", KMS_SOCKET_DIR),
            ],
        },
        "status": {},
    }


def write_kms_files():
    """The KEK file (once), the plugin's command in bin/, the node-private socket directories."""
    if len(KMS_SOCKET) > UNIX_SOCKET_PATH_MAX:
        raise LabError("the KMS plugin socket path %s is %d bytes, longer than a unix socket path can be (%d); "
                       "use a shorter KUBECRYPT_LAB_DIR" % (KMS_SOCKET, len(KMS_SOCKET), UNIX_SOCKET_PATH_MAX))
    os.makedirs(KMS_DIR, mode=0o700, exist_ok=True)
    os.makedirs(KMS_SOCKET_DIR, mode=0o700, exist_ok=True)
    if not os.path.exists(KMS_KEKS):
        subprocess.run([sys.executable, os.path.join(HERE, "kms_plugin.py"), "init", "--keks", KMS_KEKS],
                       check=True, stdout=subprocess.DEVNULL)
        say("created the lab KMS's first KEK (%s)" % _shown(KMS_KEKS).rstrip("/"))
    wrapper = os.path.join(LAB, "bin", "kms-plugin")
    text = "#!/bin/sh\n# The lab's KMS v2 plugin (lab infrastructure).\nexec %s %s \"$@\"\n" % (
        sys.executable, os.path.join(HERE, "kms_plugin.py"))
    with open(wrapper, "w") as handle:
        handle.write(text)
    os.chmod(wrapper, 0o755)
    for name, _ip in NODES:
        os.makedirs(kms_socket_dir(name), mode=0o700, exist_ok=True)


def write_kms_manifests():
    """Add the plugin pod to each node whose kubelet stand-in gives pods the node's socket directory.

    A kubelet started by an older lab.py (without --node-dir) would run all
    three plugins on one socket path: such a node gets no plugin until the lab
    is restarted.
    """
    for name, _ip in NODES:
        path = os.path.join(kube_dir(name), "manifests", "kms-plugin.yaml")
        if os.path.exists(path):
            continue
        pid = read_pid("kubelet-" + name)
        if not (pid and is_ours(pid) and "--node-dir" in _cmdline(pid)):
            say("%s: no KMS plugin (its kubelet stand-in predates it: make lab-down lab-up)" % name)
            continue
        _dump(path, kms_plugin_manifest(name), mode=0o600)


def kubeconfig(server, ca_path, cert_path, key_path, user="kubernetes-admin"):
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"cluster": {"certificate-authority": ca_path, "server": server}, "name": "kubernetes"}],
        "contexts": [{"context": {"cluster": "kubernetes", "user": user}, "name": "%s@kubernetes" % user}],
        "current-context": "%s@kubernetes" % user,
        "preferences": {},
        "users": [{"name": user, "user": {"client-certificate": cert_path, "client-key": key_path}}],
    }


def cluster_configuration():
    version = versions()["KUBERNETES_VERSION"]
    return {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": "kubecrypt-lab",
        "controlPlaneEndpoint": "%s:%d" % (LB_IP, PORT),
        "kubernetesVersion": version,
        "certificatesDir": "/etc/kubernetes/pki",
        "apiServer": {"extraArgs": [{"name": "endpoint-reconciler-type", "value": "none"},
                                    {"name": "shutdown-delay-duration", "value": "5s"}]},
        "etcd": {"local": {"dataDir": "/var/lib/etcd"}},
        "networking": {"serviceSubnet": "10.96.0.0/12", "dnsDomain": "cluster.local"},
    }


def write_files():
    """Generate everything under .lab/ that is missing; never regenerate."""
    if not os.path.exists(os.path.join(LAB, "pki", "ca.crt")):
        say("generating certificates")
        pki.generate(LAB, NODES, LB_IP)
    shared = os.path.join(LAB, "pki")
    for name, ip in NODES:
        root = kube_dir(name)
        manifests = os.path.join(root, "manifests")
        os.makedirs(manifests, exist_ok=True)
        for sub in ("tmp", "enc"):
            os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(node_root(name), "logs"), exist_ok=True)
        os.makedirs(os.path.join(node_root(name), "var", "lib", "etcd"), mode=0o700, exist_ok=True)
        for filename, build in (("etcd.yaml", etcd_manifest), ("kube-apiserver.yaml", apiserver_manifest)):
            path = os.path.join(manifests, filename)
            if not os.path.exists(path):
                _dump(path, build(name, ip), mode=0o600)
        admin = os.path.join(root, "admin.conf")
        if not os.path.exists(admin):
            admin_dir = os.path.join(node_root(name), "pki-admin")
            _dump(admin, kubeconfig("https://%s:%d" % (LB_IP, PORT), os.path.join(root, "pki", "ca.crt"),
                                    os.path.join(admin_dir, "admin.crt"), os.path.join(admin_dir, "admin.key")),
                  mode=0o600)
    _dump(os.path.join(LAB, "admin.conf"),
          kubeconfig("https://%s:%d" % (LB_IP, PORT), os.path.join(shared, "ca.crt"),
                     os.path.join(shared, "admin.crt"), os.path.join(shared, "admin.key")), mode=0o600)
    with open(os.path.join(LAB, "etcdctl.env"), "w") as handle:
        handle.write("ETCDCTL_ENDPOINTS=%s\n" % ",".join("https://%s:2379" % ip for _name, ip in NODES))
        handle.write("ETCDCTL_CACERT=%s\n" % os.path.join(shared, "etcd-ca.crt"))
        handle.write("ETCDCTL_CERT=%s\n" % os.path.join(shared, "etcd-client.crt"))
        handle.write("ETCDCTL_KEY=%s\n" % os.path.join(shared, "etcd-client.key"))
    _dump(os.path.join(LAB, "inventory.yml"), inventory())
    _dump(os.path.join(LAB, "kubeadm-config.yaml"), cluster_configuration())
    write_haproxy_config()


def inventory():
    hosts = {}
    for name, ip in NODES:
        root = kube_dir(name)
        pki_dir = os.path.join(root, "pki")
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "kubecrypt_node_ip": ip,
            "kubecrypt_apiserver_url": "https://%s:%d" % (ip, PORT),
            "kubecrypt_kubernetes_dir": root,
            "kubecrypt_manifests_dir": os.path.join(root, "manifests"),
            "kubecrypt_apiserver_manifest": os.path.join(root, "manifests", "kube-apiserver.yaml"),
            "kubecrypt_pki_dir": pki_dir,
            "kubecrypt_kubeconfig": os.path.join(root, "admin.conf"),
            "kubecrypt_config_dir": os.path.join(root, "enc"),
            "kubecrypt_backup_dir": os.path.join(root, "tmp", "kubecrypt-backups"),
            "kubecrypt_etcd_endpoint": "https://%s:2379" % ip,
            "kubecrypt_etcd_ca": os.path.join(pki_dir, "etcd", "ca.crt"),
            "kubecrypt_etcd_cert": os.path.join(pki_dir, "apiserver-etcd-client.crt"),
            "kubecrypt_etcd_key": os.path.join(pki_dir, "apiserver-etcd-client.key"),
            "kubecrypt_lab_node_root": node_root(name),
        }
    return {
        "all": {
            "children": {"kube_control_plane": {"hosts": hosts}},
            "vars": {
                "kubecrypt_lab_dir": LAB,
                "kubecrypt_keystore": os.path.join(LAB, "keystore", "keys.yml"),
                "kubecrypt_lb_url": "https://%s:%d" % (LB_IP, PORT),
                "kubecrypt_admin_kubeconfig": os.path.join(LAB, "admin.conf"),
                "kubecrypt_ca_cert": os.path.join(LAB, "pki", "ca.crt"),
                # The lab's KMS v2 plugin, for kubecrypt_provider=kms.
                "kubecrypt_kms_name": KMS_NAME,
                "kubecrypt_kms_endpoint": KMS_ENDPOINT,
                "kubecrypt_lab_kms_keks": KMS_KEKS,
            },
        }
    }


def write_haproxy_config():
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        # A connection an apiserver refuses (one that died without a graceful
        # shutdown, before the checks noticed) is retried on another one.
        "    retries 3",
        "    option redispatch",
        "frontend kube-apiserver",
        "    bind %s:%d" % (LB_IP, PORT),
        "    default_backend kube-apiservers",
        "backend kube-apiservers",
        "    option httpchk",
        "    http-check send meth GET uri /readyz",
        "    http-check expect status 200",
        "    default-server inter 1s fall 2 rise 1 check check-ssl verify none",
    ]
    lines += ["    server %s %s:%d" % (name, ip, PORT) for name, ip in NODES]
    with open(os.path.join(LAB, "haproxy.cfg"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# Processes


def read_pid(component):
    try:
        with open(pid_file(component)) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def is_ours(pid):
    """True when ``pid`` runs and its command line names this lab directory."""
    return LAB in _cmdline(pid)


def start_daemon(component, argv, log_path):
    pid = read_pid(component)
    if pid and is_ours(pid):
        return pid
    os.makedirs(os.path.dirname(pid_file(component)), exist_ok=True)
    handle = open(log_path, "ab")
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, cwd=LAB)
    handle.close()
    with open(pid_file(component), "w") as out:
        out.write("%d\n" % process.pid)
    return process.pid


def start_processes():
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        raise LabError("haproxy is not installed (make lab-up installs the Debian package)")
    validation = subprocess.run([haproxy, "-c", "-q", "-f", os.path.join(LAB, "haproxy.cfg")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if validation.returncode != 0:
        raise LabError("haproxy rejected .lab/haproxy.cfg:\n" + validation.stdout)
    start_daemon("haproxy", [haproxy, "-db", "-f", os.path.join(LAB, "haproxy.cfg")],
                 os.path.join(LAB, "haproxy.log"))
    for name, _ip in NODES:
        root = node_root(name)
        start_daemon("kubelet-" + name, [
            sys.executable, os.path.join(HERE, "kubelet.py"),
            "--node", name,
            "--node-root", root,
            "--manifests", os.path.join(kube_dir(name), "manifests"),
            "--bin-dir", os.path.join(LAB, "bin"),
            "--log-dir", os.path.join(root, "logs"),
            "--state-file", os.path.join(root, "kubelet-state.json"),
            "--node-dir", "%s:%s" % (kms_socket_dir(name), KMS_SOCKET_DIR),
        ], os.path.join(root, "logs", "kubelet.log"))


def tls_context(cert=True):
    context = ssl.create_default_context(cafile=os.path.join(LAB, "pki", "ca.crt"))
    if cert:
        context.load_cert_chain(os.path.join(LAB, "pki", "admin.crt"), os.path.join(LAB, "pki", "admin.key"))
    return context


def readyz(ip, timeout=3.0):
    """Return (ok, detail) for https://ip:6443/readyz."""
    try:
        with urllib.request.urlopen("https://%s:%d/readyz" % (ip, PORT), timeout=timeout,
                                    context=tls_context()) as response:
            body = response.read().decode(errors="replace")
            return response.status == 200 and body.strip() == "ok", body.strip()
    except urllib.error.HTTPError as error:
        return False, "HTTP %d %s" % (error.code, error.read().decode(errors="replace")[-300:])
    except (OSError, ssl.SSLError) as error:
        return False, str(error)


def kms_plugin_listens(name):
    """Whether the node's KMS plugin accepts connections (seen from here at the node-private path)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(os.path.join(kms_socket_dir(name), os.path.basename(KMS_SOCKET)))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def etcd_healthy(ip):
    context = ssl.create_default_context(cafile=os.path.join(LAB, "pki", "etcd-ca.crt"))
    context.load_cert_chain(os.path.join(LAB, "pki", "etcd-client.crt"), os.path.join(LAB, "pki", "etcd-client.key"))
    try:
        with urllib.request.urlopen("https://%s:2379/health" % ip, timeout=3, context=context) as response:
            return json.loads(response.read()).get("health") == "true"
    except (OSError, ValueError, ssl.SSLError):
        return False


def tail(path, lines=25):
    try:
        with open(path, "rb") as handle:
            data = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return "(no log at %s)" % os.path.relpath(path, REPO)
    return "\n".join(data[-lines:])


def wait_ready(timeout=READY_TIMEOUT):
    deadline = time.monotonic() + timeout
    pending = {"etcd " + name: ip for name, ip in NODES}
    pending.update({"kube-apiserver " + name: ip for name, ip in NODES})
    pending["haproxy " + LB_IP] = LB_IP
    pending.update({"kms-plugin " + name: ip for name, ip in NODES
                    if os.path.exists(os.path.join(kube_dir(name), "manifests", "kms-plugin.yaml"))})
    detail = {}
    while pending and time.monotonic() < deadline:
        for component, ip in list(pending.items()):
            if component.startswith("etcd"):
                ok = etcd_healthy(ip)
            elif component.startswith("kms-plugin"):
                ok = kms_plugin_listens(component.split(" ", 1)[1])
            elif component.startswith("haproxy") and any(c.startswith("kube-apiserver") for c in pending):
                continue
            else:
                ok, detail[component] = readyz(ip)
            if ok:
                say("%s ready" % component)
                del pending[component]
        check_kubelets_alive()
        if pending:
            time.sleep(1)
    if pending:
        # Name the component others depend on: etcd, then the apiservers, then
        # the load balancer in front of them.
        order = ("etcd", "kube-apiserver", "haproxy")
        component = min(pending, key=lambda name: (order.index(name.split(" ", 1)[0]), name))
        kind, where = component.split(" ", 1)
        if kind == "haproxy":
            log = os.path.join(LAB, "haproxy.log")
        else:
            log = os.path.join(node_root(where), "logs", "%s.log" % kind)
        raise LabError("%s did not become ready within %ds%s; last lines of %s:\n%s" % (
            component, timeout, (" (%s)" % detail[component]) if component in detail else "",
            os.path.relpath(log, REPO), tail(log)))


def check_kubelets_alive():
    for name, _ip in NODES:
        pid = read_pid("kubelet-" + name)
        if not pid or not is_ours(pid):
            log = os.path.join(node_root(name), "logs", "kubelet.log")
            raise LabError("the kubelet stand-in of %s is not running; last lines of %s:\n%s" % (
                name, os.path.relpath(log, REPO), tail(log)))


def kubectl(*args, check=True):
    return subprocess.run(
        [os.path.join(LAB, "bin", "kubectl"), "--kubeconfig", os.path.join(LAB, "admin.conf")] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=check)


def ensure_kubeadm_config():
    """Store the ClusterConfiguration in kube-system/kubeadm-config, as kubeadm does."""
    if kubectl("-n", "kube-system", "get", "configmap", "kubeadm-config", check=False).returncode == 0:
        return
    result = kubectl("-n", "kube-system", "create", "configmap", "kubeadm-config",
                     "--from-file=ClusterConfiguration=%s" % os.path.join(LAB, "kubeadm-config.yaml"), check=False)
    if result.returncode != 0 and "AlreadyExists" not in result.stderr:
        raise LabError("could not create kube-system/kubeadm-config: %s" % result.stderr.strip())


def _shown(path):
    """A path as the user should see it: relative to the checkout when inside it."""
    relative = os.path.relpath(path, REPO)
    return path if relative.startswith("..") else relative + "/"


def up(_args):
    started = time.monotonic()
    os.makedirs(LAB, exist_ok=True)
    link_binaries()
    write_files()
    write_kms_files()
    start_processes()
    write_kms_manifests()
    wait_ready()
    ensure_kubeadm_config()
    say("ready in %.1fs: apiservers %s, load balancer https://%s:%d" % (
        time.monotonic() - started, ", ".join("https://%s:%d" % (ip, PORT) for _name, ip in NODES), LB_IP, PORT))
    say("kubectl: .lab/bin/kubectl --kubeconfig .lab/admin.conf get --raw /readyz")


def pod_pids():
    """Every pod process the kubelet stand-ins recorded."""
    pids = []
    for name, _ip in NODES:
        try:
            with open(os.path.join(node_root(name), "kubelet-state.json")) as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            continue
        for pod in state.get("pods", {}).values():
            for container in pod.get("containers", {}).values():
                if container.get("pid"):
                    pids.append(container["pid"])
    return pids


def stop_pid(pid, grace=30.0, group=False):
    stop_pids([pid], grace, group)


def stop_pids(pids, grace=30.0, group=False):
    """SIGTERM every process of ``pids`` at once, wait up to ``grace`` seconds for all, then SIGKILL the rest."""
    waiting = []
    for pid in pids:
        try:
            (os.killpg if group else os.kill)(pid, signal.SIGTERM)
            waiting.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while waiting and time.monotonic() < deadline:
        waiting = [pid for pid in waiting if _alive(pid)]
        if waiting:
            time.sleep(0.1)
    for pid in waiting:
        try:
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid):
    """False once ``pid`` is gone or a zombie (it is not our child, normally, so we cannot reap it)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return not handle.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return False


def down(_args):
    if not os.path.isdir(LAB):
        say("nothing to stop (%s does not exist)" % _shown(LAB))
        return
    # The kubelet stand-ins stop their pods, all nodes at once; pods left
    # behind by a stand-in that died are stopped by the pids it recorded.
    kubelets = []
    for name, _ip in NODES:
        pid = read_pid("kubelet-" + name)
        if pid and is_ours(pid):
            say("stopping kubelet stand-in of %s (pid %d) and its pods" % (name, pid))
            kubelets.append(pid)
    stop_pids(kubelets, grace=60)
    for pid in pod_pids():
        if is_ours(pid):
            say("stopping leftover pod process %d" % pid)
            stop_pid(pid, group=True)
    pid = read_pid("haproxy")
    if pid and is_ours(pid):
        say("stopping haproxy (pid %d)" % pid)
        stop_pid(pid)
    shutil.rmtree(LAB)
    say("removed %s" % _shown(LAB))


def status(_args):
    if not os.path.isdir(LAB):
        say("down (.lab/ does not exist)")
        return 1
    healthy = True
    pid = read_pid("haproxy")
    running = bool(pid and is_ours(pid))
    healthy &= running
    lb_ok, lb_detail = readyz(LB_IP) if running else (False, "not running")
    healthy &= lb_ok
    print("haproxy %s:%d  pid %s  readyz %s" % (LB_IP, PORT, pid if running else "-", lb_detail))
    for name, ip in NODES:
        pid = read_pid("kubelet-" + name)
        running = bool(pid and is_ours(pid))
        healthy &= running
        print("%s %s  kubelet stand-in pid %s" % (name, ip, pid if running else "- (not running)"))
        try:
            with open(os.path.join(node_root(name), "kubelet-state.json")) as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            state = {"pods": {}, "ignored": {}}
        for pod_name, pod in sorted(state["pods"].items()):
            for container in pod["containers"].values():
                print("    pod %-16s pid %-8s restarts %d  (%s)" % (
                    pod_name, container["pid"] or "-", container["restarts"], pod["source"]))
        for filename, why in sorted(state.get("ignored", {}).items()):
            print("    ignored %s: %s" % (filename, why))
        ok, detail = readyz(ip)
        healthy &= ok
        print("    apiserver readyz: %s   etcd health: %s" % (
            "ok" if ok else detail[:120], "ok" if etcd_healthy(ip) else "not healthy"))
    return 0 if healthy else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description="The kubecrypt.at_rest lab: a local HA control plane.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the lab and wait until it is ready").set_defaults(func=up)
    commands.add_parser("down", help="stop the lab and remove .lab/").set_defaults(func=down)
    commands.add_parser("status", help="show what runs").set_defaults(func=status)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except LabError as error:
        print("[lab] FAILED: %s" % error, file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
