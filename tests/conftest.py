"""Shared fixtures: the real ComfyUI host (in-process for unit tests, as a server for e2e tests)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts import host as hostlib  # noqa: E402

# Property tests draw the same examples on every run (CI included), so a run that passes is reproducible; a
# failure found while developing is fixed and kept as an explicit example, never left to chance.
settings.register_profile("histenc", derandomize=True, database=None)
settings.load_profile("histenc")

ARTIFACTS = Path(os.environ.get("HISTENC_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI importable in-process on the CPU (its ``comfy``, ``nodes`` and ``folder_paths`` modules)."""
    path = hostlib.import_comfy()
    import nodes  # noqa: F401  ComfyUI's nodes.py

    return path


PACK = "comfyui_histenc"


class _SameCore(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Inside the test process the pack's ``comfyui_histenc.histenc.*`` are the tests' ``histenc.*`` modules.

    ComfyUI imports the pack as a package and the nodes reach the core relatively; the tests import the
    core directly. Without this, one process would hold two copies of every core class.
    """

    prefix = PACK + ".histenc"

    def find_spec(self, name, path=None, target=None):
        if name == self.prefix or name.startswith(self.prefix + "."):
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return importlib.import_module("histenc" + spec.name[len(self.prefix) :])

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _SameCore())


@pytest.fixture(scope="session")
def pack(comfy):
    """This repo imported the way ComfyUI imports a custom node folder (as a package, under any name)."""
    if PACK in sys.modules:
        return sys.modules[PACK]
    spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory) -> Path:
    """A models folder with the tiny Wan fixtures (generated, never downloaded)."""
    from scripts.fixtures import write_fixtures

    models = tmp_path_factory.mktemp("models")
    write_fixtures(models)
    return models


@pytest.fixture(scope="session")
def host(tmp_path_factory, fixture_models):
    """One real ComfyUI server for the whole test session (127.0.0.1, --cpu)."""
    base = hostlib.make_base(tmp_path_factory.mktemp("host"))
    for sub in ("diffusion_models", "vae"):
        for f in (fixture_models / sub).iterdir():
            (base / "models" / sub / f.name).symlink_to(f)
    server = hostlib.Server(base).start()
    yield server
    server.stop()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "server.log").write_text(server.log.read_text())


@pytest.fixture
def load_wan(comfy, fixture_models):
    """Load a tiny Wan fixture through ComfyUI's stock diffusion-model loader."""
    import comfy.sd

    def load(name="histenc_tiny_wan21_t2v.safetensors"):
        return comfy.sd.load_diffusion_model(str(fixture_models / "diffusion_models" / name))

    return load


@pytest.fixture(scope="session")
def test_nodes(comfy):
    """The test-only host nodes module (text stand-ins: FakeClip, embed_text)."""
    name = "histenc_test_nodes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "host_nodes" / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def load_vae(comfy, fixture_models):
    """The tiny Wan 2.1 VAE through ComfyUI's stock VAE class."""
    import comfy.sd
    import comfy.utils

    def load(name="histenc_tiny_wan21_vae.safetensors"):
        return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(fixture_models / "vae" / name)))

    return load
