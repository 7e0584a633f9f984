#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: etcd_encryption_info
short_description: Report which provider and key encrypts each object kube-apiserver stores in etcd
version_added: 0.1.0
author:
  - kubecrypt developers (@kubecrypt)
description:
  - Reads the raw values kube-apiserver stores in etcd for the given resources, and counts per resource which
    provider and key each one is stored with, from the prefix of the value (for example
    C(k8s:enc:secretbox:v1:<key name>:)). Values that are not encrypted are counted as V(identity).
  - With O(expected_provider), every value stored with anything else is offending; a bounded sample of their etcd
    keys is returned.
  - kms v2 values are also counted per KMS key ID (RV(by_kms_key_id)), read from the C(EncryptedObject) envelope
    kube-apiserver stores them in, without the KMS plugin. With O(expected_kms_key_id) or
    O(expected_kms_key_id_hash), a value of the expected kms provider under any other key ID (a KEK the KMS has
    rotated away from) is offending too.
  - With O(keys), every aescbc, aesgcm and secretbox value is also decrypted with the escrowed key its prefix names,
    which proves that the escrow can still read the data; a value whose key is not in O(keys) fails the check.
  - Reads etcd through its v3 JSON gateway in pages of O(page_size) keys, all at one etcd revision, so the counts
    are one consistent snapshot and memory does not grow with the number of objects.
  - Never returns or logs stored values, their plaintext or key material, only provider notations, counts and etcd
    keys. Run it on one control-plane node (C(run_once)).
extends_documentation_fragment:
  - kubecrypt.at_rest.etcd
  - kubecrypt.at_rest.attributes
  - kubecrypt.at_rest.attributes.info_module
