"""The import graph, read with ``ast`` (nothing is imported): the rules that let ComfyUI load the pack.

ComfyUI imports the pack as a package named after its folder, whatever the folder is called, so the
core reaches its own code relatively and never ComfyUI; node modules share code through ``_common``
only; the core's top-level imports form no cycle. The last test loads the pack the way ComfyUI does.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE, NODES = "histenc", "histenc_nodes"
# ComfyUI's own top-level modules (plus the node package): the core must run without any of them.
HOST_MODULES = {
    "comfy",
    "comfy_api",
    "comfy_api_nodes",
    "comfy_config",
    "comfy_execution",
    "comfy_extras",
    "folder_paths",
    "nodes",
    "server",
    "execution",
    "latent_preview",
    "node_helpers",
    "comfyui_version",
    NODES,
}
# Top-level names that exist only in a checkout of this repo, never under custom_nodes/<folder>.
REPO_ONLY = {CORE, NODES, "scripts", "tests", "bench"}
SHARED_NODE_MODULE = f"{NODES}._common"


def modules(package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


ALL = {**modules(CORE), **modules(NODES)}


def package_of(name: str) -> str:
    return name if ALL[name].name == "__init__.py" else name.rpartition(".")[0]


class Import:
    """One import statement, resolved to absolute dotted names (a relative one against its package)."""

    def __init__(self, module: str, node: ast.Import | ast.ImportFrom):
        self.line = node.lineno
        self.relative = isinstance(node, ast.ImportFrom) and node.level > 0
        if isinstance(node, ast.Import):
            self.targets = [a.name for a in node.names]
            return
        base = node.module or ""
        if node.level:
            package = package_of(module).split(".")
            up = node.level - 1
            if up >= len(package):  # above the repo root: outside anything this repo ships
                self.targets = ["." * node.level + base]
                return
            base = ".".join(package[: len(package) - up] + ([base] if base else []))
        # ``from pkg import sub`` imports the submodule pkg.sub as well as pkg
        self.targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in ALL]

    def __repr__(self):
        return f"line {self.line}: {', '.join(self.targets)}"


def imports(module: str, top_level_only: bool = False) -> list[Import]:
    """Every import of ``module`` (``top_level_only``: those run when it is imported, TYPE_CHECKING aside)."""
    tree = ast.parse(ALL[module].read_text(), filename=str(ALL[module]))
    if not top_level_only:
        return [Import(module, n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: list[Import] = []

    def visit(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(Import(module, node))
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(part)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def test_the_parser_sees_both_packages():
    """A guard for the tests below: an empty walk would pass every rule."""
    assert {CORE, f"{CORE}.longvideo.loop", f"{CORE}.dit.wan", NODES, SHARED_NODE_MODULE, f"{NODES}.long_video"} <= set(
        ALL
    )
    loop = [i.targets[0] for i in imports(f"{CORE}.longvideo.loop", top_level_only=True) if i.relative]
    assert f"{CORE}.context" in loop and f"{CORE}.longvideo.resume" in loop


def test_the_core_never_imports_comfyui_or_the_nodes():
    bad = {m: [i for i in imports(m) if any(top(t) in HOST_MODULES for t in i.targets)] for m in ALL if top(m) == CORE}
    bad = {m: found for m, found in bad.items() if found}
    assert not bad, f"histenc must run without ComfyUI; these modules import it or histenc_nodes: {bad}"


def test_the_core_reaches_its_own_code_relatively():
    """``import histenc.x`` works in a checkout but not when ComfyUI loads the folder under another name."""
    bad = {}
    for m in (m for m in ALL if top(m) == CORE):
        found = [i for i in imports(m) if not i.relative and any(top(t) in REPO_ONLY for t in i.targets)]
        found += [i for i in imports(m) if i.relative and any(top(t) != CORE for t in i.targets)]
        if found:
            bad[m] = found
    assert not bad, f"absolute or out-of-package imports of the repo's own code: {bad}"


def test_node_modules_share_code_through_common_only():
    """Node modules import ``_common`` (and the other shared ``_`` modules, which hold no nodes) and the core, never
    each other (and never by absolute name)."""
    bad = {}
    for m in (m for m in ALL if top(m) == NODES):
        found = []
        for i in imports(m):
            shared = [t for t in i.targets if t == SHARED_NODE_MODULE or t.rpartition(".")[2].startswith("_")]
            own = [t for t in i.targets if top(t) == NODES and t not in (NODES, m, *shared)]
            if own or (not i.relative and any(top(t) in REPO_ONLY for t in i.targets)):
                found.append(i)
        if found:
            bad[m] = found
    assert not bad, f"node modules importing other node modules (move the shared code to _common): {bad}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends on the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def core_graph() -> dict[str, set[str]]:
    core = [m for m in ALL if top(m) == CORE]
    return {m: {t for i in imports(m, top_level_only=True) for t in i.targets if t in core and t != m} for m in core}


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_core_import_graph_is_acyclic():
    graph = core_graph()
    assert sum(map(len, graph.values())) > 20  # the walk found the real edges
    cycle = find_cycle(graph)
    assert cycle is None, f"top-level import cycle in histenc: {' -> '.join(cycle)}"


LOAD_AS_COMFYUI = textwrap.dedent("""
    import asyncio, importlib.util, json, logging, sys
    from pathlib import Path

    repo, folder = Path(sys.argv[1]), Path(sys.argv[2])
    spec = importlib.util.spec_from_file_location("_pack_test_host", repo / "scripts" / "host.py")
    host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host)
    comfyui = host.import_comfy()
    del host

    errors = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                errors.append(record.getMessage() + (logging.Formatter().formatException(record.exc_info)
                                                     if record.exc_info else ""))

    logging.getLogger().addHandler(Collect())
    import nodes  # ComfyUI's nodes.py; its loader imports custom_nodes/<folder> with spec_from_file_location
    loaded = asyncio.run(nodes.load_custom_node(str(folder)))
    print(json.dumps({
        "loaded": loaded,
        "errors": errors,
        "node_ids": sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("HistEnc")),
        "nodes_file": str(Path(sys.modules["nodes"].__file__).resolve()),
        "comfyui": str(Path(comfyui).resolve()),
        "top_level": sorted({m.split(".")[0] for m in sys.modules}),
        "sys_path": [str(Path(p or ".").resolve()) for p in sys.path],
        "pack": [k for k, m in list(sys.modules.items())
                 if getattr(m, "__file__", None) == str(folder / "__init__.py")],
        "modules": sorted(sys.modules),
    }))
