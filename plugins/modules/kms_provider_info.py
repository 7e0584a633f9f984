#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kms_provider_info
short_description: Report whether a node's kube-apiserver reaches its KMS v2 plugins, and their current key IDs
version_added: 0.1.0
author:
  - kubecrypt developers (@kubecrypt)
description:
  - Asks ONE control-plane node's own kube-apiserver (O(host), not the load balancer) about the KMS v2 providers of
    the encryption configuration it serves.
  - B(Health.) C(/readyz/kms-providers) passes while every KMS v2 plugin answers its C(Status) call as healthy
    (RV(healthy)); when it fails, RV(health) has the apiserver's reason, for example that the plugin's socket does
    not accept connections. The apiserver answers from a cache of 20 seconds (3 after a failure), so a plugin that
    just stopped may still count as healthy for that long.
  - B(Current key ID.) From C(/metrics), per provider, the key ID the plugin's latest C(Status) answer named, as
    kube-apiserver shows it, C(sha256:) + the hex SHA-256 of the key ID, with the time of that call (RV(providers)).
    When the KMS rotates its key (KEK), the apiserver notices the new key ID at its next C(Status) call and from
    then on writes under it; data written before stays under the old key ID until it is rewritten.
  - B(Fresh status.) With O(fresh_status), waits until the apiserver has called C(Status) for each of
    O(providers) again after the first answer, and its KMS check passes, so that RV(providers) shows the key ID
    the KMS reports now and the apiserver writes under it. Each poll asks C(/readyz/kms-providers), which makes
    the apiserver call C(Status) when its last answer is older than 20 seconds; expect a wait of up to about 25
    seconds.
  - An apiserver that does not answer is reported with RV(reachable=false); only O(fresh_status) waits for it.
  - Never reports C(changed). No key IDs and no key material are read or returned, only their hashes.
extends_documentation_fragment:
  - kubecrypt.at_rest.k8s_auth
  - kubecrypt.at_rest.wait
  - kubecrypt.at_rest.attributes
  - kubecrypt.at_rest.attributes.info_module
options:
  providers:
    description:
      - Names of the KMS v2 providers (the C(name) of each C(kms) entry of the configuration) to report. When
        omitted, every provider the apiserver has a C(Status) answer for.
      - Required with O(fresh_status).
    type: list
    elements: str
  fresh_status:
    description:
      - Wait (up to O(wait_timeout) seconds) for a C(Status) call to each of O(providers) made after this task
        started, and for C(/readyz/kms-providers) to pass. Fails with what was seen last when that does not happen.
    type: bool
    default: false
notes:
  - The health check and the key ID metric exist from Kubernetes 1.27 on (KMS v2 GA in 1.29).
seealso:
  - module: kubecrypt.at_rest.apiserver_wait
  - module: kubecrypt.at_rest.etcd_encryption_info
  - name: Using a KMS provider for data encryption
    description: KMS v2, its health check, key IDs and key rotation.
    link: https://kubernetes.io/docs/tasks/administer-cluster/kms-provider/
"""

EXAMPLES = r"""
- name: Refuse to go on while a KMS plugin is down on a node
  kubecrypt.at_rest.kms_provider_info:
    host: "https://{{ ansible_host }}:6443"
    kubeconfig: /etc/kubernetes/admin.conf
  register: kms

- name: Check the plugin
  ansible.builtin.assert:
    that: kms.healthy or not kms.kms_configured
    fail_msg: "{{ inventory_hostname }}: {{ kms.health }}"

- name: After rotating the key in the KMS, wait until every apiserver writes under the new key ID
  kubecrypt.at_rest.kms_provider_info:
    host: "https://{{ ansible_host }}:6443"
    kubeconfig: /etc/kubernetes/admin.conf
    providers: [vault]
    fresh_status: true
    wait_timeout: 120
  register: kms_key

- name: Show the key ID hash each node writes under
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }}: {{ kms_key.providers.vault.key_id_hash }}"
"""

RETURN = r"""
reachable:
  description: Whether the apiserver answered.
  returned: always
  type: bool
  sample: true
kms_configured:
  description: Whether the apiserver serves a configuration with KMS providers (C(/readyz/kms-providers) exists).
  returned: always
  type: bool
  sample: true
healthy:
  description: Whether C(/readyz/kms-providers) passed.
  returned: always
  type: bool
  sample: false
health:
  description: V(ok), or why the check failed as the apiserver says it, or why there was no answer.
  returned: always
  type: str
  sample: "HTTP 500: kms-provider-0: rpc error: code = Canceled desc = ... connect: no such file or directory"
providers:
  description: Per KMS provider name, what its latest C(Status) answer named.
  returned: always
  type: dict
  contains:
    key_id_hash:
      description: C(sha256:) + hex SHA-256 of the key ID, as in kube-apiserver's envelope encryption metrics.
      type: str
      returned: always
      sample: sha256:3dd688dad3aa1b0c31d1e9bb2ad1c9b5d1a0b0c6c2c8d40d4f0a4f6e5c0e2c11
    status_timestamp:
      description: When the apiserver got that answer (Unix time).
      type: float
      returned: always
      sample: 1795392340.65
    apiserver_id_hash:
      description: The hash of the apiserver identity that reported it.
      type: str
      returned: always
      sample: sha256:ef77ded7eb38c2c6da2925791e86fcc28a26400cb99e1348e8f70c58da694944
  sample:
    vault:
      key_id_hash: sha256:3dd688dad3aa1b0c31d1e9bb2ad1c9b5d1a0b0c6c2c8d40d4f0a4f6e5c0e2c11
      status_timestamp: 1795392340.65
      apiserver_id_hash: sha256:ef77ded7eb38c2c6da2925791e86fcc28a26400cb99e1348e8f70c58da694944
elapsed:
  description: Seconds spent observing.
  returned: always
  type: float
  sample: 14.2
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import k8s, kms_provider


def main():
    argument_spec = k8s.k8s_auth_argument_spec()
    argument_spec.update(k8s.wait_argument_spec())
    argument_spec.update(kms_provider.argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=[["client_cert", "client_key"]],
        required_if=[("fresh_status", True, ["providers"])],
        supports_check_mode=True,
    )
    if not k8s.HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=k8s.YAML_IMPORT_ERROR)
    try:
        result, failure = kms_provider.run_module(module.params, k8s.ApiClient.from_module_params)
    except (kms_provider.KmsInfoError, k8s.ApiError, k8s.ConfigError) as exc:
        module.fail_json(msg=str(exc))
    if failure:
        module.fail_json(msg=failure, changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
