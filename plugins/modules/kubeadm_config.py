#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kubeadm_config
short_description: Record the encryption flags and mount in a kubeadm ClusterConfiguration
version_added: 0.1.0
description:
  - C(kubeadm upgrade) regenerates the kube-apiserver static pod manifest from the ClusterConfiguration kept in
    the C(kubeadm-config) ConfigMap of C(kube-system) (key C(ClusterConfiguration)), and drops what
    M(kubecrypt.at_rest.apiserver_manifest) added unless the ClusterConfiguration records it too.
  - This module records C(encryption-provider-config), C(encryption-provider-config-automatic-reload) and a
    read-only C(hostPath) mount of the configuration's directory in C(apiServer.extraArgs) and
    C(apiServer.extraVolumes); with O(state=absent), it removes exactly those.
  - Supports C(kubeadm.k8s.io/v1beta3) (C(extraArgs) is a map) and C(kubeadm.k8s.io/v1beta4) (C(extraArgs) is a
    list of C(name)/C(value) entries), and refuses any other C(apiVersion).
  - The extra volume has C(pathType=DirectoryOrCreate), C(readOnly=true) and the same path on the host and in the
    pod. It is named C(kubecrypt-encryption-config), or C(kubecrypt-encryption-config-2), C(-3), ... when another
    extra volume already has that name. None is added when an extra volume, or kubeadm's own mount of
    C(certificatesDir), already shows the directory at the same path.
  - Works either on a file (O(path)), for example the configuration given to C(kubeadm init), or on text
    (O(content)), for example the C(ClusterConfiguration) value of the C(kubeadm-config) ConfigMap. Only the
    ClusterConfiguration document changes; other documents of a file stay byte-identical, and the
    ClusterConfiguration keeps its key order and comments.
  - Works on a file (O(path)), on text (O(content)), or directly on the C(kubeadm-config) ConfigMap through the
    API (O(configmap=true), with the connection options). The ConfigMap is read, changed and written back with
    the resourceVersion that was read, so a concurrent change is never overwritten. A cluster without that
    ConfigMap (not set up by kubeadm) is reported with RV(found=false) and left alone. The collection's playbooks do this
    once per cluster, after M(kubecrypt.at_rest.apiserver_manifest) changed every node.
author:
  - kubecrypt developers (@kubecrypt)
requirements:
  - PyYAML where the module runs
extends_documentation_fragment:
  - kubecrypt.at_rest.k8s_auth
  - kubecrypt.at_rest.attributes
  - kubecrypt.at_rest.attributes.files
attributes:
  check_mode:
    details: With O(content) nothing is ever written; RV(content) always holds the result.
  diff_mode:
    details: The diff shows the ClusterConfiguration before and after; it holds paths, no key material.
options:
  path:
    description:
      - A kubeadm configuration file on the node, possibly holding several documents (C(InitConfiguration),
        C(ClusterConfiguration), C(KubeletConfiguration), ...). It is changed in place, atomically, keeping its
        permissions.
      - Exactly one of O(path), O(content) and O(configmap) is required.
    type: path
  content:
    description:
      - A ClusterConfiguration as YAML text, for example the C(ClusterConfiguration) value of the C(kubeadm-config)
        ConfigMap. Nothing is written; the result is returned as RV(content).
      - Exactly one of O(path), O(content) and O(configmap) is required.
    type: str
  configmap:
    description:
      - Change the C(ClusterConfiguration) key of the C(kube-system/kubeadm-config) ConfigMap through the API,
        with the connection options (O(kubeconfig), O(host), ...).
      - Exactly one of O(path), O(content) and O(configmap) is required.
    type: bool
  encryption_config:
    description:
      - Path of the EncryptionConfiguration file, the same on the host and in the pod, as given to
        M(kubecrypt.at_rest.apiserver_manifest).
      - Required when O(state=present).
      - With O(state=absent), when given, the module refuses to remove an C(encryption-provider-config) that
        points to another file.
    type: path
  automatic_reload:
    description:
      - When V(true), record C(encryption-provider-config-automatic-reload=true); when V(false), ensure it is not
        recorded.
    type: bool
    default: true
  kms_socket_dirs:
    description:
      - Directories of the unix sockets of the KMS v2 plugins the configuration names, as given to
        M(kubecrypt.at_rest.apiserver_manifest). Each is recorded as a writable C(extraVolumes) entry
        C(kubecrypt-kms-socket[-N]) at the same path, unless a recorded volume (or C(certificatesDir)) already
        shows it, so that C(kubeadm upgrade) keeps the apiserver's way to its plugins.
      - Socket volumes this module recorded for directories not in the list are removed; V([]) removes them all.
        When omitted, they are left as they are. O(state=absent) removes them.
    type: list
    elements: path
  state:
    description:
      - V(present) records the flags and the mount; V(absent) removes the flags and the extra volume this module
        added.
    type: str
    choices: [present, absent]
    default: present
