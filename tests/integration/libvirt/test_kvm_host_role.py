"""The kvm_host role through ansible-playbook on this host, with its packages already installed:
it installs nothing, makes the images directory and the pool, and a second run changes nothing.

Guarded so it never installs: skipped unless every package the role would install is present
(then apt has nothing to fetch), and the apt cache is not updated."""

import subprocess

import pytest

from role_run import run_role

libvirt = pytest.importorskip("libvirt")

PACKAGES = ["qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients", "python3-libvirt",
            "zstd", "python3-xxhash", "python3-zstandard", "ovmf", "pigz", "python3-guestfs", "libguestfs-tools",
            "python3-yaml"]
REGISTERED = ["kvm_host_packages_result", "kvm_host_optional_available", "kvm_host_optional_result",
              "kvm_host_service_result", "kvm_host_images_dir_result", "kvm_host_pool_result"]


def installed(packages):
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n"] + packages,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    return {line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:2] == ["ii"]}


def test_kvm_host_role_twice_second_run_changes_nothing(conn, pool_name, qemu_tmp):
    missing = set(PACKAGES + ["python3-apt"]) - installed(PACKAGES + ["python3-apt"])
    if missing:
        pytest.skip("would install %s; this test only runs where they are present" % sorted(missing))
    images = qemu_tmp / "images"
    role_vars = {"kvm_host_update_cache": False, "kvm_host_images_dir": str(images), "kvm_host_pool": pool_name,
                 # pigz is in the sources and installed; the other name is in no apt source
                 "kvm_host_optional_packages": ["pigz", "x2k-no-such-package"]}

    first, _out = run_role("kvm_host", role_vars, save=REGISTERED)
    assert first["kvm_host_packages_result"]["changed"] is False
    # apt fails on a name no source has, so getting here means only pigz was passed on
    assert not first["kvm_host_optional_result"].get("skipped") and first["kvm_host_optional_result"]["changed"] is False
    assert "x2k-no-such-package" not in first["kvm_host_optional_available"]["stdout"]
    assert first["kvm_host_images_dir_result"]["changed"] is True and first["kvm_host_images_dir_result"]["mode"] == "0711"
    assert first["kvm_host_pool_result"]["actions"] == ["define", "start", "autostart"]
    pool = conn.storagePoolLookupByName(pool_name)
    assert pool.isActive() and pool.autostart()

    second, _out = run_role("kvm_host", role_vars, save=REGISTERED)
    for name in REGISTERED:
        assert second[name].get("changed") is False, (name, second[name])


def test_kvm_host_role_without_libvirtd_answering_fails_clearly(qemu_tmp):
    if set(PACKAGES) - installed(PACKAGES):
        pytest.skip("packages missing")
    _saved, out = run_role("kvm_host", {"kvm_host_update_cache": False, "kvm_host_optional_packages": [],
                                        "kvm_host_manage_service": False, "kvm_host_images_dir": str(qemu_tmp),
                                        "kvm_host_uri": "qemu+unix:///system?socket=%s" % (qemu_tmp / "none.sock")},
                           expect_fail=True)
    assert "kvm_host: libvirt does not answer at qemu+unix:///system" in out
    assert "start libvirtd yourself" in out
