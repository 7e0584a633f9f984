# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point a kube-apiserver static pod manifest at an EncryptionConfiguration.

Two layers, both usable without Ansible:

* A minimal-edit YAML writer (``load_yaml_documents``, ``edit_yaml_document``,
  ``verify_yaml_documents``).  It compares the document as loaded with the
  intended one and turns the difference into text edits at the positions
  PyYAML's composer reports, so that untouched lines, comments included, stay
  byte for byte.  New entries get the indentation of their siblings; an entry
  added to a block collection is a run of added lines.  Callers load the result
  again and compare it with what they intended before they write anything.
* ``update_manifest``: the pod-level policy (flags, directory mount,
  annotation) as a pure function over the manifest text.

``ApiserverManifest`` is the backend of the ``apiserver_manifest`` module: file
reading, backup outside the manifests directory, atomic write.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import posixpath
import re
import stat
import time
import traceback

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.files import atomic_write

try:
    import yaml
except ImportError:
    HAS_YAML = False
    YAML_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_YAML = True
    YAML_IMPORT_ERROR = None


CONTAINER_NAME = "kube-apiserver"
CONFIG_FLAG = "encryption-provider-config"
RELOAD_FLAG = "encryption-provider-config-automatic-reload"
VOLUME_NAME = "kubecrypt-encryption-config"
KMS_SOCKET_VOLUME_NAME = "kubecrypt-kms-socket"
SHA256_ANNOTATION = "at-rest.kubecrypt.io/encryption-config-sha256"
DEFAULT_BACKUP_DIR = "/etc/kubernetes/tmp/kubecrypt-backups"

# Values Go's strconv.ParseBool (and so the apiserver's flag parser) reads as true.
_GO_TRUE = frozenset(["1", "t", "T", "TRUE", "true", "True"])
# Volume names this collection gives out: the default and its collision suffixes.
_OUR_VOLUME_NAME = re.compile(r"^%s(?:-[0-9]+)?$" % re.escape(VOLUME_NAME))
_OUR_KMS_SOCKET_VOLUME_NAME = re.compile(r"^%s(?:-[0-9]+)?$" % re.escape(KMS_SOCKET_VOLUME_NAME))
_SHA256 = re.compile(r"^(?:sha256:)?[0-9a-fA-F]{64}$")
# Strings that Go's YAML libraries resolve to something other than a string
# when written plain (PyYAML's YAML 1.1 rules miss some, e.g. ``1e5``).
_GO_NON_STRING = re.compile(
    r"^(?:[-+]?\.?[0-9]|[-+]?\.(?:inf|nan)$|(?:y|n|yes|no|on|off|true|false|null|~)$|$)",
    re.IGNORECASE,
)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


class OptionError(ValueError):
    """An option value is unusable; raised before anything is read or written."""


class ManifestError(ValueError):
    """The manifest cannot be changed safely.

    The message reads after the manifest's path, e.g. ``<path> is not a v1 Pod``.
    """


class YamlEditError(ValueError):
    """The YAML text cannot be loaded, or not changed without reformatting it."""


# ---------------------------------------------------------------------------
# Option checks shared with kubeadm_config
# ---------------------------------------------------------------------------

def check_encryption_config(path):
    """Raise OptionError unless ``path`` can serve as the config path on host and in the pod."""
    if not isinstance(path, str) or not path:
        raise OptionError("encryption_config must be a non-empty path")
    if any(ord(char) < 32 or ord(char) == 127 for char in path):
        raise OptionError("encryption_config %r contains control characters" % path)
    if not path.startswith("/") or path.startswith("//") or posixpath.normpath(path) != path:
        raise OptionError(
            "encryption_config %r must be an absolute, normalized path "
            "(no trailing slash, no '.' or '..' components)" % path
        )
    if posixpath.dirname(path) == "/":
        raise OptionError(
            "encryption_config %r lies directly in /; its directory is mounted into the "
            "kube-apiserver pod, so put it in a directory of its own, "
            "e.g. /etc/kubernetes/encryption" % path
        )


def check_config_sha256(value):
    """Raise OptionError unless ``value`` is a sha256 hex digest (optionally ``sha256:``-prefixed)."""
    if not isinstance(value, str) or not _SHA256.match(value):
        raise OptionError(
            "config_sha256 must be 64 hexadecimal digits, optionally prefixed with 'sha256:', not %r"
            % (value,)
        )


def check_state(state, encryption_config):
    """Raise OptionError for an unknown state or a missing config path."""
    if state not in ("present", "absent"):
        raise OptionError("state must be 'present' or 'absent', not %r" % (state,))
    if state == "present" and encryption_config is None:
        raise OptionError("encryption_config is required when state is 'present'")
    if encryption_config is not None:
        check_encryption_config(encryption_config)


