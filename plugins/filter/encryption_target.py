# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``encryption_target`` filter: which provider/key a run converges to.

Documentation is in ``encryption_target.yml`` beside this file; the logic is in
``plugins/module_utils/target.py``.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.target import (
    TargetError,
    choose_target,
)


def encryption_target(observed, resources, action, provider=None, keystore=None, prune=True, kms=None,
                      rewrite_verified=False, rotation_in_progress=None):
    """Choose the target of an enable, rotate or disable run from what the nodes hold."""
    try:
        return choose_target(observed, resources, action, provider=provider, keystore=keystore, prune=prune,
                             kms=kms, rewrite_verified=rewrite_verified,
                             rotation_in_progress=rotation_in_progress)
    except TargetError as error:
        raise AnsibleFilterError("encryption_target: %s" % error)


class FilterModule(object):
    """The collection's target chooser filter."""

    def filters(self):
        return {"encryption_target": encryption_target}