options:
  resources:
    description:
      - Resources to scan, named as in an EncryptionConfiguration, for example V(secrets), V(configmaps),
        V(deployments.apps) or V(widgets.example.com).
      - Each is read under its etcd key prefix C(<prefix>/<path>/), where the path is the resource's plural name for
        the core group and for the API groups built into kube-apiserver (V(secrets) is C(/registry/secrets/),
        V(deployments.apps) is C(/registry/deployments/)), C(<group>/<resource>) for every other group (custom
        resources, V(customresourcedefinitions.apiextensions.k8s.io), V(apiservices.apiregistration.k8s.io)), and
        the special names compiled into kube-apiserver for V(services) (C(services/specs)), V(endpoints)
        (C(services/endpoints)), V(nodes) (C(minions)), V(replicationcontrollers) (C(controllers)) and
        V(ingresses.networking.k8s.io) (C(ingress)).
      - Wildcards such as V(*.apps) are not supported; use O(prefixes) for anything the mapping does not cover
        (for example resources moved with C(--etcd-servers-overrides) or a custom storage prefix).
      - Defaults to V([secrets]). Mutually exclusive with O(prefixes).
    type: list
    elements: str
  prefixes:
    description:
      - Explicit etcd key prefixes to scan instead of O(resources), as a dictionary from a label (used in
        RV(by_resource)) to the full key prefix, for example C(secrets) to V(/registry/secrets/).
      - O(etcd_prefix) does not apply to them. End each prefix with C(/), or keys of other resources whose name
        starts the same way are counted too.
    type: dict
  etcd_prefix:
    description:
      - The C(--etcd-prefix) of kube-apiserver, under which it stores every resource.
      - The same option as O(kubecrypt.at_rest.apiserver_wait#module:etcd_prefix).
    type: str
    default: /registry
    aliases: [prefix]
  page_size:
    description:
      - Number of keys read from etcd per request. Memory use is bounded by one page of values.
    type: int
    default: 500
  sample_size:
    description:
      - Maximum number of etcd keys returned in RV(offending_sample) and RV(decrypt_failure_sample).
    type: int
    default: 20
  expected_provider:
    description:
      - The provider notation every value should be stored with, for example V(secretbox:key-2), V(aescbc:key-1),
        V(aesgcm:key-1), V(kms:<name>) (a kms v2 provider; V(kms:v2:<name>) means the same) or V(identity).
      - Values stored with anything else are counted in RV(offending) and listed in RV(offending_sample).
      - If not set, nothing is offending and RV(all_expected) only reflects the decrypt check.
    type: str
  expected_kms_key_id:
    description:
      - The KMS key ID (the KEK's ID, as the KMS plugin's C(Status) reports it) every value of the kms v2 provider
        O(expected_provider) should be stored under. Values under another key ID are offending and counted in
        RV(stale_kms_key_id).
      - Requires O(expected_provider) to be a kms provider. Mutually exclusive with O(expected_kms_key_id_hash).
    type: str
  expected_kms_key_id_hash:
    description:
      - Like O(expected_kms_key_id), given as kube-apiserver's metrics name a key ID, C(sha256:) followed by the
        64 hex digits of the SHA-256 of the key ID (the C(key_id_hash) label of
        C(apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds)).
    type: str
  keys:
    description:
      - The escrowed keys, each with its provider, name and secret, as kept by M(kubecrypt.at_rest.encryption_key)
        or listed in an EncryptionConfiguration. Each secret is masked in the task output.
      - A secret with a length its provider does not accept fails the task before etcd is read.
    type: list
    elements: dict
    default: []
    suboptions:
      provider:
        description: The provider type of the key.
        type: str
        required: true
        choices: [aescbc, aesgcm, secretbox]
      name:
        description: The key name, as in the stored prefix C(k8s:enc:<provider>:v1:<name>:). It cannot contain C(:).
        type: str
        required: true
      secret:
        description: The key bytes in standard base64, as in an EncryptionConfiguration.
        type: str
        required: true
  decrypt_check:
    description:
      - Decrypt every aescbc, aesgcm and secretbox value with the key from O(keys) that its prefix names, and check
        that the plaintext is a stored object. aesgcm values are authenticated against their full etcd key.
      - Values stored with a key that is not in O(keys), or in no format kube-apiserver writes, are failures;
        kms values cannot be opened without the KMS plugin and are counted in RV(decrypt_unchecked); a kms v2 value
        whose envelope kube-apiserver would not accept fails with V(malformed_envelope).
      - Defaults to V(true) when O(keys) is not empty.
    type: bool
notes:
  - The decrypt check needs the Python library C(cryptography) on the node for aescbc and aesgcm keys and
    C(PyNaCl) for secretbox keys. Classification alone needs only Python.
  - Take the counts of one run as a snapshot at RV(revision). If etcd compacts that revision during a long scan
    (kube-apiserver compacts every 5 minutes by default), the task fails and can simply be run again.
requirements:
  - cryptography >= 3.4 on the node, for the decrypt check of aescbc and aesgcm values.
  - PyNaCl >= 1.4 on the node, for the decrypt check of secretbox values.
seealso:
  - module: kubecrypt.at_rest.encryption_key
  - module: kubecrypt.at_rest.encryption_config_info
  - name: Encrypting Confidential Data at Rest
    description: How kube-apiserver encrypts resources, and how to verify it from etcd.
    link: https://kubernetes.io/docs/tasks/administer-cluster/encrypt-data/
  - name: Using a KMS provider for data encryption
    description: KMS v2, key IDs, and the rewrite after a KEK rotation.
    link: https://kubernetes.io/docs/tasks/administer-cluster/kms-provider/
"""

EXAMPLES = r"""
- name: Count which provider and key stores each Secret and ConfigMap
  kubecrypt.at_rest.etcd_encryption_info:
    etcd_endpoints:
      - https://10.0.0.11:2379
      - https://10.0.0.12:2379
      - https://10.0.0.13:2379
    etcd_ca_cert: /etc/kubernetes/pki/etcd/ca.crt
    etcd_cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
    etcd_key: /etc/kubernetes/pki/apiserver-etcd-client.key
    resources: [secrets, configmaps]
  become: true
  run_once: true
  register: __kubecrypt_scan

- name: Show the counts per provider
  ansible.builtin.debug:
    var: __kubecrypt_scan.by_provider

- name: Prove that every Secret is under the new key and that the escrowed keys open it
  kubecrypt.at_rest.etcd_encryption_info:
    etcd_endpoints: "{{ kubecrypt_etcd_endpoints }}"
    etcd_ca_cert: /etc/kubernetes/pki/etcd/ca.crt
    etcd_cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
    etcd_key: /etc/kubernetes/pki/apiserver-etcd-client.key
    expected_provider: "secretbox:{{ kubecrypt_new_key_name }}"
    # [{provider: secretbox, name: ..., secret: <base64>}, ...]: the new key and the ones it replaces
    keys: "{{ kubecrypt_escrowed_keys }}"
  become: true
  run_once: true
  register: __kubecrypt_verify

- name: Refuse to prune the old key while etcd still holds data under it
  ansible.builtin.assert:
    that: __kubecrypt_verify.all_expected
    fail_msg: >-
      {{ __kubecrypt_verify.offending }} objects are not under the new key (for example
      {{ __kubecrypt_verify.offending_sample[:5] | join(', ') }}) and
      {{ __kubecrypt_verify.decrypt_failures }} failed the decrypt check.

- name: After a KEK rotation in the KMS, find the Secrets still under an older key ID
  kubecrypt.at_rest.etcd_encryption_info:
    etcd_endpoints: "{{ kubecrypt_etcd_endpoints }}"
    etcd_ca_cert: /etc/kubernetes/pki/etcd/ca.crt
    etcd_cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
    etcd_key: /etc/kubernetes/pki/apiserver-etcd-client.key
    expected_provider: kms:vault
    expected_kms_key_id: "{{ kubecrypt_current_kek_id }}"
  become: true
  run_once: true
  register: __kubecrypt_kek_scan

- name: Show how many Secrets each KEK holds
  ansible.builtin.debug:
    var: __kubecrypt_kek_scan.by_kms_key_id

- name: Scan a custom resource and a prefix the mapping does not know, with the endpoints from the environment
  kubecrypt.at_rest.etcd_encryption_info:
    prefixes:
      widgets: /registry/example.com/widgets/
      legacy-secrets: /registry-old/secrets/
  environment:
    ETCDCTL_ENDPOINTS: https://10.0.0.11:2379,https://10.0.0.12:2379
    ETCDCTL_CACERT: /etc/kubernetes/pki/etcd/ca.crt
    ETCDCTL_CERT: /etc/kubernetes/pki/apiserver-etcd-client.crt
    ETCDCTL_KEY: /etc/kubernetes/pki/apiserver-etcd-client.key
  become: true
  run_once: true
"""

RETURN = r"""
total:
  description: Number of values scanned, over all resources.
  returned: always
  type: int
  sample: 1250
by_resource:
  description: Per resource (or label of O(prefixes)), the number of values and their count per provider notation.
  returned: always
  type: dict
  sample:
    secrets:
      total: 1200
      by_provider:
        secretbox:key-2: 1198
        aescbc:key-1: 2
    configmaps:
      total: 50
      by_provider:
        identity: 50
by_provider:
  description:
    - Number of values per provider notation, over all resources.
    - Notations are V(identity) (not encrypted; protobuf, JSON, CBOR or YAML), C(aescbc:<key name>),
      C(aesgcm:<key name>), C(secretbox:<key name>), C(kms:<name>) (kms v2), C(kms:v1:<name>), and V(unknown) for a
      value in no format kube-apiserver writes (an unknown or malformed C(k8s:enc:) prefix, or corrupted data).
  returned: always
  type: dict
  sample:
    secretbox:key-2: 1198
    aescbc:key-1: 2
    identity: 50
encrypted_percent:
  description: Share of the scanned values that are encrypted (neither V(identity) nor V(unknown)), in percent,
    rounded to two decimals; V(100.0) when nothing was scanned.
  returned: always
  type: float
  sample: 96.0
expected_provider:
  description: The value of O(expected_provider), or V(null).
  returned: always
  type: str
  sample: secretbox:key-2
offending:
  description:
    - Number of values not stored with O(expected_provider) or, with O(expected_kms_key_id) or
      O(expected_kms_key_id_hash), under another KMS key ID; V(0) when neither is set.
  returned: always
  type: int
  sample: 52
offending_sample:
  description: The etcd keys (never the values) of up to O(sample_size) offending values, in scan order.
  returned: always
  type: list
  elements: str
  sample: [/registry/secrets/default/db-password, /registry/secrets/kube-system/bootstrap-token-abcdef]
by_kms_key_id:
  description:
    - Per kms v2 provider notation, the number of values per KMS key ID. Key IDs are not secret (kube-apiserver
      stores them in plaintext beside each value).
    - V((malformed EncryptedObject)) counts values whose envelope cannot be read; beyond 100 distinct key IDs the
      rest are counted under V((other key IDs)).
  returned: always
  type: dict
  sample:
    kms:vault:
      kek-2: 1198
      kek-1: 2
kms_key_id_hashes:
  description: For each key ID in RV(by_kms_key_id), its hash as kube-apiserver's metrics show it.
  returned: always
  type: dict
  sample:
    kek-2: sha256:4c5f2c8d6e1f0f5f0c8a3e7a6a5b0d2e6f1c9b8a7d6e5f4c3b2a1908f7e6d5c4
expected_kms_key_id_hash:
  description: The hash of the expected KMS key ID, or V(null).
  returned: always
  type: str
  sample: sha256:4c5f2c8d6e1f0f5f0c8a3e7a6a5b0d2e6f1c9b8a7d6e5f4c3b2a1908f7e6d5c4
stale_kms_key_id:
  description: Number of values of the expected kms provider that are offending because of their KMS key ID.
  returned: always
  type: int
  sample: 2
decrypt_checked:
  description: Number of encrypted values that were decrypted with an escrowed key and hold a stored object.
  returned: always
  type: int
  sample: 1200
decrypt_unchecked:
  description: Number of kms values, which the decrypt check cannot open without the KMS plugin.
  returned: always
  type: int
  sample: 0
decrypt_failures:
  description: Number of values that failed the decrypt check; V(0) when it did not run.
  returned: always
  type: int
  sample: 2
decrypt_failures_by_reason:
  description:
    - Number of decrypt check failures per reason.
    - V(undecryptable_unknown_key) the key named in the value is not in O(keys);
      V(authentication_failed) the tag does not match (wrong key, corrupted value, or an aesgcm value copied from
      another etcd key); V(bad_padding) aescbc padding is invalid (wrong key or corrupted value);
      V(not_an_object) decrypted, but the plaintext is no stored object (wrong key or corrupted value);
      V(too_short) and V(not_block_aligned) the value is truncated; V(unrecognized_format) the value is in no format
      kube-apiserver writes; V(malformed_envelope) a kms v2 value whose C(EncryptedObject) kube-apiserver would not
      accept.
  returned: always
  type: dict
  sample:
    undecryptable_unknown_key: 2
decrypt_failure_sample:
  description: Up to O(sample_size) values that failed the decrypt check, in scan order.
  returned: always
  type: list
  elements: dict
  contains:
    key:
      description: The etcd key of the value.
      type: str
      returned: always
      sample: /registry/secrets/default/db-password
    provider:
      description: The provider notation of the value.
      type: str
      returned: always
      sample: aescbc:key-1
    reason:
      description: Why the check failed, one of the reasons of RV(decrypt_failures_by_reason).
      type: str
      returned: always
      sample: undecryptable_unknown_key
all_expected:
  description:
    - V(true) when every value is stored with O(expected_provider) (if set) and every decrypt check passed (if it
      ran). The condition to require before pruning an old key.
  returned: always
  type: bool
  sample: false
revision:
  description: The etcd revision the scan read; every resource was read at this revision.
  returned: always
  type: int
  sample: 48213
prefixes:
  description: The etcd key prefix scanned for each resource.
  returned: always
  type: dict
  sample:
    secrets: /registry/secrets/
    deployments.apps: /registry/deployments/
etcd_endpoint:
  description: The etcd endpoint that answered the scan.
  returned: always
  type: str
  sample: https://10.0.0.11:2379
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd import (
    ETCD_REQUIRED_TOGETHER,
    EtcdError,
    client_from_params,
    etcd_argument_spec,
)
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd_encryption import (
    EtcdEncryptionError,
    ScanTally,
    etcd_prefixes,
    missing_libraries,
    parse_keys,
    run_scan,
)


def _argument_spec():
    spec = etcd_argument_spec()
    spec.update(
        resources=dict(type="list", elements="str"),
        prefixes=dict(type="dict"),
        etcd_prefix=dict(type="str", default="/registry", aliases=["prefix"]),
        page_size=dict(type="int", default=500),
        sample_size=dict(type="int", default=20),
        expected_provider=dict(type="str"),
        expected_kms_key_id=dict(type="str"),
        # the hash of a KMS key ID, as the apiserver publishes it in its metrics: not a secret
        expected_kms_key_id_hash=dict(type="str", no_log=False),
        keys=dict(type="list", elements="dict", default=[], no_log=False, options=dict(
            provider=dict(type="str", required=True, choices=["aescbc", "aesgcm", "secretbox"]),
            name=dict(type="str", required=True),
            secret=dict(type="str", required=True, no_log=True),
        )),
        decrypt_check=dict(type="bool"),
    )
    return spec


def _scan(params, keys):
    """Validate the other inputs, scan etcd, return the module result (without ``changed``)."""
    if params["page_size"] < 1:
        raise EtcdEncryptionError("page_size must be at least 1, not %d" % params["page_size"])
    if params["sample_size"] < 0:
        raise EtcdEncryptionError("sample_size must not be negative, not %d" % params["sample_size"])
    decrypt = params["decrypt_check"] if params["decrypt_check"] is not None else bool(keys)
    targets = etcd_prefixes(params["resources"], params["etcd_prefix"], params["prefixes"])
    tally = ScanTally(params["expected_provider"], keys, decrypt, params["sample_size"],
                      expected_kms_key_id=params["expected_kms_key_id"],
                      expected_kms_key_id_hash=params["expected_kms_key_id_hash"])
    with client_from_params(params) as client:
        revision = run_scan(client, targets, tally, params["page_size"])
        endpoint = client.endpoint
    result = tally.result()
    result.update(revision=revision or 0, prefixes=dict(targets), etcd_endpoint=endpoint)
    return result


def main():
    module = AnsibleModule(
        argument_spec=_argument_spec(),
        mutually_exclusive=[("resources", "prefixes"), ("expected_kms_key_id", "expected_kms_key_id_hash")],
        required_together=ETCD_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    for key in module.params["keys"]:
        module.no_log_values.add(key["secret"])
    try:
        keys = parse_keys(module.params["keys"])
    except EtcdEncryptionError as exc:
        module.fail_json(msg=str(exc))
    if module.params["decrypt_check"] is not False:
        for library, error in missing_libraries(keys):
            module.fail_json(msg=missing_required_lib(library), exception=error)
    try:
        result = _scan(module.params, keys)
    except (EtcdError, EtcdEncryptionError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
