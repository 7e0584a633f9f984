"""The lab's KMS v2 plugin: lab infrastructure, not part of the collection.

    kms_plugin.py init    --keks FILE                 create the KEK file with a first KEK (once)
    kms_plugin.py rotate  --keks FILE                 add a new KEK and make it the current one
    kms_plugin.py retire  --keks FILE --key-id ID     drop an old KEK (never the current one)
    kms_plugin.py keks    --keks FILE                 list the key IDs (never the keys)
    kms_plugin.py serve   --keks FILE --socket PATH   serve v2.KeyManagementService on a unix socket
    kms_plugin.py status  --socket PATH               call Status and print it as JSON

It plays the part of a real KMS v2 plugin (what kube-apiserver talks to over
``unix://`` for ``kms`` providers with ``apiVersion: v2``) and of the remote
KMS behind it: every node runs ``serve`` as a static pod, and all of them read
the same KEK file, so that a DEK encrypted on one node decrypts on every other,
as with one key in a cloud KMS.

* The gRPC service is the upstream one: ``lab/kms_v2/api.proto`` is a verbatim
  copy of ``apis/v2/api.proto`` of the Go module ``k8s.io/kms`` (v0.37.2),
  compiled in memory at start-up by grpcio-tools (``grpc.protos_and_services``),
  so no generated code is kept in the repository and none can drift from the
  installed protobuf runtime.
* The KEK file (JSON, mode 0600) holds every KEK by key ID and names the
  current one.  ``Status`` and ``Encrypt`` report the current key ID;
  ``Decrypt`` uses the KEK the request's ``key_id`` names, so data under an
  older KEK stays readable until that KEK is retired.  The file is re-read
  when it changes: a rotation reaches every node at once, and kube-apiserver
  notices the new key ID at its next ``Status`` call.
* ``Encrypt`` seals the DEK (or DEK seed) kube-apiserver sends with AES-256-GCM
  under the current KEK, bound to the key ID as additional data; the
  ciphertext is nonce (12) + ciphertext + tag, and an annotation names the
  format.

Nothing here prints or logs key material: only key IDs, request UIDs and sizes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import stat
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "kms_v2")
SERVICE = "v2.KeyManagementService"
API_VERSION = "v2"
KEK_SIZE = 32
NONCE_SIZE = 12
FORMAT_ANNOTATION = "kms.lab.kubecrypt.io"
FORMAT = b"aes-256-gcm/v1"
KEY_ID_PREFIX = "kek-"


class KekError(Exception):
    """The KEK file is missing, malformed, or the request names an unknown KEK."""


def log(message):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    sys.stdout.write("%s kms-plugin %s\n" % (stamp, message))
    sys.stdout.flush()


# --------------------------------------------------------------------------
# The KEK file: the lab's "remote KMS"


def read_keks(path):
    """``(current key ID, {key ID: key bytes})`` from the KEK file."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise KekError("no KEK file at %s (run: kms_plugin.py init --keks %s)" % (path, path))
    except (OSError, ValueError) as error:
        raise KekError("cannot read the KEK file %s: %s" % (path, error))
    keks = {}
    for entry in data.get("keks") or []:
        key = base64.b64decode(entry["key"])
        if len(key) != KEK_SIZE:
            raise KekError("KEK %s in %s is not %d bytes" % (entry.get("id"), path, KEK_SIZE))
        keks[entry["id"]] = key
    current = data.get("current")
    if current not in keks:
        raise KekError("the current KEK %r of %s is not in the file" % (current, path))
    return current, keks


