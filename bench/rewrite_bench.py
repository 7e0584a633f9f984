"""Rewrite benchmark: storage_rewrite against `kubectl get secrets -A -o json | kubectl replace -f -`.

    .venv/bin/python bench/rewrite_bench.py [--counts 2000,10000] [--repeat 2] [--reset-lab]

Runs against the lab named by KUBECRYPT_LAB_NET / KUBECRYPT_LAB_DIR (the
default lab when they are not set) and RESETS it first (lab.py down, then up):
every object in it is removed.  It refuses when the lab holds data it did not
create itself, unless --reset-lab is given.

For each count it creates that many Secrets (namespace ``bench``), then
repeats: switch the apiservers' write key, so that every Secret is stale and
stored under another secretbox key, run one rewrite, check in etcd that every
Secret is stored under the new key.  kubectl and storage_rewrite alternate
(kubectl first in even trials, storage_rewrite first in odd ones), so both
face the same work: read every object under one secretbox key, write it under
another.  Every key stays readable on every apiserver all the time, so a
switch is always safe, and it is confirmed on every apiserver (served config
hash) before the timed run starts.

What is measured, per run: wall time, objects per second, peak RSS (VmHWM)
and CPU time (wait4) of the client processes (kubectl: both processes of the
pipeline; storage_rewrite: the module process, run as Ansible runs it, from
its file with an arguments file), and the CPU time the lab's apiservers, etcd
members and haproxy spent meanwhile.  Keys live in memory and in 0600 files
of a private directory only; nothing prints them.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from concurrent.futures import ThreadPoolExecutor

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import labcheck  # noqa: E402  (the lab checker the integration tests use)
from labctl import LAB, NET, NODES, kubectl, lab_path  # noqa: E402

COLLECTIONS = os.path.join(REPO, ".venv", "collections")
NAMESPACE = "bench"
OWNER_MARK = ".rewrite-bench"
CONFIG_NAME = "encryption-config.yaml"


def say(message=""):
    print(message, flush=True)


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# ---------------------------------------------------------------------------
# Measuring processes
# ---------------------------------------------------------------------------

class Usage(object):
    """Wall time, peak RSS (KiB) and CPU seconds of finished child processes."""

    def __init__(self, wall, peak_rss_kib, cpu):
        self.wall = wall
        self.peak_rss_kib = peak_rss_kib
        self.cpu = cpu


def _reap(process):
    """Wait for ``process`` with wait4; returns (exit code, rusage).

    The rusage gives CPU time, not the peak RSS: its ru_maxrss also counts
    the memory the child shared with this process before exec (vfork), so a
    small child of a big benchmark process would look big.  PeakRss measures
    the program itself.
    """
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage


class PeakRss(object):
    """The peak RSS (KiB) of a child process after its exec: its VmHWM, polled until it exits.

    VmHWM belongs to the process's memory map, which exec replaces, so it
    counts the program's own pages only.  Samples are taken only once the
    process shows ``argv`` as its command line (before the exec it shows this
    process's).  VmHWM never decreases, so the last sample is the peak up to
    the last POLL seconds of the process's life.
    """

    POLL = 0.01

    def __init__(self, process, argv):
        self.peak_kib = 0
        self._pid = process.pid
        self._cmdline = b"\0".join(arg.encode() for arg in argv) + b"\0"
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        base = "/proc/%d/" % self._pid
        while True:
            try:
                with open(base + "cmdline", "rb") as handle:
                    exec_done = handle.read() == self._cmdline
                with open(base + "status") as handle:
                    status = handle.read()
            except OSError:
                return
            if "VmHWM:" not in status:
                return  # a zombie: exited
            if exec_done:
                self.peak_kib = max(self.peak_kib, int(status.split("VmHWM:")[1].split()[0]))
            time.sleep(self.POLL)

    def result(self):
        """The peak in KiB; call after the process was reaped."""
        self._thread.join()
        if not self.peak_kib:
            raise BenchError("no memory sample of process %d" % self._pid)
        return self.peak_kib


def _cpu(usage):
    return usage.ru_utime + usage.ru_stime


def pod_cpu_seconds():
    """CPU seconds used so far by every process the lab's kubelet stand-ins run, and haproxy."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = []
    for node in NODES:
        try:
            with open(lab_path("nodes", node, "kubelet-state.json")) as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            continue
        for pod in state.get("pods", {}).values():
            pids += [c["pid"] for c in pod.get("containers", {}).values() if c.get("pid")]
    try:
        with open(lab_path("pids", "haproxy.pid")) as handle:
            pids.append(int(handle.read().strip()))
    except (OSError, ValueError):
        pass
    total = 0.0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def cpu_model():
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def memory_gib():
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024.0 / 1024.0
    return 0.0


def machine_cpu():
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


class Meter(object):
    """The lab's CPU seconds and the machine's busy share over one run."""

    def __init__(self):
        self.lab = pod_cpu_seconds()
        self.machine = machine_cpu()
        self.started = time.monotonic()

    def stop(self):
        busy, total = machine_cpu()
        wall = time.monotonic() - self.started
        return dict(lab_cpu=pod_cpu_seconds() - self.lab,
                    machine_busy=(busy - self.machine[0]) / float(max(1, total - self.machine[1])), span=wall)


# ---------------------------------------------------------------------------
# The collection's modules, run as Ansible runs them
# ---------------------------------------------------------------------------

class Modules(object):
    """Runs a module file of this collection with an arguments file, as AnsibleModule accepts it."""

    def __init__(self):
        if not os.path.isdir(os.path.join(COLLECTIONS, "ansible_collections", "kubecrypt", "at_rest")):
            raise BenchError("the collection is not linked into .venv/collections: run `make venv` first")
        self.private = tempfile.mkdtemp(prefix="kubecrypt-bench-")
        os.chmod(self.private, 0o700)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = COLLECTIONS + os.pathsep + self.env.get("PYTHONPATH", "")

    def close(self):
        shutil.rmtree(self.private, ignore_errors=True)

    def run(self, name, args):
        """``(result, Usage)``; raises BenchError with the module's message when it fails."""
        path = os.path.join(self.private, "args.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=False)}, handle)
        output = os.path.join(self.private, "result.json")
        try:
            with open(output, "wb") as stdout:
                started = time.monotonic()
                argv = [sys.executable, os.path.join(REPO, "plugins", "modules", name + ".py"), path]
                process = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, env=self.env)
                peak = PeakRss(process, argv)
                stderr = process.stderr.read()
                process.stderr.close()
                code, usage = _reap(process)
                wall = time.monotonic() - started
            with open(output, "rb") as handle:
                text = handle.read()
        finally:
            for leftover in (path, output):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        try:
            result = json.loads(text)
        except ValueError:
            raise BenchError("module %s printed no result (exit %d): %s" % (
                name, code, stderr.decode(errors="replace")[-500:]))
        if result.get("failed"):
            raise BenchError("module %s failed: %s" % (name, result.get("msg")))
        return result, Usage(wall, peak.result(), _cpu(usage))


# ---------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------

def lab_nodes():
    with open(lab_path("inventory.yml")) as handle:
        inventory = yaml.safe_load(handle)
    hosts = inventory["all"]["children"]["kube_control_plane"]["hosts"]
    nodes = []
    for name in sorted(hosts):
        node = hosts[name]
        nodes.append(dict(
            name=name, url=node["kubecrypt_apiserver_url"], kubeconfig=node["kubecrypt_kubeconfig"],
            ca=os.path.join(node["kubecrypt_pki_dir"], "ca.crt"), manifest=node["kubecrypt_apiserver_manifest"],
            config=os.path.join(node["kubecrypt_config_dir"], CONFIG_NAME), backup_dir=node["kubecrypt_backup_dir"]))
    return nodes


def lab_command(command):
    result = subprocess.run([sys.executable, os.path.join(REPO, "lab", "lab.py"), command],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    return result.returncode, result.stdout


def foreign_data():
    """What the running lab holds that this benchmark did not create (empty list: nothing)."""
    if os.path.exists(lab_path(OWNER_MARK)):
        return []
    found = []
    configured = [node["name"] for node in lab_nodes() if os.path.exists(node["config"])]
    if configured:
        found.append("an encryption configuration on %s" % ", ".join(configured))
    listing = kubectl("get", "secrets", "-A", "-o", "name", check=False)
    if listing.returncode != 0:
        found.append("secrets that cannot be listed (%s)" % listing.stderr.strip()[:200])
    elif listing.stdout.split():
        found.append("%d secrets" % len(listing.stdout.split()))
    return found


def reset_lab(force):
    running = os.path.isdir(LAB) and lab_command("status")[0] == 0
    if running:
        found = foreign_data()
        if found and not force:
            raise BenchError("the lab at %s holds %s; the benchmark resets the lab it runs on and would destroy "
                             "that. Run it against a lab of its own (KUBECRYPT_LAB_NET, KUBECRYPT_LAB_DIR) or pass "
                             "--reset-lab." % (LAB, " and ".join(found)))
    say("resetting the lab at %s (%s.10-13): lab.py down, lab.py up" % (LAB, NET))
    for command in ("down", "up"):
        code, output = lab_command(command)
        if code != 0:
            raise BenchError("lab.py %s failed:\n%s" % (command, output))
    with open(lab_path(OWNER_MARK), "w") as handle:
        handle.write("created by bench/rewrite_bench.py; it may reset this lab\n")


class Cluster(object):
    """Switches the write key of every apiserver through the collection's modules."""

    def __init__(self, modules, key_count):
        self.modules = modules
        self.nodes = lab_nodes()
        # secretbox keys, all of them readable on every apiserver all the time.
        self.keys = [{"name": "bench-k%02d" % index, "secret": base64.b64encode(secrets.token_bytes(32)).decode()}
                     for index in range(key_count)]
        self.next_key = 0

    def _resources(self, write_key):
        if write_key is None:
            providers = [{"identity": {}}, {"secretbox": {"keys": list(self.keys)}}]
        else:
            ordered = [write_key] + [key for key in self.keys if key is not write_key]
            providers = [{"secretbox": {"keys": ordered}}, {"identity": {}}]
        return [{"resources": ["secrets"], "providers": providers}]

    def _write_config(self, node, write_key):
        args = dict(path=node["config"], resources=self._resources(write_key))
        result, _usage = self.modules.run("encryption_config", args)
        return result["sha256"]

    def _wait(self, node, **options):
        args = dict(host=node["url"], kubeconfig=node["kubeconfig"], ca_cert=node["ca"], wait_timeout=300,
                    wait_sleep=1)
        args.update(options)
        result, _usage = self.modules.run("apiserver_wait", args)
        return result

    def enable_reading(self):
        """Every apiserver reads every key and still writes identity (one restart per node, one at a time)."""
        for node in self.nodes:
            before = self._wait(node)
            digest = self._write_config(node, None)
            manifest, _usage = self.modules.run("apiserver_manifest", dict(
                path=node["manifest"], encryption_config=node["config"], automatic_reload=True,
                backup_dir=node["backup_dir"]))
            options = dict(config_sha256=digest)
            if manifest.get("changed"):
                options["previous_start_time"] = before["process_start_time"]
            self._wait(node, **options)
            say("  %s reads %d secretbox keys, writes identity" % (node["name"], len(self.keys)))

    def switch_write_key(self):
        """Make the next key the write key everywhere; returns its ``secretbox:<name>`` notation."""
        if self.next_key >= len(self.keys):
            raise BenchError("out of keys")
        key = self.keys[self.next_key]
        self.next_key += 1
        started = time.monotonic()
        digests = [self._write_config(node, key) for node in self.nodes]
        for node, digest in zip(self.nodes, digests):
            self._wait(node, config_sha256=digest, expect="reload")
        notation = "secretbox:%s" % key["name"]
        say("  every apiserver writes %s (%.0fs to reload)" % (notation, time.monotonic() - started))
        return notation


def create_secrets(start, stop):
    """Secrets bench-<start>..bench-<stop-1>, written concurrently through the load balancer."""
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        kubectl("create", "namespace", NAMESPACE)
    chunks = [(first, min(first + 500, stop)) for first in range(start, stop, 500)]

    def create(bounds):
        items = [{
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "bench-%05d" % index, "namespace": NAMESPACE},
            "stringData": {"password": "value-%05d" % index, "note": "kubecrypt benchmark secret"},
        } for index in range(*bounds)]
        kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, chunks))


