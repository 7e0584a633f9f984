#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: apiserver_manifest
short_description: Point the kube-apiserver static pod at an EncryptionConfiguration
version_added: 0.1.0
description:
  - Adds to the kube-apiserver static pod manifest of a control-plane node the C(--encryption-provider-config) flag,
    C(--encryption-provider-config-automatic-reload=true), a read-only mount of the configuration's directory and
    an annotation carrying the configuration's hash; with O(state=absent), removes exactly what it adds.
  - Finds the container named C(kube-apiserver) wherever it stands in C(spec.containers), and its flags in
    C(command) (after the binary) or in C(args). It reads C(--flag=value) and C(--flag value); it writes
    C(--flag=value), at the flag's sorted place when the flags are sorted (kubeadm sorts them), else last.
  - Mounts the configuration's B(directory), not the file, so that the apiserver sees the file being replaced
    (atomic renames) when it reloads it. The directory is mounted at the same path as on the host through a
    C(hostPath) volume of type C(DirectoryOrCreate). A mount that already shows that directory or one of its
    parents at the same path (a C(hostPath) volume of the same path, for example kubeadm's C(k8s-certs) for
    C(/etc/kubernetes/pki)) is used instead of adding one.
  - Edits the file in place and keeps everything else as it was, comments and formatting included. Adding the
    settings to a manifest written by kubeadm only adds lines, and O(state=absent) after O(state=present) gives
    back the original bytes. The result is parsed again and must load as exactly the intended pod before it is written.
  - Refuses, and leaves the file untouched, when the manifest is missing, is not valid YAML, holds more than one
    document, is not a v1 Pod, has no container named C(kube-apiserver), sets an encryption flag twice, or
    cannot be changed without rewriting lines that are not its own.
  - Before changing the manifest it copies it into O(backup_dir), never next to it, and writes the new content
    through a temporary file whose name starts with a dot, because the kubelet runs every other file in the
    manifests directory as a pod.
  - Any change of the manifest makes the kubelet restart the kube-apiserver (RV(restart_expected)). Change one
    control-plane node at a time and wait until its apiserver serves again before the next.
  - C(kubeadm upgrade) regenerates this manifest from the kubeadm ClusterConfiguration and would drop the flags
    and the mount; record them there too with M(kubecrypt.at_rest.kubeadm_config).
author:
  - kubecrypt developers (@kubecrypt)
requirements:
  - PyYAML on the control-plane node
extends_documentation_fragment:
  - kubecrypt.at_rest.attributes
  - kubecrypt.at_rest.attributes.files
attributes:
  diff_mode:
    details: The diff shows the manifest before and after; it holds paths and a hash, no key material.