def _write_keks(path, data):
    """Replace the KEK file atomically, 0600 from the start."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _load_raw(path):
    with open(path) as handle:
        return json.load(handle)


def _new_kek(number):
    return {
        "id": "%s%d" % (KEY_ID_PREFIX, number),
        "key": base64.b64encode(os.urandom(KEK_SIZE)).decode("ascii"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def init_keks(path):
    """Create the KEK file with a first KEK; an existing file is kept.  Returns the current key ID."""
    if os.path.exists(path):
        return read_keks(path)[0]
    kek = _new_kek(1)
    _write_keks(path, {"current": kek["id"], "keks": [kek], "next": 2})
    return kek["id"]


def rotate_keks(path):
    """Add a new KEK and make it current; the old ones stay for Decrypt.  Returns the new key ID."""
    data = _load_raw(path)
    number = int(data.get("next") or len(data.get("keks") or []) + 1)
    kek = _new_kek(number)
    data["keks"] = list(data.get("keks") or []) + [kek]
    data["current"] = kek["id"]
    data["next"] = number + 1
    _write_keks(path, data)
    return kek["id"]


def retire_kek(path, key_id):
    """Drop an old KEK: data still under it can no longer be read."""
    data = _load_raw(path)
    if key_id == data.get("current"):
        raise KekError("%s is the current KEK; rotate first" % key_id)
    kept = [entry for entry in data.get("keks") or [] if entry["id"] != key_id]
    if len(kept) == len(data.get("keks") or []):
        raise KekError("there is no KEK %s in %s" % (key_id, path))
    data["keks"] = kept
    _write_keks(path, data)


class KekStore(object):
    """The KEK file, re-read whenever it changes on disk (a rotation on any node reaches all)."""

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp = None
        self._current = None
        self._keks = {}

    def snapshot(self):
        """``(current key ID, {key ID: key})`` as the file holds them now."""
        info = os.stat(self.path)
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            if stamp != self._stamp:
                current, keks = read_keks(self.path)
                if current != self._current:
                    log("current KEK is %s (%d KEKs available for Decrypt)" % (current, len(keks)))
                self._stamp, self._current, self._keks = stamp, current, keks
            return self._current, self._keks


def seal(key_id, kek, plaintext):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(kek).encrypt(nonce, plaintext, key_id.encode("utf-8"))


def unseal(key_id, kek, ciphertext):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    if len(ciphertext) < NONCE_SIZE + 16:
        raise KekError("the ciphertext is too short")
    return AESGCM(kek).decrypt(ciphertext[:NONCE_SIZE], ciphertext[NONCE_SIZE:], key_id.encode("utf-8"))


# --------------------------------------------------------------------------
# The gRPC service


def load_api():
    """``(messages, services)`` of the upstream v2 API, compiled in memory from lab/kms_v2/api.proto."""
    import grpc  # noqa: F401  (grpcio-tools registers its import hook through grpc)
    if PROTO_DIR not in sys.path:
        sys.path.insert(0, PROTO_DIR)
    return grpc.protos_and_services("api.proto")


def make_servicer(messages, services, store):
    import grpc

    class KeyManagementService(services.KeyManagementServiceServicer):
        def Status(self, request, context):
            try:
                current, _keks = store.snapshot()
            except (OSError, KekError) as error:
                log("Status: unhealthy: %s" % error)
                return messages.StatusResponse(version=API_VERSION, healthz="KEK file: %s" % error, key_id="unknown")
            return messages.StatusResponse(version=API_VERSION, healthz="ok", key_id=current)

        def Encrypt(self, request, context):
            try:
                current, keks = store.snapshot()
            except (OSError, KekError) as error:
                context.abort(grpc.StatusCode.UNAVAILABLE, "KEK file: %s" % error)
            log("Encrypt uid=%s: %d bytes with %s" % (request.uid, len(request.plaintext), current))
            return messages.EncryptResponse(ciphertext=seal(current, keks[current], request.plaintext),
                                            key_id=current, annotations={FORMAT_ANNOTATION: FORMAT})

        def Decrypt(self, request, context):
            try:
                _current, keks = store.snapshot()
            except (OSError, KekError) as error:
                context.abort(grpc.StatusCode.UNAVAILABLE, "KEK file: %s" % error)
            if request.key_id not in keks:
                log("Decrypt uid=%s: unknown key ID %s" % (request.uid, request.key_id))
                context.abort(grpc.StatusCode.NOT_FOUND, "no KEK with key ID %s (retired?)" % request.key_id)
            if request.annotations.get(FORMAT_ANNOTATION, FORMAT) != FORMAT:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown ciphertext format")
            try:
                plaintext = unseal(request.key_id, keks[request.key_id], request.ciphertext)
            except Exception:  # cryptography's InvalidTag, a short ciphertext: the same answer
                log("Decrypt uid=%s: the ciphertext does not open with %s" % (request.uid, request.key_id))
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the ciphertext does not open with %s" % request.key_id)
            log("Decrypt uid=%s: %d bytes with %s" % (request.uid, len(plaintext), request.key_id))
            return messages.DecryptResponse(plaintext=plaintext)

    return KeyManagementService()


def _remove_stale_socket(path):
    """Remove a socket file nobody listens on; refuse to take over a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit("%s exists and is not a socket" % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SystemExit("another KMS plugin already serves %s" % path)


def serve(args):
    import grpc
    from concurrent import futures

    messages, services = load_api()
    store = KekStore(args.keks)
    current, keks = store.snapshot()
    os.makedirs(os.path.dirname(args.socket), mode=0o700, exist_ok=True)
    _remove_stale_socket(args.socket)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    services.add_KeyManagementServiceServicer_to_server(make_servicer(messages, services, store), server)
    server.add_insecure_port("unix://" + args.socket)
    server.start()
    os.chmod(args.socket, 0o600)
    log("node %s: serving %s on unix://%s, current KEK %s (%d KEKs)" % (
        args.node or "-", SERVICE, args.socket, current, len(keks)))

    stopped = threading.Event()

    def _stop(signum, frame):
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stopped.wait()
    log("stopping")
    server.stop(grace=2).wait()
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    return 0


def status(args):
    """Call Status on a plugin socket; print ``{version, healthz, key_id}``."""
    import grpc

    messages, services = load_api()
    with grpc.insecure_channel("unix://" + args.socket) as channel:
        stub = services.KeyManagementServiceStub(channel)
        try:
            response = stub.Status(messages.StatusRequest(), timeout=args.timeout)
        except grpc.RpcError as error:
            print(json.dumps({"socket": args.socket, "error": "%s: %s" % (error.code().name, error.details())}))
            return 1
    print(json.dumps({"socket": args.socket, "version": response.version, "healthz": response.healthz,
                      "key_id": response.key_id}))
    return 0 if response.healthz == "ok" else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description="The lab's KMS v2 plugin (lab infrastructure).")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("init", "rotate", "retire", "keks", "serve"):
        sub = commands.add_parser(name)
        sub.add_argument("--keks", required=True, help="the KEK file shared by every node (JSON, 0600)")
        if name == "retire":
            sub.add_argument("--key-id", required=True)
        if name == "serve":
            sub.add_argument("--socket", required=True, help="absolute path of the unix socket to listen on")
            sub.add_argument("--node", help="the node's name, for the log")
    sub = commands.add_parser("status")
    sub.add_argument("--socket", required=True)
    sub.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            print(init_keks(args.keks))
        elif args.command == "rotate":
            print(rotate_keks(args.keks))
        elif args.command == "retire":
            retire_kek(args.keks, args.key_id)
        elif args.command == "keks":
            current, keks = read_keks(args.keks)
            print(json.dumps({"current": current, "key_ids": sorted(keks)}))
        elif args.command == "serve":
            return serve(args)
        elif args.command == "status":
            return status(args)
    except KekError as error:
        print("kms-plugin: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
