"""Atomic writes: a crash at any point leaves the old file or the new one, never half of one."""

import os

import pytest

from histenc.files import atomic_write


def test_atomic_write_crash_mid_write_keeps_the_good_file(tmp_path, monkeypatch):
    path = tmp_path / "section_0000.safetensors"
    atomic_write(path, b"good bytes")

    def crash(fd):
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", crash)  # the new bytes are written to the temp file, then the crash
    with pytest.raises(OSError, match="power cut"):
        atomic_write(path, b"new bytes that never land")
    assert path.read_bytes() == b"good bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["section_0000.safetensors"]


def test_atomic_write_crash_before_rename_keeps_the_good_file(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    atomic_write(path, b"{}")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, b'{"half": ')
    assert path.read_bytes() == b"{}" and len(list(tmp_path.iterdir())) == 1
