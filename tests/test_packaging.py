"""Packaging: one import namespace mapped from the design card's folders, recipes as package
data."""
import importlib
from importlib import resources
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            name = ".".join([pkg, *rel.parts]) if rel.parts else pkg
            if not any(name.startswith(p + ".") for p in mapping if p != pkg
                       and p.startswith(pkg + ".")):
                found.add(name)
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_namespace_and_recipes_are_package_data():
    for mod in ("irblocks", "irblocks.registry", "irblocks.kernels", "irblocks.recipes"):
        importlib.import_module(mod)
    yamls = [f.name for f in resources.files("irblocks.recipes").iterdir()
             if f.name.endswith(".yaml")]
    assert "restormer.yaml" in yamls and "promptir.yaml" in yamls


def test_library_imports_and_runs_without_triton():
    """Triton is Linux-only: with it unimportable, irblocks still imports and runs (reference
    path)."""
    import subprocess
    import sys
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('triton blocked for this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, irblocks\n"
        "from irblocks.kernels import triton_available\n"
        "assert not triton_available()\n"
        "m = irblocks.create_model('anyir-tiny').eval()\n"
        "print(tuple(m(torch.rand(1, 3, 20, 20)).shape))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "TRITON_INTERPRET": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(1, 3, 20, 20)"
