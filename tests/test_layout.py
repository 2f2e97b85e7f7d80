"""The package's shape: one installed import name, no import cycles, an engine core free of front ends and Qt."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import vbp_rt
from vbp_rt.cli import SUBCOMMANDS, main
from vbp_rt.extras import MissingExtra, pyplot, require
from vbp_rt.files import atomic_write

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"vbp_rt": ROOT / "vbp_rt", "vbp_rt.data": ROOT / "data", "vbp_rt.trainer": ROOT / "trainer",
                "vbp_rt.viewer": ROOT / "viewer", "vbp_rt.bench": ROOT / "bench"}
BARE_NAMES = {"data", "trainer", "viewer", "bench"}
CORE = ("vbp_rt.result", "vbp_rt.graph", "vbp_rt.upsample", "vbp_rt.model_config", "vbp_rt.models", "vbp_rt.methods",
        "vbp_rt.dispatch", "vbp_rt.onnx_meta", "vbp_rt.onnx_graph", "vbp_rt.onnx_io", "vbp_rt.onnx_model",
        "vbp_rt.sessions", "vbp_rt.runtime", "vbp_rt.runtime_torch", "vbp_rt.overlay")
# Engine modules that need torch and that the core imports inside a function on purpose, so that a cached graph on
# onnxruntime starts without importing torch (tests/test_torch_free.py). Each such import carries DEFERRED_NOTE in a
# comment on its line.
DEFERRED_TORCH_MODULES = {"vbp_rt.runtime_torch", "vbp_rt.onnx_model"}
DEFERRED_NOTE = "keeps torch off the cached onnxruntime path"
FRONT_ENDS = ("vbp_rt.cli", "vbp_rt.trainer", "vbp_rt.viewer", "vbp_rt.bench", "vbp_rt.evaluation")
GUI_AND_PLOTS = ("PyQt5", "pyqtgraph", "matplotlib", "rosbags")


def _modules() -> dict:
    """module name -> source path, for every module of the installed namespace."""
    found = {}
    for prefix, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if prefix == "vbp_rt" and len(parts) > 0 and f"vbp_rt.{parts[0]}" in PACKAGE_DIRS:
                continue
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list:
    """(imported module, line, at module level) for every import in the file, relative ones resolved;
    `from X import y` names X.y when that is one of our modules."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.append((module, node.lineno, id(node) in top_level))
            out += [(f"{module}.{a.name}", node.lineno, id(node) in top_level) for a in node.names
                    if f"{module}.{a.name}" in MODULES]
    return out


def _graph() -> dict:
    return {name: {m for m, _, _ in _imports(name, path) if m in MODULES and m != name}
            for name, path in MODULES.items()}


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                result.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return result


def _reachable(graph: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_module_map_sees_the_whole_tree():
    assert {"vbp_rt.runtime", "vbp_rt.data.store", "vbp_rt.data.sources", "vbp_rt.trainer.train",
            "vbp_rt.viewer.app", "vbp_rt.bench.cli", "vbp_rt.cli.explain", "vbp_rt.methods.vbp"} <= set(MODULES)


def test_no_module_imports_the_bare_folder_names():
    files = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts]
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in BARE_NAMES]
    assert not offenders, "import these as vbp_rt.<name>: " + "; ".join(offenders)


def test_no_import_cycles_counting_imports_inside_functions():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_never_reaches_a_front_end_or_qt():
    graph = _graph()
    for core in CORE:
        for module in [m for m in MODULES if m == core or m.startswith(core + ".")]:
            reach = _reachable(graph, module) | {module}
            assert not [m for m in reach if m.startswith(FRONT_ENDS)], module
            third = {i.split(".")[0] for m in reach for i, _, _ in _imports(m, MODULES[m])}
            assert not third & set(GUI_AND_PLOTS), (module, third & set(GUI_AND_PLOTS))