seealso:
  - module: kubecrypt.at_rest.apiserver_manifest
  - name: kubeadm configuration (v1beta4)
    description: The ClusterConfiguration reference, including extraArgs and extraVolumes.
    link: https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/
"""

EXAMPLES = r"""
- name: Record the encryption flags in the cluster's kubeadm-config ConfigMap, once
  kubecrypt.at_rest.kubeadm_config:
    configmap: true
    kubeconfig: /etc/kubernetes/admin.conf
    encryption_config: /etc/kubernetes/enc/encryption-config.yaml
  run_once: true

- name: Record the encryption flags in the configuration given to kubeadm init
  kubecrypt.at_rest.kubeadm_config:
    path: /etc/kubernetes/kubeadm-config.yaml
    encryption_config: /etc/kubernetes/encryption/config.yaml

- name: Read the kubeadm-config ConfigMap
  kubernetes.core.k8s_info:
    kind: ConfigMap
    namespace: kube-system
    name: kubeadm-config
  register: kubeadm_configmap

- name: Record the encryption flags in its ClusterConfiguration
  kubecrypt.at_rest.kubeadm_config:
    content: "{{ kubeadm_configmap.resources[0].data.ClusterConfiguration }}"
    encryption_config: /etc/kubernetes/encryption/config.yaml
  register: cluster_configuration

- name: Write the ClusterConfiguration back
  kubernetes.core.k8s:
    state: patched
    kind: ConfigMap
    namespace: kube-system
    name: kubeadm-config
    definition:
      data:
        ClusterConfiguration: "{{ cluster_configuration.content }}"
  when: cluster_configuration is changed
"""

RETURN = r"""
found:
  description: Whether the cluster has a C(kube-system/kubeadm-config) ConfigMap.
  returned: when O(configmap=true)
  type: bool
  sample: true
content:
  description: The ClusterConfiguration text after the change (the unchanged text when nothing changed).
  returned: when O(content) was given
  type: str
  sample: |
    apiServer:
      extraArgs:
        encryption-provider-config: /etc/kubernetes/encryption/config.yaml
        encryption-provider-config-automatic-reload: 'true'
      extraVolumes:
      - hostPath: /etc/kubernetes/encryption
        mountPath: /etc/kubernetes/encryption
        name: kubecrypt-encryption-config
        pathType: DirectoryOrCreate
        readOnly: true
    apiVersion: kubeadm.k8s.io/v1beta3
    kind: ClusterConfiguration
flags:
  description:
    - The encryption flags recorded in C(apiServer.extraArgs) afterwards, flag name to value.
    - Empty after O(state=absent).
  returned: always
  type: dict
  sample:
    encryption-provider-config: /etc/kubernetes/encryption/config.yaml
    encryption-provider-config-automatic-reload: "true"
volume_name:
  description:
    - Name of the extra volume that shows the configuration's directory, an existing one when one already covered
      it, or V(k8s-certs) when kubeadm's mount of C(certificatesDir) covers it.
    - V(null) after O(state=absent).
  returned: always
  type: str
  sample: kubecrypt-encryption-config
api_version:
  description: The C(apiVersion) of the ClusterConfiguration.
  returned: always
  type: str
  sample: kubeadm.k8s.io/v1beta4
replaced_encryption_config:
  description: The configuration path recorded before this module replaced it.
  returned: when the ClusterConfiguration recorded another configuration file
  type: str
  sample: /etc/kubernetes/enc/enc.yaml
changes:
  description: What changed (or would change in check mode), one sentence each.
  returned: always
  type: list
  elements: str
  sample:
    - added extraArgs encryption-provider-config=/etc/kubernetes/encryption/config.yaml
msg:
  description: A summary of the result.
  returned: always
  type: str
  sample: "updated the ClusterConfiguration in /etc/kubernetes/kubeadm-config.yaml: added extraArgs ..."
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.apiserver_manifest import (
    HAS_YAML,
    YAML_IMPORT_ERROR,
)
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.k8s import k8s_auth_argument_spec
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.kubeadm_config import KubeadmConfig


def main():
    argument_spec = k8s_auth_argument_spec()
    argument_spec.update(
        path=dict(type="path"),
        content=dict(type="str"),
        configmap=dict(type="bool"),
        encryption_config=dict(type="path"),
        automatic_reload=dict(type="bool", default=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        kms_socket_dirs=dict(type="list", elements="path"),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("path", "content", "configmap")],
        required_one_of=[("path", "content", "configmap")],
        required_if=[("state", "present", ["encryption_config"])],
        supports_check_mode=True,
    )
    if not HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=YAML_IMPORT_ERROR)
    module.exit_json(**KubeadmConfig(module).run())


if __name__ == "__main__":
    main()
