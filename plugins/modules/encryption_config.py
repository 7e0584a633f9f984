#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: encryption_config
short_description: Validate and write a kube-apiserver EncryptionConfiguration
version_added: 0.1.0
author:
  - kubecrypt developers (@kubecrypt)
description:
  - Validates an EncryptionConfiguration the way kube-apiserver does, plus the checks kube-apiserver misses,
    and writes it atomically to O(path) on a control-plane node.
  - The file is rendered deterministically, so the same O(resources) give the same bytes, and the same
    RV(sha256), on every node. Fields are written in a fixed order; the order of resource groups,
    providers and keys is kept, because it is meaningful (the first provider writes, the first key of
    a provider encrypts).
  - Invalid input fails before anything is written, with a message that names the resource group (its
    index and resource names), the provider (its index and type) and the key name, never key material.
    An existing file is left untouched.
  - Every key secret is masked in the output of the task, including the invocation logged at high
    verbosity; provider names, key names and resource names stay readable.
  - The file is replaced through a 0600 temporary file beside it and an atomic rename, then O(mode),
    O(owner) and O(group) are applied. It is never readable by others, not even for a moment.
  - Changing the file does not restart kube-apiserver. Roll the change out with the manifest and wait
    modules of this collection, one phase at a time.
extends_documentation_fragment:
  - ansible.builtin.files
  - kubecrypt.at_rest.attributes
  - kubecrypt.at_rest.attributes.files
