# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The demo's view of a playbook run (lab/demo.py sets it as the stdout callback).

It prints what a user wants to follow: the messages the role shows (what the
nodes hold, the plan of each phase, each node's roll, the rewrite progress,
the scans), the tasks that changed something, the slow steps as they start,
and failures.  It leaves out includes, skips and unchanged bookkeeping.

With KUBECRYPT_DEMO_EVENTS set, it also appends one JSON line per result of
the rewrite and scan modules, and per message, to that file, for the demo's
summary.  Results hidden by no_log stay hidden: Ansible censors them before
any callback sees them.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: kubecrypt_demo
type: stdout
short_description: The lab demo's view of a kubecrypt.at_rest playbook run
description:
  - Prints the role's messages, changed tasks, slow steps and failures; records scan and rewrite results
    as JSON lines in the file named by E(KUBECRYPT_DEMO_EVENTS).
"""

import json
import os
import textwrap

import yaml

from ansible.plugins.callback import CallbackBase

INDENT = "    "
WIDTH = 110
# Modules that take a while: their task name is shown when they start.
SLOW = ("storage_rewrite", "etcd_encryption_info", "etcd_snapshot")
RECORDED = ("storage_rewrite", "etcd_encryption_info")
RECORDED_FIELDS = ("listed", "rewritten", "unchanged", "conflicts", "gone", "errors", "elapsed", "rate", "done",
                   "total", "by_provider", "offending", "decrypt_failures", "expected_provider")


def _result(result):
    # ansible-core 2.19 names it result; earlier versions only have _result.
    return result.result if hasattr(result, "result") else result._result


def _module(task):
    action = getattr(task, "resolved_action", None) or task.action
    return action.rsplit(".", 1)[-1]


def _name(task):
    # Without the role prefix: "Show the plan", not "kubecrypt.at_rest.encryption_at_rest : Show the plan".
    return task.get_name().split(" : ", 1)[-1]


def _render(message):
    if isinstance(message, str):
        return "\n".join(textwrap.fill(line, WIDTH, initial_indent=INDENT, subsequent_indent=INDENT + "  ")
                         for line in message.splitlines() or [""])
    text = yaml.safe_dump(message, default_flow_style=False, sort_keys=False, width=WIDTH)
    return textwrap.indent(text.rstrip(), INDENT)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "kubecrypt_demo"

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self._events = os.environ.get("KUBECRYPT_DEMO_EVENTS")
        self._task = None
        self._changed_hosts = []
        self._last_message = {}

    # -- output ------------------------------------------------------------------

    def _say(self, text):
        self._display.display(text)

    def _record(self, **event):
        if self._events:
            with open(self._events, "a") as handle:
                handle.write(json.dumps(event, default=str) + "\n")

    def _flush_changed(self):
        if self._task is not None and self._changed_hosts:
            self._say("  changed: %s (%s)" % (_name(self._task), ", ".join(sorted(set(self._changed_hosts)))))
        self._changed_hosts = []

    # -- events ------------------------------------------------------------------

    def v2_playbook_on_play_start(self, play):
        self._flush_changed()
        self._say("PLAY %s" % play.get_name().strip())

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._flush_changed()
        self._task = task
        if _module(task) in SLOW:
            self._say("  ... %s" % _name(task))

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_runner_on_ok(self, result):
        data = _result(result)
        module = _module(result.task)
        name = _name(result.task)
        if module == "debug" and "msg" in data:
            message = data["msg"]
            if self._last_message.get(name) != message:
                self._last_message[name] = message
                self._say("  %s" % name)
                self._say(_render(message))
            self._record(task=name, msg=message)
            return
        if module in RECORDED:
            self._record(task=name, module=module, result=dict((k, data[k]) for k in RECORDED_FIELDS if k in data))
        if data.get("changed"):
            # The node the task ran on: the delegated one, if any.
            delegated = (data.get("_ansible_delegated_vars") or {}).get("ansible_host")
            self._changed_hosts.append(delegated or result.host.get_name())

    def v2_runner_on_failed(self, result, ignore_errors=False):
        data = _result(result)
        message = data.get("msg") or data.get("module_stderr") or data.get("exception") or "failed"
        self._say("  %s %s on %s:" % ("FAILED (ignored)" if ignore_errors else "FAILED", _name(result.task),
                                      result.host.get_name()))
        self._say(_render(str(message)))

    def v2_runner_on_unreachable(self, result):
        self._say("  UNREACHABLE %s: %s" % (result.host.get_name(), _result(result).get("msg", "")))

    def v2_playbook_on_stats(self, stats):
        self._flush_changed()
        summary = []
        for host in sorted(stats.processed.keys()):
            counts = stats.summarize(host)
            summary.append("%s ok=%d changed=%d failed=%d" % (host, counts["ok"], counts["changed"],
                                                              counts["failures"] + counts["unreachable"]))
        self._say("RECAP %s" % "; ".join(summary))
