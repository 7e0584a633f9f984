# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers to run a whole module's ``main()`` in-process.

``set_module_args`` (from ``_module_args``) is built on ``ansible.module_utils.testing.patch_module_args``
(ansible-core 2.19+) and falls back to patching ``basic._ANSIBLE_ARGS`` on
older releases.

The test files of this directory are imported by their collection name
(``ansible_collections.kubecrypt.at_rest.tests.unit.plugins.modules.test_*``),
as ``ansible-test units`` does, so that plain pytest does not confuse
``modules/test_encryption_config.py`` with
``module_utils/test_encryption_config.py`` (same basename, no ``__init__.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
from unittest import mock

import pytest

from ansible.module_utils import basic

try:
    from ansible.module_utils import _internal as _module_utils_internal
except ImportError:  # ansible-core < 2.19
    _module_utils_internal = None

from ansible_collections.kubecrypt.at_rest.tests.unit.plugins.modules._module_args import (
    set_module_args as _set_module_args,
)


_PACKAGE = "ansible_collections.kubecrypt.at_rest.tests.unit.plugins.modules"


class _CollectionTestModule(pytest.Module):
    """A test file imported by its dotted collection name when that resolves."""

    def _getobj(self):
        try:
            spec = importlib.util.find_spec(_PACKAGE)
        except ImportError:
            spec = None
        if spec is None:
            return super(_CollectionTestModule, self)._getobj()
        return importlib.import_module("%s.%s" % (_PACKAGE, self.path.stem))


def pytest_pycollect_makemodule(module_path, parent):
    return _CollectionTestModule.from_parent(parent, path=module_path)


class ModuleRun(object):
    """The outcome of one ``main()``: exit code, parsed result and raw stdout."""

    def __init__(self, code, result, stdout, logged):
        self.code = code
        self.result = result
        self.stdout = stdout
        self.logged = logged

    @property
    def failed(self):
        return bool(self.result.get("failed"))


@pytest.fixture
def set_module_args():
    return _set_module_args


@pytest.fixture
def run_module(capsys):
    """``run_module(main, args)`` runs a module and returns a ``ModuleRun``.

    Internal arguments such as ``_ansible_check_mode`` and ``_ansible_diff``
    can be passed in ``args``.  What the module would send to syslog or the
    journal (its invocation) is captured as ``ModuleRun.logged`` instead.
    The module runs as on a target even when other tests imported controller
    code (ansible-core 2.19 then routes warnings to the controller display).
    """

    def _run(main, args):
        capsys.readouterr()
        with contextlib.ExitStack() as stack:
            stack.enter_context(_set_module_args(args))
            log = stack.enter_context(mock.patch.object(basic.AnsibleModule, "log", autospec=True))
            if getattr(_module_utils_internal, "is_controller", False):
                stack.enter_context(mock.patch.object(_module_utils_internal, "is_controller", False))
            with pytest.raises(SystemExit) as exc_info:
                main()
        stdout = capsys.readouterr().out
        logged = repr(log.call_args_list)
        return ModuleRun(exc_info.value.code, json.loads(stdout), stdout, logged)

    return _run