def _deferred_torch_import(module: str, line: int, imports: list) -> bool:
    """Whether the import at `line` of `module` is a listed, commented deferral of a torch-backed engine module."""
    ours = {i for i, at, _ in imports if at == line and i in MODULES} - {"vbp_rt"}  # `from . import x` names both
    text = MODULES[module].read_text().splitlines()[line - 1]
    return bool(ours) and ours <= DEFERRED_TORCH_MODULES and DEFERRED_NOTE in text


def _hidden_core_imports() -> list:
    hidden = []
    for m in [m for m in MODULES if m.startswith(CORE)]:
        imports = _imports(m, MODULES[m])
        hidden += [f"{m}:{line} {i}" for i, line, top in imports
                   if not top and i.startswith("vbp_rt") and not _deferred_torch_import(m, line, imports)]
    return hidden


def test_core_imports_sit_at_the_top_of_their_files():
    """Inside the core no import of our own modules hides in a function (the way a cycle gets dodged), except the
    listed torch-backed modules the runtime loads only when it needs torch."""
    assert not _hidden_core_imports()


def test_deferred_modules_are_torch_backed_and_really_deferred():
    """Each listed exception imports torch (directly or through our modules) and is deferred somewhere in the core."""
    graph = _graph()
    for name in DEFERRED_TORCH_MODULES:
        reach = _reachable(graph, name) | {name}
        assert any(i.split(".")[0] == "torch" for m in reach for i, _, _ in _imports(m, MODULES[m])), name
    deferred = {i for m in MODULES if m.startswith(CORE) for i, line, top in _imports(m, MODULES[m])
                if not top and i in DEFERRED_TORCH_MODULES and DEFERRED_NOTE in
                MODULES[m].read_text().splitlines()[line - 1]}
    assert deferred == DEFERRED_TORCH_MODULES


