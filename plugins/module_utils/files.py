# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing files the one safe way: a dot-named temp file in the target's own
directory, created 0600, filled, synced, then moved over the target.

The temp file starts with a dot because the kubelet runs every non-dot file in
a static pod manifests directory as a pod, and it lives in the target's
directory so that the final rename is atomic on the same filesystem.
"""

from __future__ import annotations

import os
import stat
import tempfile

TEMP_SUFFIX = ".kubecrypt-tmp"


def temp_path_for(path):
    """Return a fresh, empty, 0600 dot-file beside ``path`` (the caller removes it)."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix="." + name + ".", suffix=TEMP_SUFFIX, dir=directory)
    os.close(fd)
    os.chmod(temp, 0o600)
    return temp


def atomic_write(module, path, content, mode=0o600):
    """Replace ``path`` with ``content`` (bytes) atomically; see ``atomic_stream``."""
    if isinstance(content, str):
        content = content.encode("utf-8")
    return atomic_stream(module, path, lambda handle: handle.write(content), mode)


def atomic_stream(module, path, write, mode=0o600):
    """Replace ``path`` atomically with what ``write(handle)`` writes; return its result.

    The new file never exists with wider permissions than ``mode``: the temp
    file is created 0600; an existing target that is wider than ``mode`` is
    narrowed first, because ``AnsibleModule.atomic_move`` copies the mode of the
    file it replaces; and the move runs under a umask that allows no more than
    ``mode``, because for a new target ``atomic_move`` sets ``0666 & ~umask``.
    Owner, group and SELinux context are left to the caller's
    ``set_fs_attributes_if_different``.  When ``write`` raises, the target is
    untouched and the temp file is removed.
    """
    temp = temp_path_for(path)
    try:
        with open(temp, "wb") as handle:
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        if os.path.exists(path):
            current = stat.S_IMODE(os.stat(path).st_mode)
            if current & ~mode:
                os.chmod(path, current & mode)
        previous_umask = os.umask(0o777 & ~mode)
        try:
            module.atomic_move(temp, path)
        finally:
            os.umask(previous_umask)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))
    return result


def _fsync_directory(directory):
    """Persist the rename itself (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