options:
  path:
    description:
      - The kube-apiserver static pod manifest.
      - Its directory is the manifests directory that O(backup_dir) must stay out of.
    type: path
    default: /etc/kubernetes/manifests/kube-apiserver.yaml
  encryption_config:
    description:
      - Path of the EncryptionConfiguration file. The same path is used on the host and inside the pod, as kubeadm
        does for its own files.
      - Must be absolute and normalized, and lie in a directory of its own below V(/), for example
        V(/etc/kubernetes/encryption/config.yaml); its directory is mounted into the pod.
      - Required when O(state=present).
      - With O(state=absent), when given, the module refuses to remove a C(--encryption-provider-config) that
        points to another file.
    type: path
  automatic_reload:
    description:
      - When V(true), ensure C(--encryption-provider-config-automatic-reload=true), so that the apiserver reloads
        the configuration when the file changes, about once a minute, without a restart.
      - When V(false), ensure that flag is absent; the apiserver then reads the configuration only when it starts
        (see O(config_sha256)).
    type: bool
    default: true
  config_sha256:
    description:
      - SHA-256 of the configuration file (64 hexadecimal digits, optionally prefixed with V(sha256:)), recorded
        as the pod annotation C(at-rest.kubecrypt.io/encryption-config-sha256).
      - A new value changes the manifest, so the kubelet restarts the apiserver even when only the configuration
        file changed.
      - When omitted, an existing annotation of this module is removed.
    type: str
  kms_socket_dirs:
    description:
      - Directories of the unix sockets of the KMS v2 plugins the configuration names (the directory of each
        C(unix://) endpoint), for example V([/var/run/kmsplugin]). Each is mounted into the pod at the same path
        through a C(hostPath) volume of type C(DirectoryOrCreate) named C(kubecrypt-kms-socket) (not read-only,
        because the apiserver connects to the socket), unless a mount already shows it at the same path.
      - Socket mounts this module added for directories not in the list are removed, so V([]) removes them all.
        When omitted, the socket mounts are left as they are. O(state=absent) removes them.
      - A new mount restarts the apiserver even with O(automatic_reload=true); until then, a reloaded
        configuration that names the plugin cannot reach it and the apiserver keeps the previous one.
    type: list
    elements: path
  backup_dir:
    description:
      - Directory that receives a copy of the manifest, named C(<manifest name>.<UTC timestamp>.bak), before each
        change. Created with mode C(0700) when missing.
      - Refused when it is the manifests directory (the directory of O(path)) or lies inside it, after resolving
        symbolic links.
    type: path
    default: /etc/kubernetes/tmp/kubecrypt-backups
  state:
    description:
      - V(present) adds the flags, the mount and the annotation; V(absent) removes the flags, the volume and mount
        this module added and the annotation, and leaves a pre-existing mount it reused alone.
      - Removing the flags makes the apiserver stop decrypting; rewrite the stored data to the identity provider
        first.
    type: str
    choices: [present, absent]
    default: present
notes:
  - The module never uses Ansible's C(backup) mechanism, which writes the copy next to the file, where the kubelet
    would run it.
seealso:
  - module: kubecrypt.at_rest.kubeadm_config
  - name: Encrypting confidential data at rest
    description: The Kubernetes documentation of the EncryptionConfiguration and its flags.
    link: https://kubernetes.io/docs/tasks/administer-cluster/encrypt-data/
"""

EXAMPLES = r"""
- name: Hash the encryption configuration
  ansible.builtin.stat:
    path: /etc/kubernetes/encryption/config.yaml
    checksum_algorithm: sha256
  register: encryption_config_stat

- name: Point the kube-apiserver at the encryption configuration
  kubecrypt.at_rest.apiserver_manifest:
    encryption_config: /etc/kubernetes/encryption/config.yaml
    config_sha256: "{{ encryption_config_stat.stat.checksum }}"
  register: manifest

- name: Show whether the kubelet restarts the apiserver
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} restarts its apiserver, backup in {{ manifest.backup_file }}"
  when: manifest.restart_expected

- name: Rely on a restart rather than automatic reload
  kubecrypt.at_rest.apiserver_manifest:
    encryption_config: /etc/kubernetes/encryption/config.yaml
    automatic_reload: false
    config_sha256: "{{ encryption_config_stat.stat.checksum }}"

- name: Point the kube-apiserver at a configuration with a KMS v2 provider, and mount the plugin's socket directory
  kubecrypt.at_rest.apiserver_manifest:
    encryption_config: /etc/kubernetes/encryption/config.yaml
    kms_socket_dirs:
      - /var/run/kmsplugin

- name: Remove the encryption flags, volume and annotation again
  kubecrypt.at_rest.apiserver_manifest:
    encryption_config: /etc/kubernetes/encryption/config.yaml
    state: absent
"""

RETURN = r"""
flags:
  description:
    - The encryption flags set in the manifest afterwards, flag name without leading dashes to value.
    - Empty after O(state=absent).
  returned: always
  type: dict
  sample:
    encryption-provider-config: /etc/kubernetes/encryption/config.yaml
    encryption-provider-config-automatic-reload: "true"
volume_name:
  description:
    - Name of the volume that shows the configuration's directory to the apiserver; a pre-existing volume when one
      already covered the directory.
    - V(null) after O(state=absent).
  returned: always
  type: str
  sample: kubecrypt-encryption-config
restart_expected:
  description:
    - Whether the pod changed, so that the kubelet restarts the kube-apiserver (or would, in check mode).
  returned: always
  type: bool
  sample: true
backup_file:
  description: Copy of the manifest as it was before the change, inside O(backup_dir).
  returned: changed and not in check mode
  type: str
  sample: /etc/kubernetes/tmp/kubecrypt-backups/kube-apiserver.yaml.20250101T120000Z.bak
replaced_encryption_config:
  description: The configuration path C(--encryption-provider-config) pointed to before this module replaced it.
  returned: when the manifest pointed to another configuration file
  type: str
  sample: /etc/kubernetes/enc/enc.yaml
changes:
  description: What changed (or would change in check mode), one sentence each.
  returned: always
  type: list
  elements: str
  sample:
    - added --encryption-provider-config=/etc/kubernetes/encryption/config.yaml
    - added --encryption-provider-config-automatic-reload=true
    - "added volume kubecrypt-encryption-config: hostPath /etc/kubernetes/encryption mounted read-only at the same path"
msg:
  description: A summary of the result.
  returned: always
  type: str
  sample: "updated /etc/kubernetes/manifests/kube-apiserver.yaml: added --encryption-provider-config=..."
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.apiserver_manifest import (
    DEFAULT_BACKUP_DIR,
    HAS_YAML,
    YAML_IMPORT_ERROR,
    ApiserverManifest,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/kubernetes/manifests/kube-apiserver.yaml"),
            encryption_config=dict(type="path"),
            automatic_reload=dict(type="bool", default=True),
            config_sha256=dict(type="str"),
            backup_dir=dict(type="path", default=DEFAULT_BACKUP_DIR),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            kms_socket_dirs=dict(type="list", elements="path"),
        ),
        required_if=[("state", "present", ["encryption_config"])],
        supports_check_mode=True,
    )
    if not HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=YAML_IMPORT_ERROR)
    module.exit_json(**ApiserverManifest(module).run())


if __name__ == "__main__":
    main()