def check_kms_socket_dirs(directories):
    """Raise OptionError unless every entry is an absolute, normalized directory below ``/``."""
    if directories is None:
        return
    if not isinstance(directories, (list, tuple)):
        raise OptionError("kms_socket_dirs must be a list of directories")
    for directory in directories:
        if not isinstance(directory, str) or not directory.startswith("/") or directory.startswith("//") \
                or posixpath.normpath(directory) != directory or directory == "/" \
                or any(ord(char) < 32 or ord(char) == 127 for char in directory):
            raise OptionError(
                "kms_socket_dirs: %r must be an absolute, normalized directory below / (the directory of a KMS "
                "plugin's unix socket, e.g. /var/run/kmsplugin)" % (directory,))


def is_go_true(value):
    """Whether the apiserver's flag parser reads ``value`` as true."""
    return value in _GO_TRUE


def is_our_volume_name(name):
    """Whether ``name`` is one of the volume names this collection gives out."""
    return isinstance(name, str) and bool(_OUR_VOLUME_NAME.match(name))


def free_volume_name(used, base=VOLUME_NAME):
    """The first of kubecrypt-encryption-config (or ``base``), -2, -3, ... not in ``used``."""
    if base not in used:
        return base
    suffix = 2
    while "%s-%d" % (base, suffix) in used:
        suffix += 1
    return "%s-%d" % (base, suffix)


def normalize_dir(path):
    """``path`` without trailing slashes, or None when it is not an absolute path string."""
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    return posixpath.normpath(path)


def dir_covers(parent, directory):
    """Whether ``directory`` is ``parent`` or lies below it (both normalized)."""
    if parent is None or parent == "/":
        return False
    return directory == parent or directory.startswith(parent + "/")


# ---------------------------------------------------------------------------
# Minimal-edit YAML writer
# ---------------------------------------------------------------------------

def load_yaml_documents(text):
    """Compose and construct every document of ``text``.

    Returns a list of ``(node, data)``.  Raises YamlEditError for malformed
    YAML, duplicate mapping keys, merge keys and aliases: an edit next to an
    anchor would silently change every alias of it too.
    """
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        for node in nodes:
            _check_node_tree(node)
        return [(node, _construct(node)) for node in nodes]
    except yaml.YAMLError as exc:
        raise YamlEditError("is not valid YAML: %s" % _one_line(exc))


def edit_yaml_document(text, node, old, new):
    """Return ``text`` with the document ``node`` (which loads as ``old``) changed to load as ``new``.

    Only the text of the parts that differ changes; everything outside
    ``node`` stays byte-identical.  The caller must verify the result with
    ``verify_yaml_documents``.  Raises YamlEditError when a change cannot be
    made without reformatting.
    """
    editor = _Editor(text)
    editor.reconcile(node, old, new)
    return editor.result()


def verify_yaml_documents(text, expected):
    """Raise YamlEditError unless ``text`` loads as exactly the documents ``expected``."""
    documents = load_yaml_documents(text)
    if len(documents) != len(expected) or not all(
        same_value(data, wanted) for (dummy, data), wanted in zip(documents, expected)
    ):
        raise YamlEditError("the edited text does not load as the intended document")


