"""Atomic writes: a crash at any point leaves the old file or the new one, never half of one."""

import os

import pytest

from histenc.files import atomic_write, check_plain_name


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


@pytest.mark.parametrize(
    "name, problem",
    [
        ("a/../../x", "contains a slash, backslash or colon"),
        ("a\\..\\x", "contains a slash, backslash or colon"),
        ("D:evil", "contains a slash, backslash or colon"),
        ("..", "is or ends with a dot or space"),
        ("job. ", "is or ends with a dot or space"),
        ("bad\x00name", "contains a control character"),
        ("CON", "is a name Windows reserves for a device"),
        ("lpt1.txt", "is a name Windows reserves for a device"),
        ("x" * 300, "is 300 characters long; use at most 120"),
    ],
)
def test_names_that_escape_or_break_on_some_platform_are_one_sentence(name, problem):
    with pytest.raises(ValueError, match=r"^job name '.*' " + problem.replace("(", r"\(") + "; use a plain name"):
        check_plain_name(name, "job name")


def test_plain_names_pass():
    assert check_plain_name("minute_01 v2", "job name") == "minute_01 v2"
