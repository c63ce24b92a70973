"""Make the repo importable as ``ansible_collections.xen2kvm.migration`` for every test.

The repo root is the collection root, so a symlink under build/collections gives Python and
ansible-core the ``ansible_collections/<ns>/<name>`` layout they expect without copying files.
"""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / "build" / "collections"


def _link_collection():
    ns_dir = COLLECTIONS / "ansible_collections" / "xen2kvm"
    ns_dir.mkdir(parents=True, exist_ok=True)
    link = ns_dir / "migration"
    if not link.is_symlink():
        tmp = ns_dir / f".migration.{os.getpid()}"
        tmp.symlink_to(REPO)
        os.replace(tmp, link)


_link_collection()
sys.path.insert(0, str(COLLECTIONS))
sys.path.insert(0, str(REPO / "tests" / "lib"))
os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)