def same_value(left, right):
    """Equality that also tells ``1`` from ``true`` and ``1.0`` (YAML does)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_value(left[key], right[key]) for key in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(same_value(a, b) for a, b in zip(left, right))
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    return left == right


def _one_line(exc):
    return " ".join(str(exc).replace('in "<unicode string>", ', "").split())


def _construct(node):
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_node_tree(root):
    """Refuse duplicate keys (Go's YAML rejects them, PyYAML keeps the last), aliases and merge keys.

    Merge keys are refused before construction because PyYAML's constructor
    rewrites the node tree in place when it flattens them.
    """
    seen = set()
    pending = [root]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            raise YamlEditError(
                "uses a YAML alias (line %d); edit a file without anchors and aliases"
                % (node.start_mark.line + 1)
            )
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    raise YamlEditError(
                        "uses a YAML merge key (<<) at line %d; edit a file without merge keys"
                        % (key_node.start_mark.line + 1)
                    )
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, key_node.value)
                    if key in keys:
                        raise YamlEditError(
                            "has the key %r twice in one mapping (line %d)"
                            % (key_node.value, key_node.start_mark.line + 1)
                        )
                    keys.add(key)
                pending.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)


def _fingerprint(value):
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


_DUMPER = []


def _dumper():
    """A SafeDumper that never emits aliases and quotes strings Go would not read as strings."""
    if not _DUMPER:
        class Dumper(yaml.SafeDumper):
            def ignore_aliases(self, data):
                return True

        def represent_str(dumper, value):
            style = "'" if _GO_NON_STRING.match(value) else None
            return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

        Dumper.add_representer(str, represent_str)
        _DUMPER.append(Dumper)
    return _DUMPER[0]


def _dump(value):
    return yaml.dump(
        value, Dumper=_dumper(), default_flow_style=False, sort_keys=False,
        allow_unicode=True, width=1 << 30, indent=2,
    )


class _Editor(object):
    """Collects text edits against one string and applies them in one pass."""

    def __init__(self, text):
        self.text = text
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self._edits = []

    # -- edits --------------------------------------------------------------

    def _replace(self, start, end, new_text):
        self._edits.append((start, end, len(self._edits), new_text))

    def _insert_lines(self, position, block):
        """Insert whole lines (``block`` ends with a newline) at a line start."""
        if position == len(self.text) and self.text and not self.text.endswith("\n"):
            block = self.newline + block[:-len(self.newline)]
        self._replace(position, position, block)

    def _remove_lines(self, start, end):
        """Remove whole lines; at the end of a file without a final line break, also the break before."""
        if end == len(self.text) and not self.text.endswith("\n") and start > 0:
            start -= len(self.newline) if self.text.endswith(self.newline, 0, start) else 1
        self._replace(start, end, "")

    def result(self):
        pieces = []
        done = 0
        for start, end, dummy, new_text in sorted(self._edits):
            if start < done:
                raise YamlEditError("two changes overlap near line %d" % (self._line_number(start)))
            pieces.append(self.text[done:start])
            pieces.append(new_text)
            done = end
        pieces.append(self.text[done:])
        return "".join(pieces)

    # -- positions ----------------------------------------------------------

    def _line_start(self, index):
        return self.text.rfind("\n", 0, index) + 1

    def _line_end(self, index):
        """Index just after the line break that ends the line holding ``index``."""
        found = self.text.find("\n", index)
        return len(self.text) if found < 0 else found + 1

    def _line_number(self, index):
        return self.text.count("\n", 0, index) + 1

    def _content_end(self, node):
        """Index just after the last character that belongs to ``node``."""
        while True:
            if isinstance(node, yaml.ScalarNode):
                start, end = node.start_mark.index, node.end_mark.index
                # block scalars end after their trailing line breaks
                while end > start and self.text[end - 1] in " \t\r\n":
                    end -= 1
                return end
            if node.flow_style or not node.value:
                return node.end_mark.index
            if isinstance(node, yaml.MappingNode):
                key_node, value_node = node.value[-1]
                return max(self._content_end(key_node), self._content_end(value_node))
            node = node.value[-1]

    def _after_lines_of(self, node, *more):
        """Index of the first line after everything of ``node`` (and ``more``)."""
        end = max(self._content_end(item) for item in (node,) + more)
        return self._line_end(max(end - 1, 0))

    def _item_start(self, item):
        """(line start, dash column) of a block sequence item."""
        index = item.start_mark.index - 1
        while index >= 0 and self.text[index] in " \t\r\n":
            index -= 1
        if index < 0 or self.text[index] != "-":
            raise YamlEditError(
                "cannot find the '-' of the sequence item at line %d" % (item.start_mark.line + 1)
            )
        start = self._line_start(index)
        if self.text[start:index].strip():
            raise YamlEditError(
                "the sequence item at line %d shares its line with other content"
                % (item.start_mark.line + 1)
            )
        return start, index - start

    def _key_line_start(self, key_node):
        """Line start of a block mapping key, or None when the key shares its line (``- key:``)."""
        start = self._line_start(key_node.start_mark.index)
        if self.text[start:key_node.start_mark.index].strip():
            return None
        return start

    # -- rendering ------------------------------------------------------------

    def _render_block(self, value, indent):
        lines = _dump(value).splitlines()
        return "".join((" " * indent + line if line else "") + self.newline for line in lines)

    @staticmethod
    def _render_scalar(value):
        rendered = _dump({"k": value})
        if not rendered.startswith("k: ") or rendered.count("\n") != 1:
            raise YamlEditError("cannot write %r on one line" % (value,))
        return rendered[3:-1]

    @staticmethod
    def _render_flow(value):
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            raise YamlEditError("cannot write %r in flow style" % (value,))

    # -- reconciliation -------------------------------------------------------

    def reconcile(self, node, old, new, key_node=None):
        """Register the edits that turn ``node`` (loading as ``old``) into ``new``.

        ``key_node`` is the key when ``node`` is a value in a block mapping.
        """
        if same_value(old, new):
            return
        collection = isinstance(node, (yaml.MappingNode, yaml.SequenceNode))
        if collection and (node.flow_style or not node.value):
            self._replace_inline(node, new, key_node)
        elif isinstance(node, yaml.MappingNode) and isinstance(old, dict) and isinstance(new, dict):
            self._reconcile_mapping(node, old, new)
        elif isinstance(node, yaml.SequenceNode) and isinstance(old, list) and isinstance(new, list):
            self._reconcile_sequence(node, old, new)
        elif isinstance(node, yaml.ScalarNode):
            if isinstance(new, (dict, list)):
                self._replace_inline(node, new, key_node)
            else:
                self._replace_scalar(node, new)
        else:
            raise YamlEditError(
                "cannot replace the block at line %d by a value of another kind"
                % (node.start_mark.line + 1)
            )

    def _replace_scalar(self, node, new):
        if node.style in ("|", ">"):
            raise YamlEditError("will not rewrite the block scalar at line %d" % (node.start_mark.line + 1))
        self._replace(node.start_mark.index, node.end_mark.index, self._render_scalar(new))

    def _replace_inline(self, node, new, key_node):
        """Replace a flow collection or scalar.

        An empty value of a block mapping key (``key: {}``, ``key: []``,
        ``key:``) that gets content becomes a block below the key, the way
        kubeadm writes it; anything else is written as one JSON flow value.
        """
        start, end = node.start_mark.index, node.end_mark.index
        empty = (not node.value) if not isinstance(node, yaml.ScalarNode) else node.tag == _NULL_TAG
        if key_node is not None and empty and isinstance(new, (dict, list)) and new:
            if not self.text[end:self._line_end(end)].strip():
                while start > 0 and self.text[start - 1] in " \t":
                    start -= 1
                self._replace(start, end, "")
                indent = key_node.start_mark.column + (2 if isinstance(new, dict) else 0)
                self._insert_lines(self._line_end(end), self._render_block(new, indent))
                return
        if isinstance(node, yaml.ScalarNode) and start == end:
            self._replace(start, end, " " + self._render_flow(new))
        else:
            self._replace(start, end, self._render_flow(new))

    def _collapse(self, key_node, value_node, new):
        """Turn a block collection below ``key_node`` into an empty flow one (``key: {}``)."""
        colon = key_node.end_mark.index
        while colon < len(self.text) and self.text[colon] in " \t":
            colon += 1
        if colon >= len(self.text) or self.text[colon] != ":" or (
            self._line_number(value_node.start_mark.index) == self._line_number(colon)
        ):
            raise YamlEditError("cannot empty the block at line %d" % (value_node.start_mark.line + 1))
        self._replace(colon + 1, colon + 1, " " + self._render_flow(new))
        self._remove_lines(self._line_end(colon), self._after_lines_of(value_node))

    def _reconcile_mapping(self, node, old, new):
        kept = []
        for key_node, value_node in node.value:
            key = _construct(key_node)
            if key not in new:
                start = self._key_line_start(key_node)
                if start is None:
                    raise YamlEditError(
                        "cannot remove the key %r at line %d without rewriting its line"
                        % (key, key_node.start_mark.line + 1)
                    )
                self._remove_lines(start, self._after_lines_of(key_node, value_node))
                continue
            kept.append((key, key_node, value_node))
            if same_value(old[key], new[key]):
                continue
            emptied = isinstance(new[key], (dict, list)) and not new[key]
            block = isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)) and not value_node.flow_style
            if emptied and block and value_node.value:
                self._collapse(key_node, value_node, new[key])
            else:
                self.reconcile(value_node, old[key], new[key], key_node)
        added = [key for key in new if key not in old]
        if not added:
            return
        if not kept:
            raise YamlEditError("cannot replace every key of the mapping at line %d" % (node.start_mark.line + 1))
        keys = [key for key, dummy, dummy in kept]
        in_order = all(isinstance(key, str) for key in keys + added) and keys == sorted(keys)
        indent = kept[0][1].start_mark.column
        groups = {}
        for key in (sorted(added) if in_order else added):
            position = len(kept)
            if in_order:
                position = next((i for i, existing in enumerate(keys) if existing > key), len(kept))
            if position == 0 and self._key_line_start(kept[0][1]) is None:
                # the first key sits on a "- " line: add after the mapping instead
                position = len(kept)
            groups.setdefault(position, []).append(key)
        for position in sorted(groups):
            if position == 0:
                point = self._key_line_start(kept[0][1])
            else:
                dummy, key_node, value_node = kept[position - 1]
                point = self._after_lines_of(key_node, value_node)
            block = "".join(self._render_block({key: new[key]}, indent) for key in groups[position])
            self._insert_lines(point, block)

    def _reconcile_sequence(self, node, old, new):
        items = node.value
        if not new:
            raise YamlEditError("cannot empty the block sequence at line %d" % (node.start_mark.line + 1))
        dash_column = self._item_start(items[0])[1]
        matcher = difflib.SequenceMatcher(
            None, [_fingerprint(item) for item in old], [_fingerprint(item) for item in new], autojunk=False
        )
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            if tag == "replace" and i2 - i1 == j2 - j1:
                for offset in range(i2 - i1):
                    self.reconcile(items[i1 + offset], old[i1 + offset], new[j1 + offset])
                continue
            if j2 > j1:
                if i1 == 0:
                    point = self._item_start(items[0])[0]
                else:
                    point = self._after_lines_of(items[i1 - 1])
                self._insert_lines(point, self._render_block(new[j1:j2], dash_column))
            for index in range(i1, i2):
                self._remove_lines(self._item_start(items[index])[0], self._after_lines_of(items[index]))


# ---------------------------------------------------------------------------
# The pod-level policy
# ---------------------------------------------------------------------------

class ManifestChanges(object):
    """What ``update_manifest`` changed, and what the manifest holds afterwards."""

    def __init__(self):
        self.descriptions = []
        self.flags = {}
        self.volume_name = None
        self.replaced_encryption_config = None
        self.restart_expected = False

    def add(self, description):
        self.descriptions.append(description)

    def __bool__(self):
        return bool(self.descriptions)

    __nonzero__ = __bool__


class _Flag(object):
    """One occurrence of a flag in the container's command or args."""

    def __init__(self, field, index, value_index, value):
        self.field = field
        self.index = index
        self.value_index = value_index
        self.value = value


def update_manifest(text, encryption_config=None, automatic_reload=True, config_sha256=None, state="present",
                    kms_socket_dirs=None):
    """Return ``(new_text, changes)`` for a kube-apiserver static pod manifest.

    ``state='present'`` ensures ``--encryption-provider-config=<encryption_config>``,
    ``--encryption-provider-config-automatic-reload=true`` (or its absence when
    ``automatic_reload`` is false), a read-only hostPath mount of the config's
    directory (or an existing mount that covers it) and the hash annotation
    (removed when ``config_sha256`` is None).  With ``kms_socket_dirs`` (a
    list), each of those directories is mounted at the same path (or covered
    by an existing mount) and the socket mounts this function added for other
    directories are removed; ``None`` leaves the socket mounts alone.
    ``state='absent'`` removes what ``present`` adds and nothing else.  Raises
    OptionError or ManifestError; never returns text that does not load as the
    intended pod.
    """
    check_state(state, encryption_config)
    if config_sha256 is not None:
        check_config_sha256(config_sha256)
    check_kms_socket_dirs(kms_socket_dirs)
    try:
        documents = load_yaml_documents(text)
    except YamlEditError as exc:
        raise ManifestError(str(exc))
    if not documents:
        raise ManifestError("is empty: it holds no YAML document")
    if len(documents) > 1:
        raise ManifestError(
            "holds %d YAML documents; a static pod manifest holds exactly one Pod" % len(documents)
        )
    node, pod = documents[0]
    _check_pod(pod)

    desired = copy.deepcopy(pod)
    container = _apiserver_container(desired)
    changes = ManifestChanges()
    if state == "present":
        replaced = _ensure_flags(container, encryption_config, automatic_reload, changes)
        stale_directory = posixpath.dirname(replaced) if replaced else None
        changes.volume_name = _ensure_directory_mount(
            desired, container, posixpath.dirname(encryption_config), stale_directory, changes
        )
        if kms_socket_dirs is not None:
            _ensure_kms_socket_mounts(desired, container, kms_socket_dirs, changes)
    else:
        _remove_flags_and_mount(desired, container, encryption_config, changes)
        _ensure_kms_socket_mounts(desired, container, [], changes)
    _ensure_annotation(desired, config_sha256 if state == "present" else None, changes)
    changes.flags = dict((name, flag.value) for name, flag in _find_flags(container).items())

    if same_value(pod, desired):
        return text, changes
    try:
        new_text = edit_yaml_document(text, node, pod, desired)
        verify_yaml_documents(new_text, [desired])
    except YamlEditError as exc:
        raise ManifestError(
            "cannot be changed without reformatting it (%s); make the change by hand" % exc
        )
    changes.restart_expected = True
    return new_text, changes


def _check_pod(pod):
    if not isinstance(pod, dict) or pod.get("apiVersion") != "v1" or pod.get("kind") != "Pod":
        found = (pod.get("apiVersion"), pod.get("kind")) if isinstance(pod, dict) else (None, None)
        raise ManifestError("is not a v1 Pod (apiVersion: %r, kind: %r)" % found)
    if not isinstance(pod.get("metadata", {}), dict):
        raise ManifestError("has a metadata that is not a mapping")
    if not isinstance(pod.get("spec"), dict):
        raise ManifestError("has no pod spec")


def _apiserver_container(pod):
    containers = pod["spec"].get("containers")
    if not isinstance(containers, list):
        raise ManifestError("has no spec.containers list")
    found = [c for c in containers if isinstance(c, dict) and c.get("name") == CONTAINER_NAME]
    if not found:
        raise ManifestError("has no container named %s in spec.containers" % CONTAINER_NAME)
    if len(found) > 1:
        raise ManifestError("has %d containers named %s" % (len(found), CONTAINER_NAME))
    return found[0]


def _flag_fields(container):
    """(field, index of the first flag) for command and args, in the order the kubelet joins them."""
    fields = []
    for field in ("command", "args"):
        items = container.get(field)
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ManifestError("has a kube-apiserver container whose %s is not a list of strings" % field)
        if field == "command" and items:
            if posixpath.basename(items[0]) != "kube-apiserver":
                raise ManifestError(
                    "runs %r, not kube-apiserver, as the kube-apiserver container's command; "
                    "cannot tell where its flags go" % items[0]
                )
            fields.append((field, 1))
        elif field == "args":
            fields.append((field, 0))
    return fields


def _find_flags(container):
    """{flag name: _Flag} for the encryption flags; refuses a flag set twice."""
    found = dict((name, []) for name in (CONFIG_FLAG, RELOAD_FLAG))
    for field, first in _flag_fields(container):
        items = container[field]
        index = first
        while index < len(items):
            item = items[index]
            value_index = index
            if item == "--" + CONFIG_FLAG:
                value_index = index + 1
                if value_index >= len(items):
                    raise ManifestError("ends its %s with --%s and no value" % (field, CONFIG_FLAG))
                found[CONFIG_FLAG].append(_Flag(field, index, value_index, items[value_index]))
            elif item == "--" + RELOAD_FLAG:
                found[RELOAD_FLAG].append(_Flag(field, index, index, "true"))
            else:
                for name in (CONFIG_FLAG, RELOAD_FLAG):
                    if item.startswith("--%s=" % name):
                        found[name].append(_Flag(field, index, index, item[len(name) + 3:]))
            index = value_index + 1
    for name, flags in found.items():
        if len(flags) > 1:
            raise ManifestError(
                "sets --%s %d times (%s); remove the extra ones by hand"
                % (name, len(flags), ", ".join("%s[%d]" % (flag.field, flag.index) for flag in flags))
            )
    return dict((name, flags[0]) for name, flags in found.items() if flags)


def _flag_name(item):
    return item[2:].split("=", 1)[0]


def _field_for_new_flags(container, found):
    if found:
        return list(found.values())[0].field
    command = container.get("command") or []
    if len(command) > 1 or (command and not container.get("args")):
        return "command"
    return "args"


def _insert_flag(container, field, name, value):
    """Add ``--name=value`` at its sorted place when the flags are sorted (kubeadm sorts them), else last."""
    items = container.get(field)
    if items is None:
        items = container[field] = []
    first = 1 if field == "command" else 0
    flags = [(_flag_name(items[i]), i) for i in range(first, len(items)) if items[i].startswith("--")]
    position = len(items)
    if [flag for flag, dummy in flags] == sorted(flag for flag, dummy in flags):
        position = next((i for flag, i in flags if flag > name), len(items))
    items.insert(position, "--%s=%s" % (name, value))


def _set_flag(container, flag, name, value):
    items = container[flag.field]
    if flag.value_index == flag.index:
        items[flag.index] = "--%s=%s" % (name, value)
    else:
        items[flag.value_index] = value


def _remove_flag(container, flag):
    items = container[flag.field]
    del items[flag.index:flag.value_index + 1]
    if flag.field == "args" and not items:
        del container["args"]


def _ensure_flags(container, encryption_config, automatic_reload, changes):
    """Set both flags; return the config path the manifest pointed to before, if it was another."""
    found = _find_flags(container)
    field = _field_for_new_flags(container, found)
    replaced = None
    current = found.get(CONFIG_FLAG)
    if current is None:
        _insert_flag(container, field, CONFIG_FLAG, encryption_config)
        changes.add("added --%s=%s" % (CONFIG_FLAG, encryption_config))
    elif current.value != encryption_config:
        replaced = current.value
        _set_flag(container, current, CONFIG_FLAG, encryption_config)
        changes.replaced_encryption_config = replaced
        changes.add("replaced --%s=%s by %s" % (CONFIG_FLAG, replaced, encryption_config))

    reload_flag = _find_flags(container).get(RELOAD_FLAG)
    if automatic_reload:
        if reload_flag is None:
            _insert_flag(container, field, RELOAD_FLAG, "true")
            changes.add("added --%s=true" % RELOAD_FLAG)
        elif not is_go_true(reload_flag.value):
            _set_flag(container, reload_flag, RELOAD_FLAG, "true")
            changes.add("set --%s=true (was %r)" % (RELOAD_FLAG, reload_flag.value))
    elif reload_flag is not None:
        _remove_flag(container, reload_flag)
        changes.add("removed --%s" % RELOAD_FLAG)
    return replaced


def _dict_list(owner, key, what):
    items = owner.get(key)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ManifestError("has a %s that is not a list of mappings" % what)
    return items


def _volumes(pod):
    return _dict_list(pod["spec"], "volumes", "spec.volumes")


def _mounts(container):
    return _dict_list(container, "volumeMounts", "kube-apiserver volumeMounts")


def _our_volume(pod, container, directory):
    """Name of the volume this collection added for ``directory``, or None."""
    for volume in _volumes(pod):
        name = volume.get("name")
        host = volume.get("hostPath")
        if not is_our_volume_name(name) or not isinstance(host, dict):
            continue
        if host.get("path") != directory or host.get("type") != "DirectoryOrCreate":
            continue
        mounts = [mount for mount in _mounts(container) if mount.get("name") == name]
        if len(mounts) == 1 and mounts[0].get("mountPath") == directory and mounts[0].get("readOnly") is True \
                and not mounts[0].get("subPath") and not mounts[0].get("subPathExpr"):
            return name
    return None


def _covering_volume(pod, container, directory):
    """Name of a volume whose mount shows ``directory`` at the same path as on the host, or None."""
    volumes = dict((volume.get("name"), volume) for volume in _volumes(pod))
    best = None
    for mount in _mounts(container):
        mount_path = normalize_dir(mount.get("mountPath"))
        if mount.get("subPath") or mount.get("subPathExpr") or not dir_covers(mount_path, directory):
            continue
        host = volumes.get(mount.get("name"), {}).get("hostPath")
        if not isinstance(host, dict) or normalize_dir(host.get("path")) != mount_path:
            continue
        if host.get("type") not in (None, "", "Directory", "DirectoryOrCreate"):
            continue
        if best is None or len(mount_path) > len(best[0]):
            best = (mount_path, mount.get("name"))
    return best[1] if best else None


def _used_volume_names(pod):
    names = set(volume.get("name") for volume in _volumes(pod))
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in pod["spec"].get(key) or []:
            if isinstance(container, dict):
                names.update(mount.get("name") for mount in _dict_list(container, "volumeMounts", key))
    return names


def _insert_by_name(owner, key, entry):
    """Add ``entry`` at its place by name when the list is sorted by name (kubeadm sorts), else last."""
    items = owner.get(key)
    if items is None:
        owner[key] = [entry]
        return
    names = [item.get("name") for item in items]
    position = len(items)
    if all(isinstance(name, str) for name in names) and names == sorted(names):
        position = next((i for i, name in enumerate(names) if name > entry["name"]), len(items))
    items.insert(position, entry)


def _remove_volume(pod, container, name):
    """Remove the kube-apiserver mount of ``name`` and the volume when nothing else mounts it."""
    container["volumeMounts"] = [mount for mount in _mounts(container) if mount.get("name") != name]
    if not container["volumeMounts"]:
        del container["volumeMounts"]
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for other in pod["spec"].get(key) or []:
            if other is not container and isinstance(other, dict) and any(
                mount.get("name") == name for mount in _dict_list(other, "volumeMounts", key)
            ):
                return
    pod["spec"]["volumes"] = [volume for volume in _volumes(pod) if volume.get("name") != name]
    if not pod["spec"]["volumes"]:
        del pod["spec"]["volumes"]


def _ensure_directory_mount(pod, container, directory, stale_directory, changes):
    """Make ``directory`` visible read-only at the same path; return the volume name used."""
    if stale_directory and stale_directory != directory:
        stale = _our_volume(pod, container, stale_directory)
        if stale:
            _remove_volume(pod, container, stale)
            changes.add("removed volume %s of the previous directory %s" % (stale, stale_directory))
    name = _our_volume(pod, container, directory) or _covering_volume(pod, container, directory)
    if name:
        return name
    for mount in _mounts(container):
        if normalize_dir(mount.get("mountPath")) == directory:
            raise ManifestError(
                "already mounts volume %r at %s, and it is not a hostPath of that same directory; "
                "cannot mount the encryption configuration's directory there"
                % (mount.get("name"), directory)
            )
    name = free_volume_name(_used_volume_names(pod))
    _insert_by_name(pod["spec"], "volumes", {
        "hostPath": {"path": directory, "type": "DirectoryOrCreate"},
        "name": name,
    })
    _insert_by_name(container, "volumeMounts", {"mountPath": directory, "name": name, "readOnly": True})
    changes.add("added volume %s: hostPath %s mounted read-only at the same path" % (name, directory))
    return name


def _our_kms_socket_volumes(pod, container):
    """``{directory: volume name}`` of the socket mounts this module added."""
    volumes = dict((volume.get("name"), volume) for volume in _volumes(pod))
    found = {}
    for mount in _mounts(container):
        name = mount.get("name")
        host = volumes.get(name, {}).get("hostPath")
        if not (isinstance(name, str) and _OUR_KMS_SOCKET_VOLUME_NAME.match(name)) or not isinstance(host, dict):
            continue
        if host.get("path") == mount.get("mountPath") and host.get("type") == "DirectoryOrCreate" \
                and not mount.get("subPath") and not mount.get("subPathExpr"):
            found[host["path"]] = name
    return found


def _ensure_kms_socket_mounts(pod, container, directories, changes):
    """Mount each KMS plugin socket directory at its own path; drop the socket mounts of other directories.

    kube-apiserver connects to the plugin's unix socket, so the mount is not
    read-only.  A mount that already shows the directory at the same path
    (the encryption config's, or one of the pod's own) is used instead.
    """
    ours = _our_kms_socket_volumes(pod, container)
    for directory, name in sorted(ours.items()):
        if directory not in directories:
            _remove_volume(pod, container, name)
            changes.add("removed volume %s of the KMS plugin socket directory %s" % (name, directory))
    for directory in directories:
        if directory in ours or _covering_volume(pod, container, directory):
            continue
        for mount in _mounts(container):
            if normalize_dir(mount.get("mountPath")) == directory:
                raise ManifestError(
                    "already mounts volume %r at %s, and it is not a hostPath of that same directory; "
                    "cannot mount the KMS plugin socket directory there" % (mount.get("name"), directory))
        name = free_volume_name(_used_volume_names(pod), KMS_SOCKET_VOLUME_NAME)
        _insert_by_name(pod["spec"], "volumes", {
            "hostPath": {"path": directory, "type": "DirectoryOrCreate"},
            "name": name,
        })
        _insert_by_name(container, "volumeMounts", {"mountPath": directory, "name": name})
        changes.add("added volume %s: KMS plugin socket directory %s mounted at the same path" % (name, directory))


def _remove_flags_and_mount(pod, container, encryption_config, changes):
    found = _find_flags(container)
    current = found.get(CONFIG_FLAG)
    if current is not None and encryption_config is not None and current.value != encryption_config:
        raise ManifestError(
            "sets --%s=%s, not %s; refusing to remove an encryption configuration this task did not set"
            % (CONFIG_FLAG, current.value, encryption_config)
        )
    directories = []
    for path in (current.value if current else None, encryption_config):
        if path and posixpath.dirname(path) not in directories:
            directories.append(posixpath.dirname(path))
    for name in (RELOAD_FLAG, CONFIG_FLAG):
        flag = _find_flags(container).get(name)
        if flag is not None:
            _remove_flag(container, flag)
            changes.add("removed --%s" % name)
    for directory in directories:
        ours = _our_volume(pod, container, directory)
        if ours:
            _remove_volume(pod, container, ours)
            changes.add("removed volume %s (%s)" % (ours, directory))


def _ensure_annotation(pod, value, changes):
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if annotations is not None and not isinstance(annotations, dict):
        raise ManifestError("has metadata.annotations that are not a mapping")
    if value is None:
        if annotations and SHA256_ANNOTATION in annotations:
            del annotations[SHA256_ANNOTATION]
            if not annotations:
                del metadata["annotations"]
            changes.add("removed annotation %s" % SHA256_ANNOTATION)
        return
    if metadata is None:
        metadata = pod["metadata"] = {}
    if annotations is None:
        annotations = metadata["annotations"] = {}
    if annotations.get(SHA256_ANNOTATION) != value:
        annotations[SHA256_ANNOTATION] = value
        changes.add("set annotation %s=%s" % (SHA256_ANNOTATION, value))


# ---------------------------------------------------------------------------
# Module backend
# ---------------------------------------------------------------------------

def read_text_file(module, path):
    """Return (bytes, text) of an existing UTF-8 file, failing the module clearly otherwise."""
    if not os.path.exists(path):
        module.fail_json(msg="%s does not exist" % path)
    if not os.path.isfile(path):
        module.fail_json(msg="%s is not a regular file" % path)
    with open(path, "rb") as handle:
        content = handle.read()
    try:
        return content, content.decode("utf-8")
    except UnicodeDecodeError as exc:
        module.fail_json(msg="%s is not UTF-8 text: %s" % (path, exc))


def _inside(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class ApiserverManifest(object):
    """Backend of the ``apiserver_manifest`` module."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.path = module.params["path"]

    def run(self):
        params = self.params
        manifests_dir = os.path.realpath(os.path.dirname(os.path.abspath(self.path)))
        backup_dir = os.path.realpath(params["backup_dir"])
        if _inside(backup_dir, manifests_dir):
            self.module.fail_json(
                msg="backup_dir %s lies inside the manifests directory %s, where the kubelet would run "
                    "every backup as a pod; choose a directory outside it" % (params["backup_dir"], manifests_dir)
            )
        config = params["encryption_config"]
        if config and os.path.realpath(os.path.dirname(config)) == manifests_dir:
            self.module.fail_json(
                msg="encryption_config %s lies in the manifests directory %s, where the kubelet would try "
                    "to run it as a pod; keep it elsewhere" % (config, manifests_dir)
            )

        before_bytes, before = read_text_file(self.module, self.path)
        try:
            after, changes = update_manifest(
                before, config, params["automatic_reload"], params["config_sha256"], params["state"],
                kms_socket_dirs=params.get("kms_socket_dirs"),
            )
        except OptionError as exc:
            self.module.fail_json(msg=str(exc))
        except ManifestError as exc:
            self.module.fail_json(msg="%s %s" % (self.path, exc))

        changed = after != before
        result = dict(
            changed=changed,
            flags=changes.flags,
            volume_name=changes.volume_name,
            restart_expected=changes.restart_expected,
            changes=changes.descriptions,
        )
        if changes.replaced_encryption_config is not None:
            result["replaced_encryption_config"] = changes.replaced_encryption_config
        if changed and not self.module.check_mode:
            result["backup_file"] = self._backup(before_bytes)
            atomic_write(self.module, self.path, after.encode("utf-8"),
                         mode=stat.S_IMODE(os.stat(self.path).st_mode))
        if self.module._diff:
            result["diff"] = dict(before=before, after=after, before_header=self.path, after_header=self.path)
        if changed:
            verb = "would update" if self.module.check_mode else "updated"
            result["msg"] = "%s %s: %s" % (verb, self.path, "; ".join(changes.descriptions))
        else:
            result["msg"] = "%s already %s" % (
                self.path, "points at %s" % config if params["state"] == "present"
                else "has no encryption flags of this collection")
        return result

    def _backup(self, content):
        """Copy the current manifest to backup_dir (0700), never beside the manifest."""
        directory = self.params["backup_dir"]
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
            os.chmod(directory, 0o700)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = os.path.basename(self.path)
        attempt = 1
        while True:
            suffix = "" if attempt == 1 else "-%d" % attempt
            backup = os.path.join(directory, "%s.%s%s.bak" % (base, stamp, suffix))
            try:
                descriptor = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                attempt += 1
                continue
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            return backup
