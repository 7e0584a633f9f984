# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record the encryption flags and directory mount in a kubeadm ClusterConfiguration.

``kubeadm upgrade`` regenerates the kube-apiserver manifest from the
ClusterConfiguration kept in the ``kubeadm-config`` ConfigMap; without an
``apiServer.extraArgs`` and ``apiServer.extraVolumes`` entry the upgrade drops
what ``apiserver_manifest`` added.  ``update_cluster_configuration`` is the pure
function over the text (a ConfigMap's ``ClusterConfiguration`` value or a
multi-document kubeadm config file); ``KubeadmConfig`` is the module backend.

Only the ClusterConfiguration document changes, through the same minimal-edit
writer as the manifest, so the other documents stay byte-identical and the
ClusterConfiguration keeps its key order and comments.
"""

from __future__ import annotations

import copy
import os
import posixpath
import stat

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.apiserver_manifest import (
    CONFIG_FLAG,
    RELOAD_FLAG,
    OptionError,
    YamlEditError,
    KMS_SOCKET_VOLUME_NAME,
    check_kms_socket_dirs,
    check_state,
    dir_covers,
    edit_yaml_document,
    free_volume_name,
    is_go_true,
    is_our_volume_name,
    load_yaml_documents,
    normalize_dir,
    read_text_file,
    same_value,
    verify_yaml_documents,
)
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.files import atomic_write
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.k8s import ApiClient, ApiError, ConfigError

V1BETA3 = "kubeadm.k8s.io/v1beta3"
V1BETA4 = "kubeadm.k8s.io/v1beta4"
SUPPORTED_API_VERSIONS = (V1BETA3, V1BETA4)
DEFAULT_CERTIFICATES_DIR = "/etc/kubernetes/pki"
# kubeadm mounts certificatesDir into the kube-apiserver under this volume name.
CERTIFICATES_VOLUME = "k8s-certs"
# kubeadm's own order of HostPathMount fields (alphabetical, as it serializes them).
_VOLUME_KEYS = ("hostPath", "mountPath", "name", "pathType", "readOnly")


class KubeadmConfigError(ValueError):
    """The kubeadm configuration cannot be changed safely.

    The message reads after the source, e.g. ``<path> holds no ClusterConfiguration document``.
    """


class KubeadmConfigChanges(object):
    """What ``update_cluster_configuration`` changed, and what the configuration holds afterwards."""

    def __init__(self, api_version):
        self.api_version = api_version
        self.descriptions = []
        self.flags = {}
        self.volume_name = None
        self.replaced_encryption_config = None

    def add(self, description):
        self.descriptions.append(description)

    def __bool__(self):
        return bool(self.descriptions)

    __nonzero__ = __bool__


class _ExtraArgs(object):
    """``apiServer.extraArgs`` as a map (v1beta3) or a list of ``{name, value}`` (v1beta4)."""

    def __init__(self, api_server, api_version):
        self.api_server = api_server
        self.as_list = api_version == V1BETA4
        args = api_server.get("extraArgs")
        if args is None:
            return
        if self.as_list:
            if not isinstance(args, list) or not all(
                isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in args
            ):
                raise KubeadmConfigError(
                    "has an apiServer.extraArgs that is not a list of {name, value} (as %s requires)" % V1BETA4
                )
            for name in (CONFIG_FLAG, RELOAD_FLAG):
                count = sum(1 for entry in args if entry["name"] == name)
                if count > 1:
                    raise KubeadmConfigError(
                        "sets %s %d times in apiServer.extraArgs; remove the extra ones by hand" % (name, count)
                    )
        elif not isinstance(args, dict):
            raise KubeadmConfigError(
                "has an apiServer.extraArgs that is not a map of flag names to values (as %s requires)" % V1BETA3
            )

    def get(self, name):
        args = self.api_server.get("extraArgs")
        if not args:
            return None
        if self.as_list:
            return next((entry.get("value") for entry in args if entry["name"] == name), None)
        return args.get(name)

    def set(self, name, value):
        args = self.api_server.get("extraArgs")
        if self.as_list:
            if args is None:
                args = self.api_server["extraArgs"] = []
            for entry in args:
                if entry["name"] == name:
                    entry["value"] = value
                    return
            names = [entry["name"] for entry in args]
            position = len(args)
            if names == sorted(names):
                position = next((i for i, existing in enumerate(names) if existing > name), len(args))
            args.insert(position, {"name": name, "value": value})
        else:
            if args is None:
                args = self.api_server["extraArgs"] = {}
            args[name] = value

    def remove(self, name):
        args = self.api_server.get("extraArgs")
        if self.as_list:
            args[:] = [entry for entry in args if entry["name"] != name]
        else:
            del args[name]
        if not args:
            del self.api_server["extraArgs"]

    def flags(self):
        return dict(
            (name, self.get(name)) for name in (CONFIG_FLAG, RELOAD_FLAG) if self.get(name) is not None
        )


def update_cluster_configuration(text, encryption_config=None, automatic_reload=True, state="present",
                                 kms_socket_dirs=None):
    """Return ``(new_text, changes)`` for text holding a kubeadm ClusterConfiguration.

    ``text`` may hold other documents (InitConfiguration, KubeletConfiguration,
    ...); they are kept byte-identical.  ``kms_socket_dirs`` records the KMS
    plugins' socket directories as extraVolumes, like
    ``apiserver_manifest.update_manifest``.  Raises OptionError or
    KubeadmConfigError.
    """
    check_state(state, encryption_config)
    check_kms_socket_dirs(kms_socket_dirs)
    try:
        documents = load_yaml_documents(text)
    except YamlEditError as exc:
        raise KubeadmConfigError(str(exc))
    indexes = [
        i for i, (dummy, data) in enumerate(documents)
        if isinstance(data, dict) and data.get("kind") == "ClusterConfiguration"
    ]
    if not indexes:
        raise KubeadmConfigError("holds no ClusterConfiguration document")
    if len(indexes) > 1:
        raise KubeadmConfigError("holds %d ClusterConfiguration documents" % len(indexes))
    node, config = documents[indexes[0]]
    api_version = config.get("apiVersion")
    if api_version not in SUPPORTED_API_VERSIONS:
        raise KubeadmConfigError(
            "has a ClusterConfiguration of apiVersion %r; only %s are supported"
            % (api_version, " and ".join(SUPPORTED_API_VERSIONS))
        )

    desired = copy.deepcopy(config)
    api_server = desired.get("apiServer")
    if api_server is None:
        api_server = desired["apiServer"] = {}
    if not isinstance(api_server, dict):
        raise KubeadmConfigError("has an apiServer that is not a mapping")
    args = _ExtraArgs(api_server, api_version)
    changes = KubeadmConfigChanges(api_version)
    if state == "present":
        replaced = _ensure_args(args, encryption_config, automatic_reload, changes)
        changes.volume_name = _ensure_volume(
            desired, api_server, posixpath.dirname(encryption_config),
            posixpath.dirname(replaced) if replaced else None, changes,
        )
        if kms_socket_dirs is not None:
            _ensure_kms_socket_volumes(desired, api_server, kms_socket_dirs, changes)
    else:
        _remove_args_and_volume(api_server, args, encryption_config, changes)
        _ensure_kms_socket_volumes(desired, api_server, [], changes)
    if not api_server and config.get("apiServer") is None:
        # nothing to record: leave a missing or null apiServer as it was
        if "apiServer" in config:
            desired["apiServer"] = config["apiServer"]
        else:
            del desired["apiServer"]
    changes.flags = args.flags()

    if same_value(config, desired):
        return text, changes
    expected = [data for dummy, data in documents]
    expected[indexes[0]] = desired
    try:
        new_text = edit_yaml_document(text, node, config, desired)
        verify_yaml_documents(new_text, expected)
    except YamlEditError as exc:
        raise KubeadmConfigError("cannot be changed without reformatting it (%s); make the change by hand" % exc)
    return new_text, changes


def _ensure_args(args, encryption_config, automatic_reload, changes):
    """Set both extraArgs; return the config path recorded before, if it was another."""
    replaced = None
    current = args.get(CONFIG_FLAG)
    if current is None:
        args.set(CONFIG_FLAG, encryption_config)
        changes.add("added extraArgs %s=%s" % (CONFIG_FLAG, encryption_config))
    elif current != encryption_config:
        replaced = current
        args.set(CONFIG_FLAG, encryption_config)
        changes.replaced_encryption_config = current
        changes.add("replaced extraArgs %s=%s by %s" % (CONFIG_FLAG, current, encryption_config))
    reload_value = args.get(RELOAD_FLAG)
    if automatic_reload:
        if reload_value is None:
            args.set(RELOAD_FLAG, "true")
            changes.add("added extraArgs %s=true" % RELOAD_FLAG)
        elif not is_go_true(reload_value):
            args.set(RELOAD_FLAG, "true")
            changes.add("set extraArgs %s=true (was %r)" % (RELOAD_FLAG, reload_value))
    elif reload_value is not None:
        args.remove(RELOAD_FLAG)
        changes.add("removed extraArgs %s" % RELOAD_FLAG)
    return replaced


def _extra_volumes(api_server):
    volumes = api_server.get("extraVolumes")
    if volumes is None:
        return []
    if not isinstance(volumes, list) or not all(isinstance(volume, dict) for volume in volumes):
        raise KubeadmConfigError("has an apiServer.extraVolumes that is not a list of mappings")
    return volumes


def _our_volume(api_server, directory):
    for volume in _extra_volumes(api_server):
        if is_our_volume_name(volume.get("name")) and volume.get("hostPath") == directory \
                and volume.get("mountPath") == directory and volume.get("readOnly") is True \
                and volume.get("pathType") == "DirectoryOrCreate":
            return volume["name"]
    return None


def _covering_volume(config, api_server, directory):
    """A volume kubeadm will mount that shows ``directory`` at the same path, or None."""
    best = None
    for volume in _extra_volumes(api_server):
        mount_path = normalize_dir(volume.get("mountPath"))
        if not dir_covers(mount_path, directory) or normalize_dir(volume.get("hostPath")) != mount_path:
            continue
        if volume.get("pathType") not in (None, "", "Directory", "DirectoryOrCreate"):
            continue
        if best is None or len(mount_path) > len(best[0]):
            best = (mount_path, volume.get("name"))
    if best:
        return best[1]
    if dir_covers(normalize_dir(config.get("certificatesDir") or DEFAULT_CERTIFICATES_DIR), directory):
        return CERTIFICATES_VOLUME
    return None


def _new_volume(api_server, name, directory, read_only=True):
    values = {
        "hostPath": directory, "mountPath": directory, "name": name,
        "pathType": "DirectoryOrCreate", "readOnly": read_only,
    }
    volumes = _extra_volumes(api_server)
    # follow the key order of the entries already there, else kubeadm's
    order = [key for key in (volumes[0] if volumes else {}) if key in values]
    order += [key for key in _VOLUME_KEYS if key not in order]
    return dict((key, values[key]) for key in order)


def _ensure_volume(config, api_server, directory, stale_directory, changes):
    if stale_directory and stale_directory != directory:
        stale = _our_volume(api_server, stale_directory)
        if stale:
            _remove_volume(api_server, stale)
            changes.add("removed extraVolumes %s of the previous directory %s" % (stale, stale_directory))
    name = _our_volume(api_server, directory) or _covering_volume(config, api_server, directory)
    if name:
        return name
    for volume in _extra_volumes(api_server):
        if normalize_dir(volume.get("mountPath")) == directory:
            raise KubeadmConfigError(
                "already has extraVolumes %r at %s, and it is not a hostPath of that same directory; "
                "cannot mount the encryption configuration's directory there" % (volume.get("name"), directory)
            )
    name = free_volume_name(set(volume.get("name") for volume in _extra_volumes(api_server)))
    if api_server.get("extraVolumes") is None:
        api_server["extraVolumes"] = []
    api_server["extraVolumes"].append(_new_volume(api_server, name, directory))
    changes.add("added extraVolumes %s: hostPath %s mounted read-only at the same path" % (name, directory))
    return name


def _our_kms_socket_volumes(api_server):
    """``{directory: name}`` of the socket extraVolumes this module added."""
    found = {}
    for volume in _extra_volumes(api_server):
        name = volume.get("name")
        if isinstance(name, str) and (name == KMS_SOCKET_VOLUME_NAME or name.startswith(KMS_SOCKET_VOLUME_NAME + "-")) \
                and volume.get("hostPath") == volume.get("mountPath") and volume.get("pathType") == "DirectoryOrCreate" \
                and not volume.get("readOnly"):
            found[volume["hostPath"]] = name
    return found


def _ensure_kms_socket_volumes(config, api_server, directories, changes):
    """Record each KMS plugin socket directory as a writable extraVolume; drop those of other directories."""
    ours = _our_kms_socket_volumes(api_server)
    for directory, name in sorted(ours.items()):
        if directory not in directories:
            _remove_volume(api_server, name)
            changes.add("removed extraVolumes %s of the KMS plugin socket directory %s" % (name, directory))
    for directory in directories:
        if directory in ours or _covering_volume(config, api_server, directory):
            continue
        for volume in _extra_volumes(api_server):
            if normalize_dir(volume.get("mountPath")) == directory:
                raise KubeadmConfigError(
                    "already has extraVolumes %r at %s, and it is not a hostPath of that same directory; "
                    "cannot mount the KMS plugin socket directory there" % (volume.get("name"), directory))
        name = free_volume_name(set(volume.get("name") for volume in _extra_volumes(api_server)),
                                KMS_SOCKET_VOLUME_NAME)
        if api_server.get("extraVolumes") is None:
            api_server["extraVolumes"] = []
        api_server["extraVolumes"].append(_new_volume(api_server, name, directory, read_only=False))
        changes.add("added extraVolumes %s: KMS plugin socket directory %s mounted at the same path" % (
            name, directory))


def _remove_volume(api_server, name):
    api_server["extraVolumes"] = [volume for volume in _extra_volumes(api_server) if volume.get("name") != name]
    if not api_server["extraVolumes"]:
        del api_server["extraVolumes"]


def _remove_args_and_volume(api_server, args, encryption_config, changes):
    current = args.get(CONFIG_FLAG)
    if current is not None and encryption_config is not None and current != encryption_config:
        raise KubeadmConfigError(
            "records %s=%s, not %s; refusing to remove an encryption configuration this task did not set"
            % (CONFIG_FLAG, current, encryption_config)
        )
    for name in (RELOAD_FLAG, CONFIG_FLAG):
        if args.get(name) is not None:
            args.remove(name)
            changes.add("removed extraArgs %s" % name)
    directories = []
    for path in (current, encryption_config):
        if isinstance(path, str) and posixpath.dirname(path) not in directories:
            directories.append(posixpath.dirname(path))
    for directory in directories:
        ours = _our_volume(api_server, directory)
        if ours:
            _remove_volume(api_server, ours)
            changes.add("removed extraVolumes %s (%s)" % (ours, directory))


CONFIGMAP_PATH = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"
CONFIGMAP_KEY = "ClusterConfiguration"
_CONFLICT_RETRIES = 3


def update_configmap(client, encryption_config, automatic_reload, state, check_mode=False, kms_socket_dirs=None):
    """Record the flags in the ``kubeadm-config`` ConfigMap through the API.

    Read, change the ``ClusterConfiguration`` text, and write it back with the
    resourceVersion that was read, so that a concurrent writer (``kubeadm
    upgrade``, another run) is never overwritten: a conflict is read again
    and retried.  Returns ``(found, before, after, changes)``; ``found`` is
    false when the cluster has no such ConfigMap (not a kubeadm cluster).
    ``client`` is a ``module_utils.k8s.ApiClient``.
    """
    for attempt in range(_CONFLICT_RETRIES + 1):
        try:
            dummy, dummy, configmap = client.request("GET", CONFIGMAP_PATH)
        except ApiError as exc:
            if exc.status == 404:
                return False, None, None, None
            raise
        before = (configmap.get("data") or {}).get(CONFIGMAP_KEY)
        if before is None:
            raise KubeadmConfigError("kube-system/kubeadm-config has no %s key" % CONFIGMAP_KEY)
        after, changes = update_cluster_configuration(before, encryption_config, automatic_reload, state,
                                                      kms_socket_dirs=kms_socket_dirs)
        if after == before or check_mode:
            return True, before, after, changes
        configmap["data"][CONFIGMAP_KEY] = after
        try:
            client.request("PUT", CONFIGMAP_PATH, body=configmap)
        except ApiError as exc:
            if exc.status == 409 and attempt < _CONFLICT_RETRIES:
                continue
            raise
        return True, before, after, changes
    raise KubeadmConfigError("kube-system/kubeadm-config kept changing; nothing was written")  # pragma: no cover


class KubeadmConfig(object):
    """Backend of the ``kubeadm_config`` module."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def run(self):
        params = self.params
        if params["configmap"]:
            return self._run_configmap()
        path = params["path"]
        if params["content"] is not None:
            source, before = "content", params["content"]
        else:
            source = path
            dummy, before = read_text_file(self.module, path)
        try:
            after, changes = update_cluster_configuration(
                before, params["encryption_config"], params["automatic_reload"], params["state"],
                kms_socket_dirs=params.get("kms_socket_dirs"),
            )
        except OptionError as exc:
            self.module.fail_json(msg=str(exc))
        except KubeadmConfigError as exc:
            self.module.fail_json(msg="%s %s" % (source, exc))

        changed = after != before
        result = dict(
            changed=changed,
            flags=changes.flags,
            volume_name=changes.volume_name,
            api_version=changes.api_version,
            changes=changes.descriptions,
        )
        if changes.replaced_encryption_config is not None:
            result["replaced_encryption_config"] = changes.replaced_encryption_config
        if params["content"] is not None:
            result["content"] = after
        elif changed and not self.module.check_mode:
            atomic_write(self.module, path, after.encode("utf-8"), mode=stat.S_IMODE(os.stat(path).st_mode))
        if self.module._diff:
            result["diff"] = dict(before=before, after=after, before_header=source, after_header=source)
        if changed and params["content"] is not None:
            result["msg"] = "changed the ClusterConfiguration in content, write the returned content back: %s" % (
                "; ".join(changes.descriptions))
        elif changed:
            verb = "would update" if self.module.check_mode else "updated"
            result["msg"] = "%s the ClusterConfiguration in %s: %s" % (verb, source, "; ".join(changes.descriptions))
        else:
            result["msg"] = "the ClusterConfiguration in %s is already as requested" % source
        return result

    def _run_configmap(self):
        params = self.params
        source = "kube-system/kubeadm-config"
        try:
            client = ApiClient.from_module_params(params)
            found, before, after, changes = update_configmap(
                client, params["encryption_config"], params["automatic_reload"], params["state"],
                check_mode=self.module.check_mode, kms_socket_dirs=params.get("kms_socket_dirs"))
        except (ApiError, ConfigError) as exc:
            self.module.fail_json(msg="cannot update %s: %s" % (source, exc))
        except OptionError as exc:
            self.module.fail_json(msg=str(exc))
        except KubeadmConfigError as exc:
            self.module.fail_json(msg="%s %s" % (source, exc))
        if not found:
            return dict(changed=False, found=False, flags={}, changes=[],
                        msg="the cluster has no %s ConfigMap (not set up by kubeadm): nothing to record" % source)
        changed = after != before
        result = dict(changed=changed, found=True, flags=changes.flags, volume_name=changes.volume_name,
                      api_version=changes.api_version, changes=changes.descriptions)
        if changes.replaced_encryption_config is not None:
            result["replaced_encryption_config"] = changes.replaced_encryption_config
        if self.module._diff:
            result["diff"] = dict(before=before, after=after, before_header=source, after_header=source)
        if changed:
            verb = "would update" if self.module.check_mode else "updated"
            result["msg"] = "%s the ClusterConfiguration in %s: %s" % (verb, source, "; ".join(changes.descriptions))
        else:
            result["msg"] = "the ClusterConfiguration in %s is already as requested" % source
        return result
