#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: etcd_snapshot
short_description: Save an etcd snapshot before changing how kube-apiserver stores its data
version_added: 0.1.0
author:
  - kubecrypt developers (@kubecrypt)
description:
  - Streams a snapshot of the etcd database from the first member that answers into O(path), through etcd's v3 JSON
    gateway (C(/v3/maintenance/snapshot)), so no C(etcdctl) binary is needed on the node.
  - The file holds what C(etcdctl snapshot save) writes (the database followed by its sha256), so
    C(etcdutl snapshot restore) takes it as it is. The sha256 etcd sends is checked; a truncated or corrupt stream
    fails the task and leaves no file behind.
  - The file is written through a temporary dot-file beside O(path) and moved into place, mode 0600 from the first
    byte (a snapshot holds every Secret of the cluster, encrypted or not).
  - Every run takes a new snapshot, so the task always reports C(changed) (except in check mode, where nothing is
    written).
extends_documentation_fragment:
  - kubecrypt.at_rest.etcd
  - kubecrypt.at_rest.attributes
options:
  path:
    description:
      - Where to write the snapshot. Its directory is created (mode 0700) when missing.
      - Keep it out of a static pod manifests directory; nothing there needs a database file.
    type: path
    required: true
attributes:
  check_mode:
    support: full
    details: In check mode only the member's status is read.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Snapshot etcd before rewriting every Secret
  kubecrypt.at_rest.etcd_snapshot:
    etcd_endpoints: [https://127.0.0.1:2379]
    etcd_ca_cert: /etc/kubernetes/pki/etcd/ca.crt
    etcd_cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
    etcd_key: /etc/kubernetes/pki/apiserver-etcd-client.key
    path: /etc/kubernetes/tmp/kubecrypt-backups/etcd-before-rewrite.db
  run_once: true
"""

RETURN = r"""
path:
  description: The snapshot file.
  returned: success
  type: str
  sample: /etc/kubernetes/tmp/kubecrypt-backups/etcd-before-rewrite.db
size:
  description: Bytes written (the database and its 32-byte sha256); in check mode the member's database size.
  returned: success
  type: int
  sample: 1011744
sha256:
  description: The sha256 of the database, as etcd sent it and as checked; not returned in check mode.
  returned: success and not in check mode
  type: str
  sample: 5b7a9c0e3b1d4f2a6c8e0a1b3c5d7e9f1a2b3c4d5e6f708192a3b4c5d6e7f809
endpoint:
  description: The etcd member that sent the snapshot.
  returned: success
  type: str
  sample: https://127.0.0.1:2379
revision:
  description: The member's revision when the snapshot started.
  returned: success
  type: int
  sample: 48213
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd import (
    ETCD_REQUIRED_TOGETHER,
    EtcdError,
    client_from_params,
    etcd_argument_spec,
)
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.files import atomic_stream


def main():
    argument_spec = etcd_argument_spec()
    argument_spec.update(path=dict(type="path", required=True))
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=ETCD_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        with client_from_params(module.params) as client:
            status = client.status()
            if module.check_mode:
                module.exit_json(changed=True, path=path, size=status["db_size"], endpoint=status["endpoint"],
                                 revision=status["revision"])
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700)
            result = atomic_stream(module, path, client.snapshot, mode=0o600)
    except EtcdError as exc:
        module.fail_json(msg="no snapshot was saved to %s: %s" % (path, exc))
    except OSError as exc:
        module.fail_json(msg="no snapshot was saved to %s: %s" % (path, exc))
    module.exit_json(changed=True, path=path, size=result["size"], sha256=result["sha256"],
                     endpoint=result["endpoint"], revision=status["revision"])


if __name__ == "__main__":
    main()
