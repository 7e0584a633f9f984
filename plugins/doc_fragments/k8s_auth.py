# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared documentation of the Kubernetes API auth options (``module_utils.k8s.k8s_auth_argument_spec``)."""

from __future__ import annotations


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path to a kubeconfig file. Its cluster (server, certificate authority as a path or C(-data),
        C(insecure-skip-tls-verify), C(tls-server-name)) and user (client certificate and key as paths or
        C(-data), C(token), C(tokenFile)) are used unless the options below override them.
      - Relative paths inside the kubeconfig are relative to its directory.
      - Users that authenticate with an C(exec) or C(auth-provider) plugin are not supported.
      - If neither this option nor O(host) is set, C(~/.kube/config) is used.
        On a kubeadm control-plane node use V(/etc/kubernetes/admin.conf) (readable by root only; use C(become)).
      - If not set, the value of the environment variable E(K8S_AUTH_KUBECONFIG) is used.
    type: path
  context:
    description:
      - The kubeconfig context to use instead of its C(current-context).
      - If not set, the value of E(K8S_AUTH_CONTEXT) is used.
    type: str
  host:
    description:
      - URL of the apiserver, like V(https://10.0.0.11:6443). Overrides the kubeconfig's server.
      - Set it to talk to ONE control-plane node's own kube-apiserver rather than to the load balancer
        of the kubeconfig, for example to the node's advertise address.
      - If not set, the value of E(K8S_AUTH_HOST) is used.
    type: str
  ca_cert:
    description:
      - Path to the CA certificate (PEM) that verifies the apiserver's serving certificate. Overrides the
        kubeconfig's certificate authority.
      - If not set, the value of E(K8S_AUTH_SSL_CA_CERT) is used.
    type: path
    aliases: [ssl_ca_cert]
  client_cert:
    description:
      - Path to a client certificate (PEM) to authenticate with. Overrides the kubeconfig's user certificate.
      - Must be given together with O(client_key).
      - If not set, the value of E(K8S_AUTH_CERT_FILE) is used.
    type: path
    aliases: [cert_file]
  client_key:
    description:
      - Path to the unencrypted private key (PEM) of O(client_cert).
      - If not set, the value of E(K8S_AUTH_KEY_FILE) is used.
    type: path
    aliases: [key_file]
  validate_certs:
    description:
      - Whether to verify the apiserver's certificate and host name.
      - A kubeconfig cluster with C(insecure-skip-tls-verify=true) also turns verification off.
      - If not set, the value of E(K8S_AUTH_VERIFY_SSL) is used.
    type: bool
    default: true
    aliases: [verify_ssl]
  api_key:
    description:
      - A bearer token to authenticate with. Overrides the kubeconfig's user token.
      - If not set, the value of E(K8S_AUTH_API_KEY) is used.
    type: str
notes:
  - The connection to the apiserver is made directly, without an HTTP proxy.
"""
