"""guest_factory.prune_cache: stale cached images and trees go, current and busy ones stay."""
import fcntl

import pytest

import guest_factory as gf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(gf, "CACHE_DIR", tmp_path)
    return tmp_path


def _entry(folder, name, size=4096):
    path = folder / name
    path.mkdir(parents=True)
    (path / "disk0.raw").write_bytes(b"x" * size)
    return path


def test_prune_removes_only_entries_no_variant_uses(cache):
    current_image = gf.image_key(gf.SPECS["deb12-pv"])
    current_tree = gf.tree_key(gf.SPECS["deb12-pv"])
    keep = [_entry(cache / "images", current_image), _entry(cache / "trees", current_tree),
            _entry(cache / "images", ".tmp-deb12-pv-000000000000")]        # a build under way
    (cache / "trees" / (current_tree + ".json")).write_text("{}")
    stale = [_entry(cache / "images", "deb12-pv-0123456789ab", size=1 << 20),
             _entry(cache / "trees", "bookworm-systemd-0123456789ab")]
    (cache / "trees" / "bookworm-systemd-0123456789ab.json").write_text("{}")

    removed = gf.prune_cache()

    assert {path.name for path, _size in removed} == {
        "deb12-pv-0123456789ab", "bookworm-systemd-0123456789ab", "bookworm-systemd-0123456789ab.json"}
    assert dict((p.name, s) for p, s in removed)["deb12-pv-0123456789ab"] >= 1 << 20
    assert not any(p.exists() for p in stale)
    assert not (cache / "trees" / "bookworm-systemd-0123456789ab.json").exists()
    assert all(p.exists() for p in keep)
    assert (cache / "trees" / (current_tree + ".json")).exists()


def test_prune_leaves_an_entry_another_process_holds(cache):
    stale = _entry(cache / "images", "deb12-pv-0123456789ab")
    (cache / "locks").mkdir()
    with open(cache / "locks" / "image-deb12-pv-0123456789ab.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert gf.prune_cache() == []
    assert stale.exists()
    assert [path.name for path, _size in gf.prune_cache()] == ["deb12-pv-0123456789ab"]


def test_prune_of_an_empty_cache_removes_nothing(cache):
    assert gf.prune_cache() == []
