#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: apiserver_wait
short_description: Wait until a node's kube-apiserver serves the expected encryption configuration
version_added: 0.1.0
author:
  - kubecrypt developers (@kubecrypt)
description:
  - Polls ONE control-plane node's own kube-apiserver (O(host), not the load balancer) until it is ready and
    serves the expected EncryptionConfiguration, and fails with what it saw last when that does not happen
    within O(wait_timeout) seconds.
  - B(Ready) means C(/readyz) answers HTTP 200 C(ok). C(/readyz) includes the C(kms-providers) health check when
    the apiserver has an encryption configuration, so a KMS plugin that does not answer keeps the node not ready.
    When it is not ready, the failing checks of C(/readyz?verbose) are reported.
  - B(Restart or reload.) With O(previous_start_time), the C(process_start_time_seconds) of C(/metrics)
    observed before the change, a restart is required (O(expect=any) or O(expect=restart)); the start time must
    move. With O(expect=reload) the start time must NOT move, and a restart fails the task at once.
  - B(Config hash), O(method=metrics). From Kubernetes 1.34 on, kube-apiserver reports the SHA-256 of the
    configuration file it loaded in the C(hash) label of the C(apiserver_encryption_config_controller_last_config_info)
    metric, as C(sha256:<hex>). It is set when the file is loaded at start-up (with or without
    C(--encryption-provider-config-automatic-reload)) and replaced after each successful automatic reload,
    so it confirms a restart and a reload alike. It is absent when the apiserver runs without
    C(--encryption-provider-config). A reload the apiserver rejects keeps the old hash; the failure message then
    shows the number of failed automatic reloads.
  - B(Canary), O(method=canary), for apiservers older than 1.34. The module creates or changes a secret
    O(canary_namespace)/O(canary_name) through this node's endpoint, so that this apiserver writes it with its
    current write provider, reads the secret's stored value directly from etcd, and compares the provider
    and key name in its prefix with O(expected_write_provider). B(This writes to the cluster), on every poll
    until it matches; the secret holds no sensitive data and is left in place (it is reused on the next run).
  - O(method=auto) checks C(/version) and uses V(metrics) on 1.34 and later, V(canary) before.
  - Called with only the connection options it waits for C(/readyz) and returns the current
    RV(process_start_time) and RV(config_hash), for a playbook to record them before a change.
  - The module only observes and never reports C(changed); the canary write is a side effect.
    No key material is read, returned or logged.
extends_documentation_fragment:
  - kubecrypt.at_rest.k8s_auth
  - kubecrypt.at_rest.wait
  - kubecrypt.at_rest.etcd
  - kubecrypt.at_rest.attributes
  - kubecrypt.at_rest.attributes.info_module
attributes:
  check_mode:
    details: In check mode no canary secret is written; the rest is observed as usual.
