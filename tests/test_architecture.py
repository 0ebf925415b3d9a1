"""The package's shape, checked: dependencies point one way (lab -> crossmodal / evaluate -> train ->
model -> data), no module reaches into another module's private names, and the headless paths (the
CLI, the tour) work without ipywidgets or IPython installed."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "d2v_lab"
# a module may import from its own layer and the layers below it, never from a layer above
LAYERS = ["data", "model", "train", "evaluate", "crossmodal", "lab", "cli"]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        name = ".".join(("d2v_lab", *rel.with_suffix("").parts)).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text())


def imports(name: str, tree: ast.AST):
    """(imported module, [imported names]) for every import anywhere in the module (also in functions)."""
    package = name if name.count(".") < 2 or name.endswith("__init__") else name.rsplit(".", 1)[0]
    if Path(*name.split(".")).name == "d2v_lab":
        package = "d2v_lab"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield base, [a.name for a in node.names]


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "d2v_lab" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def test_layer_resolution_of_relative_imports():
    tree = ast.parse("from .metrics import rsa\nfrom . import tasks\nfrom d2v_lab.data import x")
    assert list(imports("d2v_lab.crossmodal.controls", tree)) == [
        ("d2v_lab.crossmodal.metrics", ["rsa"]), ("d2v_lab.crossmodal", ["tasks"]), ("d2v_lab.data", ["x"])]


def test_dependencies_point_one_way():
    upward = []
    for name, _, tree in modules():
        own = layer(name)
        if own is None:
            continue
        for target, _ in imports(name, tree):
            other = layer(target)
            if other is not None and LAYERS.index(other) > LAYERS.index(own):
                upward.append(f"{name} imports {target}")
    assert not upward, "imports against the layering " + " -> ".join(reversed(LAYERS)) + ":\n" + "\n".join(upward)


def test_no_module_imports_a_private_name_of_another():
    private = []
    for name, _, tree in modules():
        for target, names in imports(name, tree):
            if target.startswith("d2v_lab") and target != name:
                private += [f"{name}: from {target} import {n}" for n in names if n.startswith("_")]
    assert not private, "\n".join(private)


def test_headless_tour_runs_without_ipywidgets_or_ipython(tmp_path):
    """The whole ci tour on generated data in a fresh interpreter where importing ipywidgets or IPython
    fails, as on a server that never installed them."""
    sys.path.insert(0, str(Path(__file__).parent))
    from builders import write_cifar, write_fsdd, write_speech_commands, write_tinystories

    root = tmp_path / "data"
    write_cifar(root, n_train_batches=2, per_batch=100, n_test=30)      # enough for the stratified splits
    write_tinystories(root)
    write_speech_commands(root, speakers=("aaa", "bbb", "eee", "fff", "ggg", "hhh", "ccc", "ddd"))
    write_fsdd(root)
    script = (
        "import sys\n"
        "sys.modules['ipywidgets'] = None; sys.modules['IPython'] = None  # 'import ipywidgets' now fails\n"
        "from d2v_lab.cli import main\n"
        f"rc = main(['tour', '--profile', 'ci', '--out', {str(tmp_path / 'out')!r}])\n"
        "loaded = [m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in ('ipywidgets', 'IPython')]\n"
        "print('LOADED', loaded)\n"
        "sys.exit(rc)\n")
    env = {**os.environ, "D2V_LAB_DATA": str(root), "D2V_LAB_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED []" in done.stdout
    out = tmp_path / "out"
    for name in ("report.md", "summary.json", "figures/masking.png", "figures/umap_raw.png", "alignment/align.json",
                 "alignment/views.npz", "image/probe.png"):
        assert (out / name).is_file(), name
    assert "## Do the three modalities share a latent space?" in (out / "report.md").read_text()


def test_only_evaluate_hf_imports_transformers():
    """transformers is an optional extra (``.[hf]``): one module imports it, and only when an encoder
    is loaded, so nothing else breaks without it."""
    importers = sorted({name for name, _, tree in modules() for target, _ in imports(name, tree)
                        if target.split(".")[0] == "transformers"})
    assert importers == ["d2v_lab.evaluate.hf"], importers
    script = ("import sys\nimport d2v_lab.cli, d2v_lab.lab.real_scale\n"
              "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "LOADED []" in done.stdout, done.stderr[-2000:]


def test_ci_runs_the_readme_test_command_verbatim():
    root = PACKAGE.parent
    readme = (root / "README.md").read_text()
    command = readme.split("Tests: install with the test and hf extras")[1].split("```bash\n")[1].split("\n```")[0]
    ci = (root / ".ci" / "run").read_text().split("# --- the README's test command, verbatim ---\n")[1]
    assert ci.splitlines()[0] == command
    assert '".[test,hf]"' in command              # the hf extra: tests/evaluate/test_hf.py runs in CI


@pytest.mark.parametrize("module", ["d2v_lab.cli", "d2v_lab.lab.tour", "d2v_lab.crossmodal.experiment"])
def test_headless_modules_import_without_ipywidgets(module):
    script = ("import sys\nsys.modules['ipywidgets'] = None; sys.modules['IPython'] = None\n"
              f"import {module}\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