def check_stored(expected, count):
    """Every Secret in etcd is stored under ``expected`` and there are ``count`` of them."""
    stored = labcheck.etcd_secrets()
    by_provider = {}
    for notation in stored.values():
        by_provider[notation] = by_provider.get(notation, 0) + 1
    if by_provider != {expected: count}:
        raise BenchError("after the rewrite etcd holds %s, expected %d under %s" % (by_provider, count, expected))


# ---------------------------------------------------------------------------
# The two rewrites
# ---------------------------------------------------------------------------

def rewrite_with_kubectl(count):
    """`kubectl get secrets -A -o json | kubectl replace -f -`; both processes measured."""
    base = [lab_path("bin", "kubectl"), "--kubeconfig", lab_path("admin.conf")]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err_get, tempfile.TemporaryFile() as err_rep:
        meter = Meter()
        started = time.monotonic()
        get_argv = base + ["get", "secrets", "-A", "-o", "json"]
        replace_argv = base + ["replace", "-f", "-"]
        get = subprocess.Popen(get_argv, stdout=subprocess.PIPE, stderr=err_get)
        get_peak = PeakRss(get, get_argv)
        replace = subprocess.Popen(replace_argv, stdin=get.stdout, stdout=out, stderr=err_rep)
        replace_peak = PeakRss(replace, replace_argv)
        get.stdout.close()
        get_code, get_usage = _reap(get)
        replace_code, replace_usage = _reap(replace)
        get_rss, replace_rss = get_peak.result(), replace_peak.result()
        wall = time.monotonic() - started
        lab = meter.stop()
        out.seek(0)
        replaced = sum(1 for line in out if line.rstrip().endswith(b" replaced"))
        err_get.seek(0)
        err_rep.seek(0)
        if get_code or replace_code:
            raise BenchError("kubectl get (exit %d): %s\nkubectl replace (exit %d): %s" % (
                get_code, err_get.read().decode(errors="replace")[-500:], replace_code,
                err_rep.read().decode(errors="replace")[-500:]))
    if replaced != count:
        raise BenchError("kubectl replaced %d objects, expected %d" % (replaced, count))
    return dict(tool="kubectl", wall=wall, rate=count / wall, lab_cpu=lab["lab_cpu"], machine_busy=lab["machine_busy"],
                client_cpu=_cpu(get_usage) + _cpu(replace_usage),
                rss_kib=dict(get=get_rss, replace=replace_rss), peak_rss_kib=get_rss + replace_rss,
                rewritten=replaced)