options:
  config_sha256:
    description:
      - Hex SHA-256 of the bytes of the EncryptionConfiguration file the apiserver must serve, as returned by
        M(kubecrypt.at_rest.encryption_config_info) in RV(kubecrypt.at_rest.encryption_config_info#module:sha256).
        A C(sha256:) prefix is accepted.
      - Checked with O(method=metrics). With the canary method, give O(expected_write_provider) as well, or the task
        fails because the hash cannot be checked.
    type: str
  previous_start_time:
    description:
      - The RV(process_start_time) this module returned for the same node before the change.
      - With O(expect=any) or O(expect=restart) the apiserver must have restarted since (its start time moved);
        with O(expect=reload) it must not have. Start times are compared at a resolution of one second.
    type: float
  expect:
    description:
      - How the node picks up the change.
      - V(restart) requires O(previous_start_time) and a restart.
      - V(reload) expects the automatic reload of C(--encryption-provider-config-automatic-reload) (about once
        a minute); the process must be the same as at O(previous_start_time), if given.
      - V(any) accepts both; with O(previous_start_time) it requires a restart like V(restart).
    type: str
    choices: [any, restart, reload]
    default: any
  method:
    description:
      - How the configuration is confirmed. V(metrics) compares O(config_sha256) with the served config hash
        (Kubernetes 1.34 or later); V(canary) writes a canary secret and checks O(expected_write_provider);
        V(auto) picks V(metrics) on 1.34 and later, V(canary) before.
    type: str
    choices: [auto, metrics, canary]
    default: auto
  expected_write_provider:
    description:
      - The provider and key that must encrypt new writes, for the canary, as C(<type>:<key name>) like
        V(secretbox:k2) or V(aescbc:key1), V(kms:v2:<name>) (or V(kms:<name>), as
        M(kubecrypt.at_rest.encryption_config_info) names it), or V(identity).
      - Requires the etcd options, to read the canary's stored value.
    type: str
  canary_namespace:
    description: Namespace of the canary secret.
    type: str
    default: kube-system
  canary_name:
    description:
      - Name of the canary secret. One per node, so that nodes do not overwrite each other's canary.
      - Defaults to C(kubecrypt-canary-) followed by O(host) (or the kubeconfig's server) with every character
        that cannot be in a name replaced by C(-), for example V(kubecrypt-canary-10.0.0.11-6443).
    type: str
  etcd_prefix:
    description:
      - The C(--etcd-prefix) of kube-apiserver, under which the canary secret is stored in etcd
        (C(<etcd_prefix>/secrets/<namespace>/<name>)).
    type: str
    default: /registry
  etcd_endpoints:
    description:
      - Client URLs of the etcd members, like V(https://10.0.0.11:2379), tried in order until one answers.
      - Only needed for the canary; see O(expected_write_provider).
      - If not set, the comma-separated value of the environment variable E(ETCDCTL_ENDPOINTS) is used.
    required: false
requirements:
  - PyYAML, to read the kubeconfig.
notes:
  - C(apiserver_encryption_config_controller_last_config_info) is an ALPHA metric of kube-apiserver.
  - The credentials need to read C(/readyz), C(/metrics) and C(/version) (C(system:monitoring) or an admin),
    and for the canary to create and patch secrets in O(canary_namespace).
seealso:
  - module: kubecrypt.at_rest.encryption_config_info
  - module: kubecrypt.at_rest.apiserver_manifest
  - module: kubecrypt.at_rest.storage_rewrite
"""

EXAMPLES = r"""
- name: Record the apiserver's start time before changing its manifest
  kubecrypt.at_rest.apiserver_wait:
    kubeconfig: /etc/kubernetes/admin.conf
    host: "https://{{ ansible_host }}:6443"
    wait_timeout: 60
  become: true
  register: __kubecrypt_before

- name: Wait until this node's apiserver restarted with the new configuration
  kubecrypt.at_rest.apiserver_wait:
    kubeconfig: /etc/kubernetes/admin.conf
    host: "https://{{ ansible_host }}:6443"
    expect: restart
    previous_start_time: "{{ __kubecrypt_before.process_start_time }}"
    config_sha256: "{{ __kubecrypt_config.sha256 }}"
    # Used by the canary on apiservers older than 1.34
    expected_write_provider: "{{ __kubecrypt_config.write_provider }}"
    etcd_endpoints: ["https://{{ ansible_host }}:2379"]
    etcd_ca_cert: /etc/kubernetes/pki/etcd/ca.crt
    etcd_cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
    etcd_key: /etc/kubernetes/pki/apiserver-etcd-client.key
    wait_timeout: 300
  become: true

- name: Wait for the automatic reload of the configuration file (about a minute)
  kubecrypt.at_rest.apiserver_wait:
    kubeconfig: /etc/kubernetes/admin.conf
    host: "https://{{ ansible_host }}:6443"
    expect: reload
    previous_start_time: "{{ __kubecrypt_before.process_start_time }}"
    config_sha256: "{{ __kubecrypt_config.sha256 }}"
    wait_timeout: 180
  become: true
"""

RETURN = r"""
ready:
  description: Whether C(/readyz) answered C(ok) at the last observation.
  returned: always
  type: bool
  sample: true
process_start_time:
  description:
    - The apiserver's C(process_start_time_seconds) (seconds since the epoch), to pass as
      O(previous_start_time) after a change. V(null) when the apiserver did not answer.
  returned: always
  type: float
  sample: 1795389069.77
config_hash:
  description:
    - The served config hash, C(sha256:) followed by the hex SHA-256 of the configuration file, from
      C(apiserver_encryption_config_controller_last_config_info).
    - V(null) before Kubernetes 1.34, when the apiserver has no encryption configuration, or when it did not answer.
  returned: always
  type: str
  sample: sha256:847b394760a42b15bc2e1a979eadc78100919dc36e419c93005655bafc0318b2
method:
  description: The method used, V(metrics) or V(canary); V(null) if the server version could not be read.
  returned: always
  type: str
  sample: metrics
observed_write_provider:
  description:
    - The provider and key the canary secret was stored with, like V(secretbox:k2), V(kms:v2:vault) or
      V(identity). V(null) when no canary was written.
  returned: always
  type: str
  sample: secretbox:k2
restarted:
  description:
    - Whether the process start time moved since O(previous_start_time); V(null) without O(previous_start_time).
  returned: always
  type: bool
  sample: true
server_version:
  description: The C(gitVersion) of C(/version), V(null) if it could not be read.
  returned: always
  type: str
  sample: v1.37.2
elapsed:
  description: Seconds spent waiting.
  returned: always
  type: float
  sample: 12.4
canary:
  description: Namespace and name of the canary secret that was written.
  returned: when a canary secret was written
  type: dict
  contains:
    namespace:
      description: Its namespace.
      type: str
      returned: always
      sample: kube-system
    name:
      description: Its name.
      type: str
      returned: always
      sample: kubecrypt-canary-10.0.0.11-6443
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import apiserver_wait, etcd, k8s
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd_encryption import EtcdEncryptionError


def _etcd_argument_spec():
    spec = etcd.etcd_argument_spec()
    # Only the canary reads etcd.
    spec["etcd_endpoints"]["required"] = False
    return spec


def main():
    argument_spec = k8s.k8s_auth_argument_spec()
    argument_spec.update(k8s.wait_argument_spec())
    argument_spec.update(_etcd_argument_spec())
    argument_spec.update(apiserver_wait.argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=[["client_cert", "client_key"]] + etcd.ETCD_REQUIRED_TOGETHER,
        required_if=[("expect", "restart", ["previous_start_time"])],
        supports_check_mode=True,
    )
    if not k8s.HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=k8s.YAML_IMPORT_ERROR)
    try:
        result, failure, warnings = apiserver_wait.run_module(
            module.params, module.check_mode, k8s.ApiClient.from_module_params, etcd.client_from_params)
    except (apiserver_wait.WaitError, k8s.ApiError, k8s.ConfigError, etcd.EtcdError, EtcdEncryptionError) as exc:
        module.fail_json(msg=str(exc))
    for warning in warnings:
        module.warn(warning)
    if failure:
        module.fail_json(msg=failure, changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
