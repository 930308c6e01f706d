"""The house's floors: the data half at the bottom, the models above it, the plugins above those, the CLI on top.

No module imports from a floor above its own (a model module importing a plugin would pull Keras into every
command), and no module imports a deep-learning or boosting library unless it trains or runs a model.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"melanoma_data": 0, "melanoma_models": 1, "melanoma_plugins": 2, "melanoma_cli": 3}
#: libraries that train or run models: imported only on the plugins' floor ...
HEAVY = {"keras", "lightgbm", "xgboost", "catboost", "torch", "jax", "timm"}
#: ... except TensorFlow's tf.data, which the data half's readers build pipelines with (lazily)
DATA_TF = {"melanoma_data/dataset.py", "melanoma_data/tfrecord.py"}


def imports() -> list[tuple[str, str, int, bool]]:
    """(module file, imported module, line, at module level) for every absolute import of the four packages."""
    out = []
    for pkg in FLOORS:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(f.read_text(encoding="utf-8"))
            top_level = {id(n) for n in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                out += [(f.relative_to(ROOT).as_posix(), n, node.lineno, id(node) in top_level) for n in names]
    return out


def test_no_import_runs_up_a_floor():
    up = [f"{f}:{line} imports {name}" for f, name, line, _ in imports()
          if name.split(".")[0] in FLOORS and FLOORS[name.split(".")[0]] > FLOORS[f.split("/")[0]]]
    assert not up, "imports from a higher floor: " + "; ".join(up)


def test_only_model_code_imports_model_libraries():
    found = [f"{f}:{line} imports {name}" for f, name, line, _ in imports()
             if name.split(".")[0] in HEAVY and not f.startswith("melanoma_plugins/")]
    found += [f"{f}:{line} imports {name}" for f, name, line, top in imports()
              if name.split(".")[0] == "tensorflow" and not f.startswith("melanoma_plugins/")
              and (f not in DATA_TF or top)]
    assert not found, "model libraries imported outside the plugins (or tf.data at module level): " + "; ".join(found)


def test_the_scan_sees_every_package():
    files = {f.split("/")[0] for f, *_ in imports()}
    assert files == set(FLOORS)


def test_importing_the_data_and_model_halves_loads_no_model_library():
    import subprocess
    import sys

    files = [f for pkg in ("melanoma_data", "melanoma_models", "melanoma_cli") for f in (ROOT / pkg).rglob("*.py")]
    modules = sorted(f.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
                     for f in files)
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(k for k in {sorted(HEAVY | {'tensorflow'})!r} if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"importing the data and model modules loaded {out.stdout.strip()}"


def test_each_half_shows_its_public_face():
    import melanoma_data
    import melanoma_models

    for pkg in (melanoma_data, melanoma_models):
        assert pkg.__all__ and all(callable(getattr(pkg, name)) for name in pkg.__all__), pkg.__name__
    from melanoma_data.build import preprocess
    from melanoma_models.api import Plugin

    assert melanoma_data.preprocess is preprocess and melanoma_models.Plugin is Plugin
    assert issubclass(melanoma_models.api.PluginError, melanoma_data.MelanomaError)