def rewrite_with_module(modules, count, concurrency, page_size):
    """storage_rewrite in one run (batch_size above the count), the module process measured."""
    args = dict(kubeconfig=lab_path("admin.conf"), resources=["secrets"], batch_size=10 * count + 1000,
                page_size=page_size, concurrency=concurrency)
    meter = Meter()
    result, usage = modules.run("storage_rewrite", args)
    lab = meter.stop()
    if not result.get("done") or result.get("rewritten") != count or result.get("errors"):
        raise BenchError("storage_rewrite: done %s, %s rewritten, %s errors, expected %d rewritten" % (
            result.get("done"), result.get("rewritten"), result.get("errors"), count))
    return dict(tool="storage_rewrite", wall=usage.wall, rate=count / usage.wall, lab_cpu=lab["lab_cpu"],
                machine_busy=lab["machine_busy"],
                client_cpu=usage.cpu, rss_kib=dict(module=usage.peak_rss_kib), peak_rss_kib=usage.peak_rss_kib,
                rewritten=result["rewritten"], module_elapsed=result["elapsed"])


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def _mib(kib):
    return kib / 1024.0


def lab_cpu_per_object_ms(run, idle_rate):
    """The lab's CPU milliseconds per object, without what the idle lab uses anyway."""
    return max(0.0, run["lab_cpu"] - idle_rate * run["wall"]) * 1000.0 / run["count"]


