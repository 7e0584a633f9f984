# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared documentation of the etcd connection options (``module_utils.etcd.etcd_argument_spec``)."""

from __future__ import annotations


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options:
  etcd_endpoints:
    description:
      - Client URLs of the etcd members, like V(https://10.0.0.11:2379), tried in order until one answers.
        An endpoint without a scheme is taken as C(https://).
      - The members are read through etcd's v3 JSON gateway (C(/v3/kv/range)), which etcd 3.x serves on its
        client URLs by default; no C(etcdctl) binary is needed on the node.
      - If not set, the comma-separated value of the environment variable E(ETCDCTL_ENDPOINTS) is used.
    type: list
    elements: str
    required: true
  etcd_ca_cert:
    description:
      - CA certificate (PEM) that signed the etcd members' serving certificates.
      - On a kubeadm node this is C(/etc/kubernetes/pki/etcd/ca.crt).
      - If not set, the value of E(ETCDCTL_CACERT) is used, and without it the system's trust store.
    type: path
  etcd_cert:
    description:
      - Client certificate (PEM) to authenticate to etcd, for example kube-apiserver's
        C(/etc/kubernetes/pki/apiserver-etcd-client.crt) on a kubeadm node.
      - If not set, the value of E(ETCDCTL_CERT) is used.
      - Must be given together with O(etcd_key).
    type: path
  etcd_key:
    description:
      - Unencrypted private key (PEM) of O(etcd_cert), for example
        C(/etc/kubernetes/pki/apiserver-etcd-client.key). The file is usually readable by root only; use C(become).
      - If not set, the value of E(ETCDCTL_KEY) is used.
    type: path
  etcd_timeout:
    description:
      - Seconds to wait for each connection and each answer of an etcd member before trying the next endpoint.
    type: int
    default: 30
notes:
  - The etcd client certificate gives full read and write access to everything kube-apiserver stores.
    The modules using it only read, and never return or log stored values.
"""
