"""The package's layering holds: every import runs downward, and nobody imports another module's private names.

The layers are the ones docs/ARCHITECTURE.md opens with. Every import in every module counts, the lazy
ones inside functions and those under ``TYPE_CHECKING`` included: a module may import from its own
subpackage and from subpackages on lower layers, never from its own layer or above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cacxr"
TESTS = Path(__file__).resolve().parent
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# Top-level name under cacxr -> layer. "" is the root package (cacxr/__init__.py: the version only).
LAYERS = {
    "": 0,
    "core": 0,
    "imaging": 1,
    "synth": 1,
    "ingest": 2,
    "pixels": 3,
    "model": 4,
    "stats": 5,
    "config": 6,
    "runs": 7,
    "training": 8,
    "use": 8,
    "serving": 9,
    "demo": 9,
    "commands": 10,
    "cli": 10,
    "__main__": 11,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top(module: str) -> str:
    """The top-level name under cacxr of a dotted module name ("" for cacxr itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str, list[str]]]:
    """(line, imported cacxr module, names taken from it) for every import in the tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "cacxr"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "cacxr":
                found.append((node.lineno, target, [a.name for a in node.names]))
    return found


def _source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_top_level_name_has_a_layer() -> None:
    names = {_top(_module_name(p)) for p in _source_files()}
    assert names <= set(LAYERS), f"no layer for {sorted(names - set(LAYERS))}: add it to LAYERS and ARCHITECTURE.md"


def test_imports_only_run_downward() -> None:
    wrong = []
    for path in _source_files():
        module = _module_name(path)
        here = _top(module)
        tree = ast.parse(path.read_text(), str(path))
        for line, target, names in _imports(tree, module, path.name == "__init__.py"):
            targets = [target]
            if target == "cacxr":  # `from cacxr import runs` imports a subpackage
                targets = [f"cacxr.{n}" for n in names if n in LAYERS] or ["cacxr"]
            for t in targets:
                there = _top(t)
                if there == here or LAYERS[there] < LAYERS[here] or (here == "" and there == "core"):
                    continue  # cacxr/__init__ may use core (its version and the old import paths)
                kind = "same-layer" if LAYERS[there] == LAYERS[here] else "upward"
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: {kind} import of {t} "
                             f"(layer {LAYERS[here]} {here or 'cacxr'} -> layer {LAYERS[there]} {there})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(path: Path, own: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(path.parents[1]) if path.is_relative_to(SRC) else path.name
    found = [
        f"{where}:{line}: from {target} import {name}"
        for line, target, names in _imports(tree, own, path.name == "__init__.py")
        for name in names
        if _private(name) and target != own
    ]
    for node in ast.walk(tree):
        # cacxr.some.module._name (attribute access through the dotted module path)
        if isinstance(node, ast.Attribute) and _private(node.attr) and ast.unparse(node.value).startswith("cacxr."):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        # monkeypatch.setattr(module, "_name", ...) / monkeypatch.setattr("cacxr.x._name", ...)
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("setattr") and node.args:
            texts = [a.value for a in node.args[:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if any(_private(t.rsplit(".", 1)[-1]) and (t.startswith("cacxr.") or "." not in t) for t in texts):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("folder", [SRC, TESTS, BENCHMARKS], ids=["src", "tests", "benchmarks"])
def test_no_private_name_of_another_module_is_used(folder: Path) -> None:
    wrong = []
    for path in sorted(folder.rglob("*.py")):
        own = _module_name(path) if folder == SRC else ""
        wrong += _private_uses(path, own)
    assert not wrong, "private names used outside their module:\n" + "\n".join(wrong)


def test_each_subpackage_states_what_it_holds_and_what_it_exports() -> None:
    missing = []
    for init in sorted(SRC.glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree) or ""
        has_all = any(
            isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets) for n in tree.body
        )
        if not doc.strip() or not has_all:
            missing.append(f"{init.parent.name}: {'docstring ' if not doc.strip() else ''}{'__all__' if not has_all else ''}")
    assert not missing, "subpackages without a docstring or __all__: " + ", ".join(missing)


def test_architecture_doc_lists_every_subpackage() -> None:
    text = (SRC.parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    absent = [name for name in LAYERS if name not in ("", "__main__") and f"`{name}`" not in text]
    assert not absent, f"docs/ARCHITECTURE.md has no row for {absent}"


def test_other_packages_use_a_package_through_its_face() -> None:
    """Outside a subpackage, its names come from ``cacxr.<package>`` (its ``__init__``), never a module inside."""
    import importlib

    wrong = []
    for path in _source_files():
        module = _module_name(path)
        here = _top(module)
        tree = ast.parse(path.read_text(), str(path))
        for line, target, names in _imports(tree, module, path.name == "__init__.py"):
            there = _top(target)
            if there in (here, "", "serving", "commands") or not (SRC / there / "__init__.py").is_file():
                continue
            if target.count(".") >= 2:
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: from {target} import ... (use cacxr.{there})")
                continue
            face = importlib.import_module(f"cacxr.{there}")
            hidden = [n for n in names if n not in face.__all__ and not (SRC / there / f"{n}.py").is_file()]
            if hidden:
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: cacxr.{there} does not export {hidden}")
    assert not wrong, "imports past a package's face:\n" + "\n".join(wrong)


def test_no_public_name_shadows_a_module_of_its_package() -> None:
    """A face's name equal to a submodule's would turn into the module once that module is imported."""
    import importlib

    clashes = []
    for init in sorted(SRC.glob("*/__init__.py")):
        face = importlib.import_module(f"cacxr.{init.parent.name}")
        clashes += [f"cacxr.{init.parent.name}.{n}" for n in face.__all__ if (init.parent / f"{n}.py").is_file()]
    assert not clashes, f"public names that are also module names: {clashes}"


def test_old_module_paths_still_import_with_a_warning_naming_the_new_one() -> None:
    """Scripts written against the flat package keep working (docs/ARCHITECTURE.md lists the moves)."""
    import importlib
    import sys
    import warnings

    from cacxr.core.moved import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), old
    from cacxr.run import load_run  # the documented entry points of the flat package
    from cacxr.train import train_run

    from cacxr.use import load_run as new_load_run

    assert load_run is new_load_run and callable(train_run)


def test_no_long_module_without_a_reason_at_its_top() -> None:
    """Modules over ~400 lines mix jobs unless their docstring says why they do not."""
    long = []
    for path in _source_files():
        text = path.read_text()
        lines = text.count("\n")
        if lines > 420 and "Why one module" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(SRC.parent)} ({lines} lines)")
    assert not long, "long modules without a reason at their top: " + ", ".join(long)