def summary(runs, counts, idle_rate):
    lines = ["| objects | tool | runs | objects/s: median (each run) | wall s | peak RSS MiB | client CPU s "
             "| lab CPU ms/object | machine busy |",
             "|---:|---|---:|---|---:|---|---:|---:|---:|"]
    ratios = []
    for count in counts:
        rates = {}
        for tool in ("kubectl", "storage_rewrite"):
            mine = [run for run in runs if run["count"] == count and run["tool"] == tool]
            if not mine:
                continue
            rates[tool] = statistics.median(run["rate"] for run in mine)
            worst = max(mine, key=lambda run: run["peak_rss_kib"])
            if tool == "kubectl":
                rss = "%.0f (get %.0f + replace %.0f)" % (
                    _mib(worst["peak_rss_kib"]), _mib(worst["rss_kib"]["get"]), _mib(worst["rss_kib"]["replace"]))
            else:
                rss = "%.0f" % _mib(worst["peak_rss_kib"])
            lines.append("| %d | %s | %d | %.0f (%s) | %.1f | %s | %.1f | %.1f | %.0f%% |" % (
                count, tool, len(mine), rates[tool], ", ".join("%.0f" % r["rate"] for r in mine),
                statistics.median(r["wall"] for r in mine), rss,
                statistics.median(r["client_cpu"] for r in mine),
                statistics.median(lab_cpu_per_object_ms(r, idle_rate) for r in mine),
                100 * statistics.median(r["machine_busy"] for r in mine)))
        if len(rates) == 2:
            ratios.append((count, rates["storage_rewrite"] / rates["kubectl"]))
    lines.append("")
    lines.append("peak RSS: the maximum over the runs; kubectl's is the sum of both processes of the pipeline. "
                 "lab CPU: apiservers, etcd members, haproxy, less the idle lab's %.2f CPU/s. machine busy: "
                 "all CPUs, every process, from /proc/stat." % idle_rate)
    for count, ratio in ratios:
        lines.append("%d objects: storage_rewrite is %.1fx kubectl's throughput (target: 5x)" % (count, ratio))
    return "\n".join(lines)


