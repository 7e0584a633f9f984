#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: encryption_config_info
short_description: Read a kube-apiserver EncryptionConfiguration
version_added: 0.1.0
author:
  - kubecrypt developers (@kubecrypt)
description:
  - Parses and validates the EncryptionConfiguration file at O(path) on a control-plane node and returns
    its resource groups, providers, key names and key fingerprints, and the SHA-256 of the file bytes.
  - Key secrets are only returned with O(return_secrets=true).
  - A file that exists but is not valid YAML, not an EncryptionConfiguration, or that kube-apiserver
    would refuse, fails the task with a message naming O(path) and what is wrong, never key material.
    What only this collection refuses (for example a key name with C(:)) is reported as a warning.
  - A missing file is not an error; RV(exists) is then V(false).
extends_documentation_fragment:
  - kubecrypt.at_rest.attributes
  - kubecrypt.at_rest.attributes.info_module
options:
  path:
    description:
      - Path of the EncryptionConfiguration file on the node.
      - The file is normally readable by root only; use C(become).
    type: path
    required: true
  return_secrets:
    description:
      - Also return the key secrets, under C(secret) beside each key's C(fingerprint) in RV(resources).
      - B(The task must set C(no_log=true)). The secrets are deliberately not masked by the module when
        they are asked for, because masking would make them unusable; only the task's C(no_log) keeps
        them out of the output and the logs.
      - Use it to adopt a cluster configured by hand (pass RV(resources) to
        O(kubecrypt.at_rest.encryption_key#module:import_resources)) or to carry the current keys over
        into a new configuration.
    type: bool
    default: false
requirements:
  - PyYAML on the node.
seealso:
  - module: kubecrypt.at_rest.encryption_config
  - module: kubecrypt.at_rest.encryption_key
"""

EXAMPLES = r"""
- name: Read the current encryption configuration
  kubecrypt.at_rest.encryption_config_info:
    path: /etc/kubernetes/enc/encryption-config.yaml
  become: true
  register: __kubecrypt_current

- name: Show which key encrypts Secrets on this node
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} writes with {{ __kubecrypt_current.write_provider | default('identity', true) }}"

- name: Read the keys of a hand-made configuration to adopt them
  kubecrypt.at_rest.encryption_config_info:
    path: /etc/kubernetes/enc/encryption-config.yaml
    return_secrets: true
  become: true
  no_log: true
  register: __kubecrypt_adopt

- name: Escrow those keys in the keystore on the controller
  kubecrypt.at_rest.encryption_key:
    keystore: "{{ playbook_dir }}/keystore/{{ cluster_name }}.yml"
    import_resources: "{{ __kubecrypt_adopt.resources }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
exists:
  description: Whether the file exists.
  returned: always
  type: bool
  sample: true
sha256:
  description:
    - Hex SHA-256 of the file bytes, V(null) if there is no file.
    - Kubernetes 1.34 and later report C(sha256:) followed by this value in the C(hash) label of
      C(apiserver_encryption_config_controller_last_config_info) once they have loaded the file.
  returned: always
  type: str
  sample: 9f2c3c5d1a4e8b7f60d1c2e3f4a5b6c7d8e9f00112233445566778899aabbccd
resources:
  description:
    - The C(resources) list of the file, in order, empty if there is no file.
    - Each aescbc, aesgcm and secretbox key is returned as C(name) and C(fingerprint), plus C(secret)
      with O(return_secrets=true). The fingerprint is C(sha256:) followed by the first 16 hex digits of
      a SHA-256 of the key bytes, the same as in the keystore of M(kubecrypt.at_rest.encryption_key).
    - kms providers are returned with the fields present in the file.
  returned: always
  type: list
  elements: dict
  sample:
    - resources: [secrets]
      providers:
        - secretbox:
            keys:
              - name: secretbox-1
                fingerprint: sha256:4c1d0e5a9b3f2e71
        - identity: {}
write_provider:
  description:
    - The provider that encrypts new writes of the first resource group, as C(<type>:<key name>) for
      aescbc, aesgcm and secretbox, C(kms:<name>) for kms, or C(identity). V(null) if there is no file.
  returned: always
  type: str
  sample: secretbox:secretbox-1
read_providers:
  description: Every provider and key that can read the first resource group, the write provider first.
  returned: always
  type: list
  elements: str
  sample: [secretbox:secretbox-1, identity]
resource_groups:
  description: For each resource group, in order, its resources and providers.
  returned: always
  type: list
  elements: dict
  contains:
    resources:
      description: The resource names of the group.
      type: list
      elements: str
      returned: always
      sample: [secrets]
    write_provider:
      description: The provider that encrypts new writes of the group.
      type: str
      returned: always
      sample: secretbox:secretbox-1
    read_providers:
      description: Every provider and key that can read the group, the write provider first.
      type: list
      elements: str
      returned: always
      sample: [secretbox:secretbox-1, identity]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.encryption_config import (
    HAS_YAML,
    YAML_IMPORT_ERROR,
    EncryptionConfigError,
    EncryptionConfigInfo,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            return_secrets=dict(type="bool", default=False, no_log=False),
        ),
        supports_check_mode=True,
    )
    if not HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=YAML_IMPORT_ERROR)
    try:
        result = EncryptionConfigInfo(module).run()
    except EncryptionConfigError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
