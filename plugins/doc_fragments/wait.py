# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared documentation of the wait options (``module_utils.k8s.wait_argument_spec``)."""

from __future__ import annotations


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options:
  wait_timeout:
    description:
      - How many seconds to wait in total before the task fails with what was observed last.
      - With V(0) the state is observed once.
    type: int
    default: 300
  wait_sleep:
    description:
      - Seconds to sleep between two observations.
    type: float
    default: 2
"""