def idle_usage(seconds=10.0):
    """(lab CPU/s, machine busy share) while the benchmark does nothing."""
    meter = Meter()
    time.sleep(seconds)
    used = meter.stop()
    return used["lab_cpu"] / used["span"], used["machine_busy"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="2000,10000", help="object counts, ascending (default 2000,10000)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="trials per count; each runs both tools, in alternating order (default 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="storage_rewrite concurrency (default 8)")
    parser.add_argument("--page-size", type=int, default=500, help="storage_rewrite page_size (default 500)")
    parser.add_argument("--reset-lab", action="store_true",
                        help="reset the lab even when it holds data this benchmark did not create")
    parser.add_argument("--json", help="also write every run as JSON to this file")
    args = parser.parse_args(argv)
    counts = sorted(int(value) for value in args.counts.split(","))

    say("rewrite benchmark, %s, lab %s (%s.10-13)" % (
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), LAB, NET))
    say("machine: %s, %d CPUs (%s), %.0f GiB RAM, Python %s; load average before: %s" % (
        platform.platform(), os.cpu_count(), cpu_model(), memory_gib(), platform.python_version(),
        " ".join("%.2f" % value for value in os.getloadavg())))
    modules = Modules()
    runs = []
    try:
        reset_lab(args.reset_lab)
        cluster = Cluster(modules, key_count=len(counts) * (2 * args.repeat + 1))
        say("configuring the apiservers to read %d secretbox keys (rolling restart)" % len(cluster.keys))
        cluster.enable_reading()
        idle_rate, idle_busy = idle_usage()
        say("idle: the lab uses %.2f CPU/s; the machine is %.0f%% busy without the benchmark" % (
            idle_rate, 100 * idle_busy))
        created = 0
        for count in counts:
            say("\n== %d secrets" % count)
            started = time.monotonic()
            create_secrets(created, count)
            created = count
            say("  created in %.0fs" % (time.monotonic() - started))
            # Everything under one secretbox key first (plaintext and earlier keys alike); not timed.
            expected = cluster.switch_write_key()
            prime = rewrite_with_module(modules, count, args.concurrency, args.page_size)
            check_stored(expected, count)
            say("  every secret stored under %s (untimed preparation: %.0f/s)" % (expected, prime["rate"]))
            for trial in range(args.repeat):
                order = ("kubectl", "storage_rewrite") if trial % 2 == 0 else ("storage_rewrite", "kubectl")
                for tool in order:
                    expected = cluster.switch_write_key()
                    load = os.getloadavg()[0]
                    if tool == "kubectl":
                        run = rewrite_with_kubectl(count)
                    else:
                        run = rewrite_with_module(modules, count, args.concurrency, args.page_size)
                    check_stored(expected, count)
                    run.update(count=count, trial=trial, load_before=load, load_after=os.getloadavg()[0])
                    runs.append(run)
                    say("  %-15s %6.0f objects/s  %6.1fs  peak RSS %5.0f MiB  client CPU %5.1fs  "
                        "lab CPU %4.1f ms/object  machine %3.0f%% busy  load %.1f -> %.1f; all %d under the new key" % (
                            tool, run["rate"], run["wall"], _mib(run["peak_rss_kib"]), run["client_cpu"],
                            lab_cpu_per_object_ms(run, idle_rate), 100 * run["machine_busy"], load,
                            run["load_after"], count))
    finally:
        modules.close()
    say("\nload average after: %s" % " ".join("%.2f" % value for value in os.getloadavg()))
    say("")
    say(summary(runs, counts, idle_rate))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(idle_lab_cpu_per_s=idle_rate, idle_machine_busy=idle_busy, runs=runs), handle, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print("rewrite_bench: %s" % error, file=sys.stderr)
        sys.exit(1)
