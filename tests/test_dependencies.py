"""dvc.yaml's code dependencies cannot drift: each stage's deps cover every project module its
script can import (the transitive closure of imports, read from the source with `ast`, lazy
imports inside functions included), list no code it cannot import, and its params are
exactly the sections the stage's schema tracks."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("drm", "stages")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The file a project module is defined in (None for third-party modules)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module a file can import: `import a.b` and `from a import b` (b may be a
    submodule), wherever they stand in the file; each brings its parent packages."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


def import_closure(script: Path, root: Path = ROOT) -> set[str]:
    """Project files (relative paths) that running `script` can execute."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [f for m in imported_modules(path) if (f := module_file(m, root)) is not None]
    return {p.relative_to(root).as_posix() for p in seen}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


# The pipeline files: dvc.yaml and the embedded default's own (world, pretrain).
PIPELINE_FILES = ("dvc.yaml", "embedded/dvc.yaml")


def dvc_stages(root: Path = ROOT) -> dict[str, dict]:
    """Every stage of every pipeline file (names are unique across them)."""
    stages = {}
    for name in PIPELINE_FILES:
        for stage, body in yaml.safe_load((root / name).read_text())["stages"].items():
            assert stage not in stages, f"stage {stage!r} is in two pipeline files"
            stages[stage] = body
    return stages


def stage_script(stage: dict) -> str:
    return next(part for part in stage["cmd"].split() if part.startswith("stages/") and part.endswith(".py"))


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage.get("deps", []) if isinstance(d, str) and d.split("/")[0] in PACKAGES]


def missing_and_dead(stage: dict, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(closure files no dep covers, code deps that cover no closure file)."""
    closure = import_closure(root / stage_script(stage), root)
    deps = code_deps(stage)
    missing = sorted(f for f in closure if not covered(f, deps))
    dead = sorted(d for d in deps if not any(covered(f, [d]) for f in closure))
    return missing, dead


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_deps_cover_exactly_what_its_script_imports(name):
    missing, dead = missing_and_dead(dvc_stages()[name])
    assert not missing, f"dvc.yaml stage {name!r} misses dependencies on {missing}"
    assert not dead, f"dvc.yaml stage {name!r} lists code it never imports: {dead}"


def test_a_dependency_removed_from_dvc_yaml_is_caught():
    stage = dict(dvc_stages()["finetune"])
    stage["deps"] = [d for d in stage["deps"] if d != "drm/zeroshot"]
    missing, _ = missing_and_dead(stage)
    assert any(f.startswith("drm/zeroshot/") for f in missing)


def test_lazy_imports_inside_functions_count(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "drm" / "a").mkdir(parents=True)
    for f in ("drm/__init__.py", "drm/a/__init__.py", "drm/a/b.py", "drm/c.py"):
        (tmp_path / f).write_text("")
    (tmp_path / "drm/a/b.py").write_text("def f():\n    from drm import c\n")
    (tmp_path / "stages/s.py").write_text("import os\nfrom drm.a.b import f\n")
    assert import_closure(tmp_path / "stages/s.py", tmp_path) == {
        "stages/s.py", "drm/__init__.py", "drm/a/__init__.py", "drm/a/b.py", "drm/c.py"}


def test_a_report_change_reruns_no_training():
    stages = dvc_stages()
    for name in ("finetune", "zeroshot", "pretrain", "world"):
        assert not any(covered("drm/report/run.py", [d]) for d in code_deps(stages[name])), name


def _stage_schema(name: str):
    from drm.params import STAGE_PARAMS

    return STAGE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_params_are_the_sections_its_schema_tracks(name):
    """What DVC tracks for a stage = the sections the stage's results depend on."""
    listed = {p.split(".")[0] for p in dvc_stages()[name].get("params", [])}
    assert listed == set(_stage_schema(name).tracked()), name


def test_embedded_stages_run_from_the_project_root():
    """embedded/dvc.yaml's stages run in the root (wdir ..): the same paths, commands and
    params.yaml as dvc.yaml's, so `dvc repro` links their outputs to the root's deps."""
    embedded = yaml.safe_load((ROOT / "embedded/dvc.yaml").read_text())["stages"]
    assert set(embedded) == {"world", "pretrain"}
    assert all(stage.get("wdir") == ".." for stage in embedded.values())
    root = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("zeroshot", "finetune", "diagnostics"):  # the model dependency follows model.weights
        assert "${model.weights}" in root[name]["deps"], name
    # no root stage names the embedded outputs directly: they are reached only through params
    listed = yaml.safe_dump(root)
    assert "models/pretrained" not in listed and "data/world" not in listed
