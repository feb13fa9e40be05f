"""``edit.py study --ray``: a study's cells made on Ray workers and written into the serial study's cells folder.

The Ray tests start one local Ray for the module (two workers of one CPU each): its start-up and the workers'
imports take most of a minute on a shared two-core machine, so they are marked slow."""
import json
import shutil
import sys

import pytest
import torch

from conftest import save_tiny
from lightning_edit import cli
from lightning_edit import study_runner as study_mod
from lightning_edit.evaluation.study import StudyConfig, cell_results
from lightning_edit.study_runner import Study


def _cells(results_dir) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((results_dir / "cells").glob("*.json"))}


def _assert_same_cells(serial_dir, ray_dir) -> None:
    """The same cell files, and in each the same values bit for bit (JSON floats), clocks and memory aside."""
    serial, ray = _cells(serial_dir), _cells(ray_dir)
    assert serial and sorted(serial) == sorted(ray)
    for name in serial:
        assert cell_results(ray[name]) == cell_results(serial[name]), name


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def serial_study(tmp_path_factory, tiny_tokenizer):
    """A small study of a tiny model saved as a folder (what each Ray worker loads for itself), run serially once
    for the module with one torch thread, as each worker runs. Its cells are those that come out bit for bit the
    same in any process: FT-M's sequence of two (two Adam steps on each edit, kept) does not, even run serially
    twice (its locality magnitude moves in the 7th digit with what the process ran before), so only GRACE has one."""
    root = tmp_path_factory.mktemp("study")
    model = save_tiny("llama", tiny_tokenizer, root / "tiny-llama")
    config = StudyConfig(name="t", model=str(model), methods=["ft-m", "grace"], datasets={"demo": 2},
                         portability_data="demo", batch_data="demo", batch_sizes=[1, 2], sequential_data="demo",
                         sequential_ns=[1, 2], sequential_methods=["grace"],
                         overrides={"ft-m": {"layers": [1], "num_steps": 2}, "grace": {"num_steps": 2}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Study(config, root / "serial", progress=False).run()
    finally:
        torch.set_num_threads(threads)
    return config, root / "serial"


@pytest.mark.slow
def test_ray_study_writes_the_serial_studys_cells(ray_local, serial_study, tmp_path, monkeypatch):
    from lightning_edit.study_ray import RayOptions, RayStudy

    config, serial_dir = serial_study
    RayStudy(config, tmp_path, RayOptions(workers=2, threads=1), progress=False).run()
    _assert_same_cells(serial_dir, tmp_path)
    scaleout = json.loads((tmp_path / "results.json").read_text())["scaleout"]
    assert scaleout["cells_computed"] == len(_cells(serial_dir)) and scaleout["cells_read_from_folder"] == 0
    assert scaleout["workers"] == 2 and scaleout["workers_lost"] == 0
    for table in ("table2.md", "table3.md"):  # the scores' tables, intervals included (seconds are table4's)
        assert (tmp_path / table).read_text() == (serial_dir / table).read_text()
    assert "## Cells on workers" in (tmp_path / "README.md").read_text()

    def no_compute(*args, **kwargs):
        raise AssertionError("a cell the Ray workers wrote was computed again")

    monkeypatch.setattr(study_mod, "evaluate_editing", no_compute)  # the serial study finishes from those cells
    Study(config, tmp_path, progress=False).run()


@pytest.mark.slow
def test_a_dead_worker_has_its_cell_retried_and_counted(ray_local, serial_study, tmp_path, monkeypatch):
    """A study resumed on Ray (two cells already in the folder) whose worker is killed before its first cell:
    the cell goes to another worker, the report counts it, and every cell equals the serial one."""
    from lightning_edit.study_ray import RayOptions, RayStudy

    config, serial_dir = serial_study
    (tmp_path / "cells").mkdir()
    kept = sorted((serial_dir / "cells").glob("*.json"))[:2]
    for path in kept:
        shutil.copy(path, tmp_path / "cells" / path.name)
    killed = []
    real_submit = RayStudy._submit

    def kill_first(self, slot, spec, stage):
        if stage == "compute" and not killed:
            ray_local.kill(self._workers[slot])
            killed.append(spec)
        return real_submit(self, slot, spec, stage)

    monkeypatch.setattr(RayStudy, "_submit", kill_first)
    study = RayStudy(config, tmp_path, RayOptions(workers=2, threads=1, max_retries=1), progress=False)
    study.run()
    _assert_same_cells(serial_dir, tmp_path)
    scaleout = json.loads((tmp_path / "results.json").read_text())["scaleout"]
    assert killed and study.results[killed[0]] is not None
    assert scaleout["workers_lost"] == 1 and scaleout["cells_retried_after_a_worker_died"] == 1
    assert scaleout["cells_read_from_folder"] == len(kept)
    assert scaleout["cells_computed"] == len(_cells(serial_dir)) - len(kept) and not scaleout["cells_failed"]
    assert "cells retried after a worker died: 1" in (tmp_path / "README.md").read_text()


def test_the_plan_asks_for_what_the_serial_study_would_after_an_empty_cell(tmp_path):
    """The driver plans as the serial study runs: a single-edit cell that came back empty (a method that cannot
    run) makes the batch curve ask for its own first point, as ``Study`` would; cells made are not asked again."""
    from lightning_edit.study_ray import CellSpec, RayOptions, RayStudy

    config = StudyConfig(name="t", model="m", methods=["ft-m"], datasets={"demo": 2}, portability_data="demo",
                         batch_data="demo", batch_sizes=[1, 2], sequential_data="demo", sequential_ns=[1])
    study = RayStudy(config, tmp_path, RayOptions())
    _, asked = study._plan()
    single, batch = CellSpec("ft-m", "demo", "single", 2), CellSpec("ft-m", "demo", "batch", 2, 2)
    assert asked == [single, batch]
    study.results.update({single: None, batch: {"summary": {"reliability": 1.0}}})
    phases, asked = study._plan()
    assert asked == [CellSpec("ft-m", "demo", "single", 1)]
    assert phases.batch[("ft-m", 2)] == {"summary": {"reliability": 1.0}} and phases.sequential[("ft-m", 1)] is None


def test_cells_compare_without_their_clocks():
    """Two runs of a cell agree on everything but clocks and memory, the multi-hop protocol's seconds per case
    included; a score that differs is a difference."""
    a = {"summary": {"reliability": 0.5, "seconds_per_case": 3.0, "time_split_seconds": {"edit": 1.0}},
         "per_request": [{"post": {"locality": 1.0}, "edit_seconds": 0.2}], "cell_seconds": 9.0}
    b = {"summary": {"reliability": 0.5, "seconds_per_case": 51.0, "time_split_seconds": {"edit": 7.0}},
         "per_request": [{"post": {"locality": 1.0}, "edit_seconds": 4.0}], "cell_seconds": 60.0}
    assert cell_results(a) == cell_results(b)
    b["per_request"][0]["post"]["locality"] = 0.5
    assert cell_results(a) != cell_results(b)


def test_ray_missing_is_a_one_line_error_before_anything_loads(monkeypatch, capsys):
    import lightning_edit.models as models

    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" raises ImportError, as where it is not installed

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    assert cli.main(["study", "--config", "quick", "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'lightning-edit[ray]'" in err


@pytest.mark.parametrize("argv, message", [
    (["--ray", "--ray-workers", "0"], "--ray-workers must be at least 1"),
    (["--ray-workers", "2"], "only apply with --ray"),
    (["--ray", "--device", "cuda"], "--gpus-per-cell 1"),
    (["--ray", "--gpus-per-cell", "1"], "needs --device cuda"),
    (["--ray", "--memory-per-worker", "-1"], "--memory-per-worker must be a positive"),
    (["--ray", "--tables-only"], "drop one of them"),
])
def test_bad_ray_flags_are_refused_with_the_flag_named(argv, message, capsys):
    assert cli.main(["study", "--config", "quick", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
