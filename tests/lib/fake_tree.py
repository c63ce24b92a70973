"""A guest root as a directory tree for unit tests: files (text or bytes) and empty directories."""
from __future__ import annotations


def fake_guest_root(tmp_path, files, directories=()):
    """Write ``files`` ({guest path: str or bytes}) and create ``directories`` under ``tmp_path``;
    returns the root as a string, as GuestEditor and the inspection take it."""
    for path, data in files.items():
        host = tmp_path / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            host.write_bytes(data)
        else:
            host.write_text(data)
    for directory in directories:
        (tmp_path / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return str(tmp_path)