def test_an_unlisted_import_in_a_function_is_caught(monkeypatch, tmp_path):
    """The exception is narrow: the same note on an import of an unlisted module, or a listed one without the note,
    is still a hidden import."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from . import graph  # keeps torch off the cached onnxruntime path\n"
                    "def g():\n    from . import runtime_torch\n"
                    "def h():\n    from . import runtime_torch  # keeps torch off the cached onnxruntime path\n")
    monkeypatch.setitem(MODULES, "vbp_rt.runtime_fake", fake)
    assert sorted(h for h in _hidden_core_imports() if h.startswith("vbp_rt.runtime_fake")) == [
        "vbp_rt.runtime_fake:2 vbp_rt", "vbp_rt.runtime_fake:2 vbp_rt.graph",
        "vbp_rt.runtime_fake:4 vbp_rt", "vbp_rt.runtime_fake:4 vbp_rt.runtime_torch"]


def test_importing_the_runtime_loads_no_gui_or_plotting_library():
    code = ("import sys, vbp_rt.runtime, vbp_rt.dispatch, vbp_rt.onnx_io; "
            f"bad = [m for m in sys.modules if m.split('.')[0] in {GUI_AND_PLOTS!r}]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _foreign_project(tmp_path: Path, kind: str) -> Path:
    """A user's folder whose own `data`, `trainer`, `viewer` and `bench` would shadow bare names."""
    folder = tmp_path / kind
    for name in BARE_NAMES:
        if kind == "modules":
            (folder / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.py").write_text("USER = True\n")
        else:
            (folder / name).mkdir(parents=True)
            (folder / name / "__init__.py").write_text("USER = True\n")
    return folder


@pytest.mark.parametrize("kind", ["modules", "packages"])
def test_works_from_a_folder_with_its_own_data_module(tmp_path, kind):
    folder = _foreign_project(tmp_path, kind)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = """
import torch, vbp_rt, data
from vbp_rt.runtime import Runtime
from vbp_rt.cli import SUBCOMMANDS, main
assert data.USER
r = Runtime("netsvf", backend="ort-cpu")
assert r.run(torch.zeros(1, 135, 640, dtype=torch.uint8).numpy()).masks["vbp"].shape == (1, 135, 640)
assert vbp_rt.explain("netsvf", torch.zeros(1, 1, 135, 640)).mask.shape == (1, 135, 640)
for cmd in SUBCOMMANDS:
    try:
        main([cmd, "--help"])
    except SystemExit as e:
        assert e.code == 0, cmd
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
    top = subprocess.run([sys.executable, "-m", "vbp_rt.cli", "--help"], cwd=folder, env=env, capture_output=True,
                         text=True)
    assert top.returncode == 0 and "explain" in top.stdout and "view" in top.stdout


def test_wheel_holds_one_top_level_name(tmp_path):
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside setup.py
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "out", "runs", "__pycache__",
                                                                "*.egg-info", "bench", "docs"))
    shutil.copytree(ROOT / "bench", source / "bench", ignore=shutil.ignore_patterns("results", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("vbp_rt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vbp_rt"}
    site = tmp_path / "site"  # the wheel installed on its own, imported from a folder with its own data packages
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    folder = _foreign_project(tmp_path, "packages")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(site)}
    code = "import data, vbp_rt.data.store as s, vbp_rt.trainer.runlog as r; assert data.USER; print(s.__file__, r.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, check=True)
    assert all(Path(f).is_relative_to(site) for f in done.stdout.split()), done.stdout
    for module in ("vbp_rt/data/store.py", "vbp_rt/data/sources.py", "vbp_rt/trainer/train.py",
                   "vbp_rt/viewer/app.py", "vbp_rt/viewer/widgets/gauge.py", "vbp_rt/bench/cli.py",
                   "vbp_rt/cli/__main__.py", "vbp_rt/weights/netsvf.pt"):
        assert module in names, module


def test_explain_rejects_an_option_the_method_does_not_take():
    net = vbp_rt.build("netsvf").eval()
    x = torch.rand(1, 1, 135, 640)
    with pytest.raises(ValueError, match=r"'lrp' has no option\(s\) esp; it takes: eps, target, bn"):
        vbp_rt.explain(net, x, "lrp", esp=1.0)
    with pytest.raises(ValueError, match=r"'vbp' has no option\(s\) eps; it takes: no options"):
        vbp_rt.explain(net, x, "vbp", eps=1.0)
    assert vbp_rt.explain(net, x, "lrp", eps=1.0).mask.shape == (1, 135, 640)


@pytest.mark.parametrize("module, extra, call", [
    ("rosbags.highlevel", "ingest", lambda: require("rosbags.highlevel", "ingest", "reading ROS bags")),
    ("matplotlib", "report", lambda: pyplot("the plots of vbp eval")),
    ("PyQt5.QtWidgets", "viewer", lambda: require("PyQt5.QtWidgets", "viewer", "the vbp view window")),
])
def test_a_missing_extra_is_named(monkeypatch, module, extra, call):
    monkeypatch.setitem(sys.modules, module, None)  # what Python does for a module that is not installed
    with pytest.raises(MissingExtra, match=rf"pip install 'vbp-rt\[{extra}\]'"):
        call()


def test_the_cli_reports_a_missing_extra_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(SUBCOMMANDS, "plotless", ("tests.test_layout", "a subcommand that plots"))
    assert main(["plotless"]) == 2
    assert "vbp plotless: error: a test plot needs matplotlib" in capsys.readouterr().err


def add_parser(sub) -> None:
    """The `plotless` subcommand of the test above."""
    sub.add_parser("plotless").set_defaults(func=lambda _args: pyplot("a test plot"))


def test_atomic_write_replaces_whole_and_follows_the_umask(tmp_path):
    target = tmp_path / "out" / "table.csv"
    atomic_write(target, b"old")
    old = os.umask(0o027)
    try:
        atomic_write(target, b"new")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]  # no temporary file left