""")


def test_the_pack_loads_under_any_folder_name_in_a_fresh_process(tmp_path):
    """ComfyUI's own loader, a folder name that is not the repo's, and no repo on sys.path."""
    folder = tmp_path / "custom_nodes" / "some-other-name"
    folder.parent.mkdir()
    folder.symlink_to(REPO, target_is_directory=True)
    script = tmp_path / "load_pack.py"
    script.write_text(LOAD_AS_COMFYUI)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}
    out = subprocess.run(
        [sys.executable, "-I", str(script), str(REPO), str(folder)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])

    assert REPO.resolve() not in {Path(p) for p in report["sys_path"]}
    assert report["loaded"] is True, report["errors"]
    pack_errors = [e for e in report["errors"] if "histenc" in e or str(folder) in e]
    assert not pack_errors, "\n".join(pack_errors)
    ledger = {
        line.strip()
        for line in (REPO / NODES / "node_ids.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert ledger <= set(report["node_ids"]), f"not registered: {sorted(ledger - set(report['node_ids']))}"
    [pack] = report["pack"]  # ComfyUI names the package after the folder's path
    assert {f"{pack}.histenc.longvideo.loop", f"{pack}.histenc_nodes._common"} <= set(report["modules"])
    assert not REPO_ONLY & set(report["top_level"]), sorted(REPO_ONLY & set(report["top_level"]))
    assert report["nodes_file"] == str(Path(report["comfyui"]) / "nodes.py")
