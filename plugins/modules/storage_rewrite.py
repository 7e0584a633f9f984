#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: storage_rewrite
short_description: Rewrite stale stored objects through the Kubernetes API in resumable batches
version_added: 0.1.0
author:
  - kubecrypt developers (@kubecrypt)
description:
  - Sends a no-op update to every object of O(resources), so that kube-apiserver writes back the objects whose
    stored form is stale, that is, read with a provider or key that is not the first (write) one of its
    encryption configuration. It writes an unchanged object only then, so objects that are already current are
    not written, and running the module again is cheap and safe.
  - Objects are listed in pages of O(page_size) with metadata only (C(PartialObjectMetadataList)), so no secret
    data is read, and memory does not grow with the number of objects.
  - The update is a JSON merge patch C({}) without a resourceVersion precondition, so concurrent writers
    cause no conflict storm, and an object deleted since it was listed is not re-created (it counts as RV(gone)).
    The answer is asked for as C(PartialObjectMetadata) as well.
  - An object whose update answers HTTP 409 or 429, 503, 504 or not at all is retried a few times with a backoff.
    Other failures count as RV(errors); the task then fails after the batch, with all the counts, a sample of
    the failed objects in RV(error_samples), and the RV(continue_token) to resume after them.
  - A run handles at most O(batch_size) objects and returns RV(continue_token); pass it to the next run to go on
    from there. Loop until RV(done) is V(true).
  - Run it on one node, against an apiserver that already writes with the new provider and key, and only after
    every apiserver can read that key.
extends_documentation_fragment:
  - kubecrypt.at_rest.k8s_auth
  - kubecrypt.at_rest.attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode every update is a server-side dry run (C(dryRun=All)); nothing is written.
      - A dry run does not show whether the stored form is stale (the apiserver keeps the resourceVersion in its
        answer either way), so RV(would_update) counts every object whose update the server would accept.
  diff_mode:
    support: none
options:
  resources:
    description:
      - The resources to rewrite, by plural name, with the API group for resources outside the core group,
        like V(secrets), V(configmaps), V(deployments.apps) or V(widgets.example.com).
      - Each is found through API discovery and handled in the group's preferred version.
      - They are handled in the order given.
    type: list
    elements: str
    default: [secrets]
  namespace:
    description:
      - Rewrite only the objects of this namespace. All namespaces when not set.
      - Does not apply to cluster-scoped resources.
    type: str
  page_size:
    description: How many objects to list per request (the C(limit) of the list).
    type: int
    default: 500
  batch_size:
    description:
      - At most this many objects are handled in one run; the run then returns RV(continue_token).
    type: int
    default: 2000
  continue_token:
    description:
      - The RV(continue_token) of the previous run, to resume where it stopped. Empty or not set to start with
        the first resource.
      - The token is opaque. It carries the index of the resource in O(resources) and the API server's continue
        token for that resource's list, and is only valid with the same O(resources) and O(namespace).
      - When the API server has expired its part (HTTP 410 Gone, after an etcd compaction), the listing of that
        resource starts over from the beginning, which is safe because objects already rewritten are not
        written again; RV(restarted_listings) then names the resource.
    type: str
  concurrency:
    description: How many updates are sent in parallel (threads, each with its own connection).
    type: int
    default: 8
  rate_limit:
    description: At most this many updates per second, across all threads. V(0) means no limit.
    type: float
    default: 0
requirements:
  - PyYAML, to read the kubeconfig.
notes:
  - The credentials need to list and patch the resources in every namespace (or in O(namespace)).
  - Each update that writes an object goes through admission and creates a new resourceVersion, which
    watchers (controllers, operators) see as a modification event without changes.
seealso:
  - module: kubecrypt.at_rest.apiserver_wait
  - module: kubecrypt.at_rest.etcd_encryption_info
"""

EXAMPLES = r"""
- name: Rewrite all secrets in one go
  kubecrypt.at_rest.storage_rewrite:
    kubeconfig: /etc/kubernetes/admin.conf
    resources: [secrets]
    batch_size: 1000000
  become: true
  run_once: true

