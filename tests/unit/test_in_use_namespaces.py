"""_in_use.mounts_in_every_namespace on this host's real /proc."""
import os

from ansible_collections.xen2kvm.migration.plugins.module_utils import _in_use


def test_our_own_mounts_have_no_owner_and_each_namespace_is_read_once():
    mounts = _in_use.mounts_in_every_namespace()
    assert "/" in [point for _mj, _mn, point, owner in mounts if owner is None]
    own = os.readlink("/proc/self/ns/mnt")
    owners = {owner for *_rest, owner in mounts if owner is not None}
    namespaces = [os.readlink("/proc/%d/ns/mnt" % pid) for pid, _comm in owners
                  if os.path.exists("/proc/%d" % pid)]
    assert own not in namespaces
    assert len(namespaces) == len(set(namespaces))


def test_a_mount_in_another_namespace_names_its_process():
    assert _in_use._mounted_phrase("/dev/loop6", "/mnt", (42, "qemu-system-x86")) == \
        "/dev/loop6 mounted on /mnt in the mount namespace of qemu-system-x86 (pid 42)"
    assert _in_use._mounted_phrase("/dev/loop6p1", "/mnt", None) == "/dev/loop6p1 mounted on /mnt"
