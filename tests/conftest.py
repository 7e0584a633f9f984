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


# The long lab tests run with `make test-long`, not in `make test`, which CI
# runs within its time budget: each of them runs the playbooks many times on
# fresh labs (enable with three providers on 1,000 Secrets each, aescbc to KMS
# v2 and a KEK rotation, a node going down mid-rotation, rotate timed with
# rolling restarts and with automatic reload, SIGKILL at a dozen points of a
# rotation, a rotation under continuous traffic).  `make test` covers every
# playbook once through the molecule scenarios, and the refusals.
LONG_TEST_FILES = ("test_enable.py", "test_kms.py", "test_node_down.py", "test_rotate.py", "test_resume.py",
                   "test_traffic.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "long: a long lab test, run by `make test-long` (not by `make test`)")


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if os.path.basename(str(item.fspath)) in LONG_TEST_FILES:
            item.add_marker(pytest.mark.long)