- name: Rewrite secrets and configmaps in batches (tasks file rewrite_batch.yml, included in a loop)
  kubecrypt.at_rest.storage_rewrite:
    kubeconfig: /etc/kubernetes/admin.conf
    resources: [secrets, configmaps]
    batch_size: 2000
    rate_limit: 200
    continue_token: "{{ __kubecrypt_rewrite.continue_token | default('') }}"
  become: true
  run_once: true
  register: __kubecrypt_rewrite

- name: Show the progress of the batch
  ansible.builtin.debug:
    msg: >-
      {{ __kubecrypt_rewrite.listed }} objects, {{ __kubecrypt_rewrite.rewritten }} rewritten
      at {{ __kubecrypt_rewrite.rate }}/s; done with {{ __kubecrypt_rewrite.resources_done }}
  run_once: true

- name: See how many secrets of one namespace would be updated
  kubecrypt.at_rest.storage_rewrite:
    kubeconfig: /etc/kubernetes/admin.conf
    namespace: kube-system
  check_mode: true
  become: true
  run_once: true
"""

RETURN = r"""
listed:
  description: Objects listed (and sent an update) in this run.
  returned: always
  type: int
  sample: 2000
rewritten:
  description:
    - Objects the apiserver wrote back, because they were stale; their resourceVersion changed.
    - An object that someone else changed between the list and the update also counts here.
  returned: always
  type: int
  sample: 1890
unchanged:
  description: Objects that were already stored with the write provider; the apiserver did not write them.
  returned: always
  type: int
  sample: 110
would_update:
  description: In check mode, objects whose (dry run) update the server accepted. V(0) otherwise.
  returned: always
  type: int
  sample: 0
conflicts:
  description: HTTP 409 answers that were retried.
  returned: always
  type: int
  sample: 0
gone:
  description: Objects deleted between the list and their update (HTTP 404); they are not re-created.
  returned: always
  type: int
  sample: 2
errors:
  description: Objects whose update failed for good. The task fails when this is not V(0).
  returned: always
  type: int
  sample: 0
error_samples:
  description: Up to 20 of the objects counted in RV(errors), without any object data.
  returned: always
  type: list
  elements: dict
  contains:
    resource:
      description: The resource, as in O(resources).
      type: str
      returned: always
      sample: secrets
    namespace:
      description: The object's namespace, V(null) for cluster-scoped resources.
      type: str
      returned: always
      sample: default
    name:
      description: The object's name.
      type: str
      returned: always
      sample: db-password
    status:
      description: The HTTP status, V(null) if the server did not answer.
      type: int
      returned: always
      sample: 500
    reason:
      description: The Kubernetes C(reason) of the failure.
      type: str
      returned: always
      sample: InternalError
    message:
      description: The server's message, shortened.
      type: str
      returned: always
      sample: "Internal error occurred: identity transformer tried to read encrypted data"
continue_token:
  description:
    - Where the next run goes on; pass it as O(continue_token). Empty when every resource is done.
  returned: always
  type: str
  sample: eyJjIjoiZXlKMklqb2liV1YwWVM1ck9ITXVhVzh2ZGpFaUxDSnlkaUk2TVRRaWZRIiwiZiI6IjFhMmIzYzRkNWU2ZiIsImkiOjAsInYiOjF9
done:
  description: Whether every resource of O(resources) has been handled completely.
  returned: always
  type: bool
  sample: false
resources_done:
  description: The resources of O(resources) that are handled completely, in this or earlier runs.
  returned: always
  type: list
  elements: str
  sample: [secrets]
restarted_listings:
  description: Resources whose listing started over because the API server expired the continue token.
  returned: always
  type: list
  elements: str
  sample: []
elapsed:
  description: Seconds this run took.
  returned: always
  type: float
  sample: 8.21
rate:
  description: Objects handled per second in this run.
  returned: always
  type: float
  sample: 243.6
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import k8s, storage_rewrite


def main():
    argument_spec = k8s.k8s_auth_argument_spec()
    argument_spec.update(storage_rewrite.argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=[["client_cert", "client_key"]],
        supports_check_mode=True,
    )
    if not k8s.HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=k8s.YAML_IMPORT_ERROR)
    try:
        result, failure = storage_rewrite.run_module(module.params, module.check_mode,
                                                     k8s.ApiClient.from_module_params)
    except (storage_rewrite.StorageRewriteError, k8s.ApiError, k8s.ConfigError) as exc:
        module.fail_json(msg=str(exc))
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
