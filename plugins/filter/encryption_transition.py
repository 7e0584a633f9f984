# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``encryption_transition`` filter: the transition planner for templates.

Documentation is in ``encryption_transition.yml`` beside this file; the logic
is in ``plugins/module_utils/transition.py``.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.transition import (
    TransitionError,
    plan_transition,
)


def encryption_transition(observed, target, rewrite_verified=False):
    """Plan the next phase of an encryption transition from the configs observed on every node."""
    try:
        return plan_transition(observed, target, rewrite_verified=rewrite_verified)
    except TransitionError as error:
        raise AnsibleFilterError("encryption_transition: %s" % error)


class FilterModule(object):
    """The collection's transition planner filter."""

    def filters(self):
        return {"encryption_transition": encryption_transition}
