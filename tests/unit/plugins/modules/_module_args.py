# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's ``main()`` in-process and collect what it returns.

Import it by its collection path
(``ansible_collections.kubecrypt.at_rest.tests.unit.plugins.modules._module_args``)
so that it works under plain pytest in any import mode and under
``ansible-test units``.
"""

from __future__ import annotations

import contextlib
import json
from unittest import mock

from ansible.module_utils import basic

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core < 2.19
    patch_module_args = None


@contextlib.contextmanager
def set_module_args(args):
    """Expose ``args`` to the ``AnsibleModule`` created inside the context."""
    if patch_module_args is not None:
        with patch_module_args(args):
            yield
        return
    serialized = json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode("utf-8")
    with mock.patch.object(basic, "_ANSIBLE_ARGS", serialized):
        yield


class ModuleExit(Exception):
    """Raised instead of exiting; ``result`` is what the module returned."""

    def __init__(self, result):
        super(ModuleExit, self).__init__(result)
        self.result = result


def run_module(main, args, check_mode=False, diff=False):
    """Run ``main`` with ``args``; return the result dict (``failed`` is set on fail_json)."""
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)

    def exit_json(module, **result):
        result.setdefault("changed", False)
        raise ModuleExit(result)

    def fail_json(module, msg, **result):
        result.update(failed=True, msg=msg)
        raise ModuleExit(result)

    with set_module_args(args), \
            mock.patch.object(basic.AnsibleModule, "exit_json", exit_json), \
            mock.patch.object(basic.AnsibleModule, "fail_json", fail_json), \
            mock.patch.object(basic.AnsibleModule, "log"):
        try:
            main()
        except ModuleExit as exc:
            return exc.result
    raise AssertionError("the module returned without exit_json or fail_json")
