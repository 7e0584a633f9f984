#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: encryption_key
short_description: Generate or adopt encryption keys and escrow them in a keystore on the controller
version_added: 0.1.0
author:
  - kubecrypt developers (@kubecrypt)
description:
  - Generates a key for an aescbc, aesgcm or secretbox provider from the operating system's CSPRNG
    and stores it in the keystore file O(keystore) on the controller. Run it with
    C(delegate_to=localhost) and C(run_once=true).
  - A key is never regenerated or overwritten. An existing O(name) is returned as it is (see O(on_existing)),
    so running the task again with the same O(name) is idempotent.
  - With O(import_resources), imports every aescbc, aesgcm and secretbox key of a resources list
    (as returned by M(kubecrypt.at_rest.encryption_config_info) with
    O(kubecrypt.at_rest.encryption_config_info#module:return_secrets=true)), so a cluster configured by
    hand can be adopted.
  - The keystore is YAML with a single field C(keys), a list of entries with the fields C(name),
    C(provider) (V(aescbc), V(aesgcm) or V(secretbox)), C(secret) (the key bytes in standard base64),
    C(fingerprint) (see RV(fingerprint)), C(created) (UTC, like V(2026-11-22T23:01:02Z)) and
    C(source) (V(generated) or V(imported)). Names are unique.
  - The keystore is written with mode V(0600) through a temporary file and an atomic rename; a missing
    parent directory is created with mode V(0700). Every change holds an exclusive lock on the file
    O(keystore) with C(.lock) appended, so concurrent runs cannot lose a key.
  - Keep the keystore out of version control, or encrypt it (for example with C(ansible-vault) after
    the run); losing it while etcd holds data encrypted with its keys loses that data.
extends_documentation_fragment:
  - kubecrypt.at_rest.attributes
  - kubecrypt.at_rest.attributes.files
attributes:
  check_mode:
    details: In check mode nothing is written, not even the lock file or the keystore directory.
options:
  keystore:
    description:
      - Path of the keystore file on the controller.
    type: path
    required: true
  provider:
    description:
      - The provider the key is for.
      - Required unless O(import_resources) is set.
    type: str
    choices: [aescbc, aesgcm, secretbox]
  size:
    description:
      - Length of the key in bytes. V(16), V(24) or V(32) for aescbc and aesgcm; secretbox keys are always V(32).
      - A new key has V(32) bytes when this is not set.
      - When the key already exists, its size is only compared when this is set.
    type: int
    choices: [16, 24, 32]
  name:
    description:
      - Name of the key, written into the prefix of every value it encrypts.
      - 1 to 128 letters, digits, C(.), C(_) or C(-), starting with a letter or digit.
      - Defaults to O(provider), C(-) and the current UTC time, like V(secretbox-20261122t230102z); a new
        key is then generated on every run. Set a name to make the task idempotent.
    type: str
  on_existing:
    description:
      - What to do when a key named O(name) is already in the keystore. It is never regenerated.
      - V(keep) returns it unchanged if it is for the same O(provider) (and of the same O(size), if set),
        and fails otherwise.
      - V(fail) always fails, for a task that must create a new key.
    type: str
    choices: [keep, fail]
    default: keep
  return_secret:
    description:
      - Also return the key bytes as RV(secret), to put into O(kubecrypt.at_rest.encryption_config#module:resources).
      - B(The task must set C(no_log=true)). The secret is deliberately not masked by the module when it
        is asked for; only the task's C(no_log) keeps it out of the output and the logs.
      - Ignored with O(import_resources).
    type: bool
    default: false
  import_resources:
    description:
      - A C(resources) list, as returned by M(kubecrypt.at_rest.encryption_config_info) with
        O(kubecrypt.at_rest.encryption_config_info#module:return_secrets=true), whose aescbc, aesgcm and secretbox
        keys are imported with C(source=imported). kms and identity providers are ignored.
      - A key whose name is already in the keystore with the same material is left as it is; with
        different material, or for another provider, the task fails naming the key and both fingerprints,
        and nothing is imported.
      - Cannot be combined with O(provider), O(name) or O(size).
    type: list
    elements: dict
    suboptions:
      resources:
        description: Resource names of the group (not used for the import).
        type: list
        elements: str
      providers:
        description: The providers of the group.
        type: list
        elements: dict
        suboptions:
          aescbc:
            description: An aescbc provider.
            type: dict
            suboptions:
              keys:
                description: Its keys.
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
                    description: Optional fingerprint, checked against the secret.
                    type: str
          aesgcm:
            description: An aesgcm provider.
            type: dict
            suboptions:
              keys:
                description: Its keys.
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
                    description: Optional fingerprint, checked against the secret.
                    type: str
          secretbox:
            description: A secretbox provider.
            type: dict
            suboptions:
              keys:
                description: Its keys.
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
                    description: Optional fingerprint, checked against the secret.
                    type: str
          identity:
            description: An identity provider (ignored).
            type: dict
            suboptions: {}
          kms:
            description: A kms provider (ignored).
            type: dict
            suboptions:
              apiVersion:
                description: The KMS API version.
                type: str
              name:
                description: Name of the provider.
                type: str
              endpoint:
                description: Endpoint of the plugin.
                type: str
              cachesize:
                description: Cache size (v1).
                type: int
              timeout:
                description: Timeout of a plugin call.
                type: str
requirements:
  - PyYAML for the Python interpreter that runs the module on the controller.
seealso:
  - module: kubecrypt.at_rest.encryption_config
  - module: kubecrypt.at_rest.encryption_config_info
"""

EXAMPLES = r"""
- name: Generate the secretbox key of this rotation (idempotent thanks to the fixed name)
  kubecrypt.at_rest.encryption_key:
    keystore: "{{ playbook_dir }}/keystore/{{ cluster_name }}.yml"
    provider: secretbox
    name: "secretbox-{{ kubecrypt_rotation_id }}"
    return_secret: true
  delegate_to: localhost
  run_once: true
  no_log: true
  register: __kubecrypt_key

- name: Generate a 32-byte aescbc key named after the current time
  kubecrypt.at_rest.encryption_key:
    keystore: "{{ playbook_dir }}/keystore/{{ cluster_name }}.yml"
    provider: aescbc
  delegate_to: localhost
  run_once: true
  register: __kubecrypt_aescbc

- name: Show its public identity
  ansible.builtin.debug:
    msg: "{{ __kubecrypt_aescbc.name }} {{ __kubecrypt_aescbc.fingerprint }}"

- name: Read the keys of a cluster configured by hand
  kubecrypt.at_rest.encryption_config_info:
    path: /etc/kubernetes/enc/encryption-config.yaml
    return_secrets: true
  become: true
  run_once: true
  no_log: true
  register: __kubecrypt_adopt

- name: Adopt them into the keystore
  kubecrypt.at_rest.encryption_key:
    keystore: "{{ playbook_dir }}/keystore/{{ cluster_name }}.yml"
    import_resources: "{{ __kubecrypt_adopt.resources }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
name:
  description: Name of the key.
  returned: unless O(import_resources) is set
  type: str
  sample: secretbox-20261122t230102z
provider:
  description: The provider the key is for.
  returned: unless O(import_resources) is set
  type: str
  sample: secretbox
size:
  description: Length of the key in bytes.
  returned: unless O(import_resources) is set
  type: int
  sample: 32
fingerprint:
  description:
    - Public identifier of the key, safe to log - C(sha256:) and the first 16 hex digits of the SHA-256
      of C(kubecrypt.at_rest key fingerprint), a NUL byte and the key bytes.
    - The same value as in RV(kubecrypt.at_rest.encryption_config_info#module:resources) and in the keystore.
  returned: unless O(import_resources) is set
  type: str
  sample: sha256:4c1d0e5a9b3f2e71
created:
  description: When the key was generated or imported, in UTC.
  returned: unless O(import_resources) is set
  type: str
  sample: '2026-11-22T23:01:02Z'
source:
  description: V(generated) or V(imported).
  returned: unless O(import_resources) is set
  type: str
  sample: generated
secret:
  description: The key bytes in standard base64. The task must set C(no_log=true).
  returned: when O(return_secret=true) and O(import_resources) is not set
  type: str
  sample: NOT-A-REAL-KEY
imported:
  description: Every aescbc, aesgcm and secretbox key found in O(import_resources), each name once.
  returned: when O(import_resources) is set
  type: list
  elements: dict
  contains:
    name:
      description: Name of the key.
      type: str
      returned: always
      sample: key1
    provider:
      description: The provider of the key.
      type: str
      returned: always
      sample: aescbc
    fingerprint:
      description: Fingerprint of the key.
      type: str
      returned: always
      sample: sha256:4c1d0e5a9b3f2e71
    changed:
      description: V(true) if the key was added to the keystore by this run, V(false) if it was there already.
      type: bool
      returned: always
      sample: true
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.encryption_config import (
    HAS_YAML,
    YAML_IMPORT_ERROR,
    resources_argument_spec,
)
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.keystore import (
    KeyEscrow,
    KeystoreError,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            keystore=dict(type="path", required=True, no_log=False),
            provider=dict(type="str", choices=["aescbc", "aesgcm", "secretbox"]),
            size=dict(type="int", choices=[16, 24, 32]),
            name=dict(type="str"),
            on_existing=dict(type="str", choices=["keep", "fail"], default="keep"),
            return_secret=dict(type="bool", default=False, no_log=False),
            import_resources=dict(type="list", elements="dict", options=resources_argument_spec()),
        ),
        required_one_of=[("provider", "import_resources")],
        mutually_exclusive=[
            ("provider", "import_resources"),
            ("name", "import_resources"),
            ("size", "import_resources"),
        ],
        supports_check_mode=True,
    )
    if not HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=YAML_IMPORT_ERROR)
    try:
        result = KeyEscrow(module).run()
    except (KeystoreError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
