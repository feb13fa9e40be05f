"""A non-editable install carries the configs, the demo set and the statistics text; one module knows the paths.

The wheel is built from a copy of the sources (setup.cfg, pyproject.toml, README.md, lightning_edit/) in a
temporary folder, so no stale ``build/`` of the checkout can add files the package data globs miss (a few seconds).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_edit"

SHIPPED = ["lightning_edit/configs/rome/smollm2-135m.yaml", "lightning_edit/configs/rome/default.yaml",
           "lightning_edit/configs/study/quick.yaml", "lightning_edit/configs/deepspeed/stage2.json",
           "lightning_edit/configs/deepspeed/stage3.json", "lightning_edit/data/demo.json",
           "lightning_edit/data/text/wikitext-2-test-excerpt.txt", "lightning_edit/data/text/README.md",
           "lightning_edit/data/text/wikitext-2-test-heldout.txt"]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "lightning_edit", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("lightning_edit-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        return set(zf.namelist())


def test_wheel_ships_configs_demo_and_text(wheel_names):
    missing = [name for name in SHIPPED if name not in wheel_names]
    assert not missing, f"not in the wheel: {missing}"


def test_wheel_ships_every_config(wheel_names):
    """Every file under lightning_edit/configs/ (all depths) is in the wheel: a new folder needs no setup.cfg edit."""
    configs = sorted(p.relative_to(ROOT).as_posix() for p in (PACKAGE / "configs").rglob("*")
                     if p.is_file() and p.suffix in (".yaml", ".json"))
    assert len(configs) > 10
    assert [name for name in configs if name not in wheel_names] == []


def test_paths_point_inside_the_package():
    from lightning_edit import paths
    from lightning_edit.data import DEMO_PATH, STATS_TEXT_PATH
    from lightning_edit.editors.base import CONFIG_ROOT
    from lightning_edit.evaluation.study import STUDY_CONFIGS
    from lightning_edit.training.strategies import DEEPSPEED_CONFIGS

    assert DEMO_PATH == paths.DEMO_PATH == PACKAGE / "data" / "demo.json" and DEMO_PATH.is_file()
    assert STATS_TEXT_PATH == paths.STATS_TEXT_PATH and STATS_TEXT_PATH.is_file()
    assert CONFIG_ROOT == paths.CONFIG_ROOT == PACKAGE / "configs"
    assert STUDY_CONFIGS == paths.CONFIG_ROOT / "study" and (STUDY_CONFIGS / "quick.yaml").is_file()
    assert all(p.is_file() and p.parent == paths.CONFIG_ROOT / "deepspeed" for p in DEEPSPEED_CONFIGS.values())


def test_top_level_links_still_work():
    """configs/ and data/demo.json at the top of the checkout are links to the packaged files (documented paths)."""
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs").resolve() == PACKAGE / "configs"
    assert (ROOT / "data" / "demo.json").resolve() == PACKAGE / "data" / "demo.json"
    assert (ROOT / "configs" / "rome" / "smollm2-135m.yaml").is_file()


def test_checkout_keeps_its_folders(monkeypatch):
    from lightning_edit import paths
    from lightning_edit.data import default_data_dir
    from lightning_edit.models import default_cache_dir

    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    assert paths.CHECKOUT_ROOT == ROOT
    assert default_cache_dir() == ROOT / "checkpoints"
    assert default_data_dir() == ROOT.parent / "shared" / "data"
    assert paths.default_editors_root() == ROOT / "checkpoints" / "editors"
    assert paths.default_runs_root() == ROOT / "runs"
    monkeypatch.setenv(paths.CACHE_ENV, "/somewhere/cache")
    monkeypatch.setenv(paths.DATA_ENV, "/somewhere/data")
    assert default_cache_dir() == Path("/somewhere/cache") and default_data_dir() == Path("/somewhere/data")


def test_installed_package_uses_the_user_cache(monkeypatch, tmp_path):
    from lightning_edit import paths
    from lightning_edit.data import default_data_dir
    from lightning_edit.models import default_cache_dir

    site = tmp_path / "site-packages"
    (site / "lightning_edit").mkdir(parents=True)
    assert paths._find_checkout(site / "lightning_edit") is None
    monkeypatch.setattr(paths, "CHECKOUT_ROOT", None)
    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lightning-edit"
    assert default_data_dir() == tmp_path / "xdg" / "lightning-edit" / "data"
    assert paths.default_editors_root() == tmp_path / "xdg" / "lightning-edit" / "editors"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lightning-edit"


def test_only_paths_module_computes_the_project_root():
    """No module but lightning_edit/paths.py finds the project root from its own file (``parents[2]`` and kin)."""
    climbs = re.compile(r"parents\[[1-9]\]|\.parent\.parent")
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sorted(PACKAGE.rglob("*.py"))
                 if p != PACKAGE / "paths.py"
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if "parents[2]" in line or ("__file__" in line and climbs.search(line))]
    assert offenders == [], f"use lightning_edit.paths instead: {offenders}"
