"""Make the collection importable as ``ansible_collections.kubecrypt.at_rest``.

The Makefile links the repository into ``.venv/collections``; when the tests run
from somewhere else (an ``ansible-test`` copy), that layout already exists.
"""

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COLLECTIONS = os.path.join(_REPO, ".venv", "collections")

if os.path.basename(os.path.dirname(os.path.dirname(_REPO))) != "ansible_collections":
    _link = os.path.join(_COLLECTIONS, "ansible_collections", "kubecrypt", "at_rest")
    if not os.path.islink(_link):
        os.makedirs(os.path.dirname(_link), exist_ok=True)
        os.symlink(_REPO, _link)
    if _COLLECTIONS not in sys.path:
        sys.path.insert(0, _COLLECTIONS)