options:
  path:
    description:
      - Path of the EncryptionConfiguration file on the node, as given to kube-apiserver with
        C(--encryption-provider-config).
      - The directory must exist. Mount the directory, not the file, into the kube-apiserver pod, or the
        automatic reload does not see the atomic rename.
    type: path
    required: true
  state:
    description:
      - V(present) writes the file from O(resources).
      - V(absent) removes the file. Only do this once no kube-apiserver references it any more.
    type: str
    choices: [present, absent]
    default: present
  resources:
    description:
      - The C(resources) list of the upstream EncryptionConfiguration (C(apiserver.config.k8s.io/v1)),
        verbatim. Each element is one resource group with its own ordered provider list.
      - Required when O(state=present).
      - The RV(kubecrypt.at_rest.encryption_config_info#module:resources) returned by
        M(kubecrypt.at_rest.encryption_config_info) with O(kubecrypt.at_rest.encryption_config_info#module:return_secrets=true)
        can be passed back here; their C(fingerprint) fields are checked against the secrets and not written.
      - Resource names are validated like kube-apiserver does. No capital letters; not C(*), use C(*.) for
        all core resources or C(*.*) for all resources; C(*) only in C(*.), C(*.*) and C(*.<group>); not
        C(apiserveripinfo), C(serviceipallocations) or C(servicenodeportallocations); not in the
        C(events.k8s.io) or C(extensions) groups; no C(<resource>.*).
      - Within a group, no resource may repeat or overlap another (like C(secrets) and C(*.)).
        Across groups, no resource may be masked by an earlier C(*.<group>) or C(*.*), and
        no resource may be listed twice (kube-apiserver accepts it, but would only add the later group's
        providers as extra read providers, which is never what was meant).
    type: list
    elements: dict
    suboptions:
      resources:
        description:
          - Resource names, as C(<resource>) for the core group or C(<resource>.<group>), for example
            C(secrets), C(configmaps), C(deployments.apps), C(*.apps), C(*.) or C(*.*).
        type: list
        elements: str
      providers:
        description:
          - The ordered providers for this group. The first one encrypts new writes; all of them can read.
          - Each element holds exactly one provider type.
        type: list
        elements: dict
        suboptions:
          aescbc:
            description:
              - AES-CBC with PKCS#7 padding. Keys are 16, 24 or 32 bytes.
            type: dict
            suboptions:
              keys:
                description:
                  - The keys, the first one encrypts. Key names must be unique within the provider and
                    across the providers of the same type in the group, and must not contain C(:).
                type: list
                elements: dict
                suboptions:
                  name:
                    description: Name of the key, written into the prefix of every value it encrypts.
                    type: str
                  secret:
                    description:
                      - The key bytes, in standard base64 with padding and without whitespace.
                      - Masked in all output.
                    type: str
                  fingerprint:
                    description:
                      - Optional fingerprint of the key as returned by
                        M(kubecrypt.at_rest.encryption_config_info) and M(kubecrypt.at_rest.encryption_key).
                        When set, it must match O(resources[].providers[].aescbc.keys[].secret).
                        It is not written to the file.
                    type: str
          aesgcm:
            description:
              - AES-GCM with a random nonce. Keys are 16, 24 or 32 bytes. Rotate aesgcm keys often.
            type: dict
            suboptions:
              keys:
                description: The keys, the first one encrypts. Same rules as for O(resources[].providers[].aescbc.keys).
                type: list
                elements: dict
                suboptions:
                  name:
                    description: Name of the key.
                    type: str
                  secret:
                    description: The key bytes, in standard base64. Masked in all output.
                    type: str
                  fingerprint:
                    description: Optional fingerprint, checked against the secret and not written.
                    type: str
          secretbox:
            description:
              - XSalsa20 and Poly1305. Keys are exactly 32 bytes.
            type: dict
            suboptions:
              keys:
                description: The keys, the first one encrypts. Same rules as for O(resources[].providers[].aescbc.keys).
                type: list
                elements: dict
                suboptions:
                  name:
                    description: Name of the key.
                    type: str
                  secret:
                    description: The key bytes, in standard base64. Masked in all output.
                    type: str
                  fingerprint:
                    description: Optional fingerprint, checked against the secret and not written.
                    type: str
          identity:
            description:
              - No encryption. Its value is an empty mapping, C({}).
              - As the first provider it writes plaintext; after the first it lets kube-apiserver read
                objects that are not encrypted yet.
            type: dict
            suboptions: {}
          kms:
            description:
              - An envelope encryption provider backed by a KMS plugin.
            type: dict
            suboptions:
              apiVersion:
                description:
                  - V(v2) or V(v1). A missing value means V(v1), which kube-apiserver disables by default
                    since Kubernetes 1.29; it is refused unless O(allow_kms_v1=true).
                type: str
              name:
                description: Name of the provider; unique across all kms providers in the file, without C(:).
                type: str
              endpoint:
                description: The gRPC endpoint of the plugin; only C(unix://) sockets are supported.
                type: str
              cachesize:
                description:
                  - Number of data encryption keys cached in clear text (v1 only; not allowed for v2).
                    Not zero; a negative value disables the cache.
                type: int
              timeout:
                description: Timeout of a plugin call, a duration such as C(3s). Must be positive.
                type: str
  mode:
    description:
      - The permissions of the file, as an octal string like V('0600') or a symbolic mode.
      - The file holds key material; anything wider than V('0600') is rarely a good idea.
    default: '0600'
  allow_kms_v1:
    description:
      - Accept kms providers with C(apiVersion=v1) (or no apiVersion).
      - Only for clusters that still enable the deprecated C(KMSv1) feature gate.
    type: bool
    default: false
notes:
  - The apiserver does not check that key names are unique or free of C(:); this module does,
    because the key name is the only thing that tells which key encrypted a stored object.
  - Secrets must be canonical base64. Non-zero padding bits are refused because they would make two
    different strings for the same key.
  - Use O(resources) from a vault or from M(kubecrypt.at_rest.encryption_key), never from plain
    variables in the repository.
seealso:
  - module: kubecrypt.at_rest.encryption_config_info
  - module: kubecrypt.at_rest.encryption_key
  - name: Encrypting confidential data at rest
    description: The Kubernetes documentation of the EncryptionConfiguration.
    link: https://kubernetes.io/docs/tasks/administer-cluster/encrypt-data/
requirements:
  - PyYAML on the node, only to show the previous content of the file in diff mode.
"""

EXAMPLES = r"""
- name: Generate a secretbox key on the controller
  kubecrypt.at_rest.encryption_key:
    keystore: "{{ playbook_dir }}/keystore/{{ cluster_name }}.yml"
    provider: secretbox
    name: secretbox-1
    return_secret: true
  delegate_to: localhost
  run_once: true
  no_log: true
  register: __kubecrypt_key

- name: Add the new key as a read provider after identity (phase 1)
  kubecrypt.at_rest.encryption_config:
    path: /etc/kubernetes/enc/encryption-config.yaml
    resources:
      - resources:
          - secrets
          - configmaps
        providers:
          - identity: {}
          - secretbox:
              keys:
                - name: "{{ __kubecrypt_key.name }}"
                  secret: "{{ __kubecrypt_key.secret }}"
  register: __kubecrypt_config

- name: Promote the key to write provider (phase 2)
  kubecrypt.at_rest.encryption_config:
    path: /etc/kubernetes/enc/encryption-config.yaml
    resources:
      - resources:
          - secrets
          - configmaps
        providers:
          - secretbox:
              keys:
                - name: "{{ __kubecrypt_key.name }}"
                  secret: "{{ __kubecrypt_key.secret }}"
          - identity: {}

- name: Use a KMS v2 plugin for everything else in the core group
  kubecrypt.at_rest.encryption_config:
    path: /etc/kubernetes/enc/encryption-config.yaml
    resources:
      - resources:
          - secrets
        providers:
          - kms:
              apiVersion: v2
              name: vault-kms
              endpoint: unix:///var/run/kms/vault.sock
              timeout: 3s
          - identity: {}
      - resources:
          - "*."
        providers:
          - identity: {}

- name: Remove the configuration once kube-apiserver no longer uses it
  kubecrypt.at_rest.encryption_config:
    path: /etc/kubernetes/enc/encryption-config.yaml
    state: absent
"""

RETURN = r"""
sha256:
  description:
    - Hex SHA-256 of the file bytes (that would be) written.
    - Kubernetes 1.34 and later report C(sha256:) followed by this value in the C(hash) label of
      C(apiserver_encryption_config_controller_last_config_info) once they have loaded the file.
    - V(null) when O(state=absent).
  returned: always
  type: str
  sample: 9f2c3c5d1a4e8b7f60d1c2e3f4a5b6c7d8e9f00112233445566778899aabbccd
write_provider:
  description:
    - The provider that encrypts new writes of the first resource group, as C(<type>:<key name>) for
      aescbc, aesgcm and secretbox, C(kms:<name>) for kms, or C(identity).
    - V(null) when O(state=absent).
  returned: always
  type: str
  sample: secretbox:secretbox-1
read_providers:
  description:
    - Every provider and key that can read the first resource group, in order, the write provider first.
      Same notation as RV(write_provider).
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
      sample: [secrets, configmaps]
    write_provider:
      description: The provider that encrypts new writes of the group, same notation as RV(write_provider).
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

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.encryption_config import (
    EncryptionConfigError,
    EncryptionConfigFile,
    resources_argument_spec,
)


def main():
    argument_spec = dict(
        path=dict(type="path", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        resources=dict(type="list", elements="dict", options=resources_argument_spec()),
        mode=dict(type="raw", default="0600"),
        allow_kms_v1=dict(type="bool", default=False),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[("state", "present", ("resources",))],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    try:
        result = EncryptionConfigFile(module).run()
    except (EncryptionConfigError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
