"""Long sequential runs: checkpoints every N edit calls, a resume that ends bit-identical to an uninterrupted run,
refusals of another run's checkpoint, and the two readings (immediate, retained) with their curve."""
from __future__ import annotations

import json

import pytest
import torch

from lightning_edit.editors import build_editor
from lightning_edit.editors.delta import undo_all
from lightning_edit.errors import CheckpointError, ConfigError
from lightning_edit.evaluation import evaluate_editing
from lightning_edit.evaluation.lifelong import Checkpointing, latest_checkpoint
from lightning_edit.requests import EditRequest, PromptAnswer

from conftest import build_tiny

WORDS = ["Paris", "Rome", "English", "French", "Italian", "German", "Spanish", "France", "Italy"]


def requests(n: int, offset: int = 0) -> list[EditRequest]:
    """``n`` distinct requests with a rephrase and a locality probe each (what every reading scores)."""
    out = []
    for i in range(offset, offset + n):
        subject = f"Person {i}"
        out.append(EditRequest(prompt=f"The language of {subject} is", target_new=WORDS[i % len(WORDS)],
                               subject=subject, case_id=i, rephrase_prompts=(f"{subject} speaks",),
                               locality=(PromptAnswer(prompt=f"The capital of Country {i} is", answer="Rome"),)))
    return out


OPTIONS = {"fluency": False, "progress": False}
METHODS = {"ft-m": {"num_steps": 2, "layers": [2]}, "grace": {"num_steps": 2}}


def state_of(loaded) -> dict[str, torch.Tensor]:
    """Every parameter and every patch tensor, cloned: what 'the same edited model' compares."""
    state = {f"param/{n}": p.detach().clone() for n, p in loaded.model.named_parameters()}
    for patch in loaded.patches:
        state.update({f"patch/{patch.key}/{k}": v.detach().clone() for k, v in patch.state_dict().items()})
    return state


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


class Interrupt:
    """An editor whose ``at``-th edit call raises ``error`` inside the edit (nothing of that call applied)."""

    def __init__(self, editor, at: int, error: BaseException) -> None:
        self.editor, self.at, self.error, self.calls = editor, at, error, 0
        self.real = editor.edit
        editor.edit = self

    def __call__(self, loaded, batch):
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return self.real(loaded, batch)


def full_run(loaded, editor, reqs, **kwargs):
    report = evaluate_editing(loaded, editor, reqs, protocol="sequential", keep_edits=True, **OPTIONS, **kwargs)
    state = state_of(loaded)
    undo_all(report.kept_deltas, loaded)
    return report, state


@pytest.mark.parametrize("method, error", [("ft-m", KeyboardInterrupt()), ("grace", KeyboardInterrupt()),
                                           ("ft-m", RuntimeError("the process died"))])
def test_interrupted_run_resumes_to_the_same_weights(tokenizer, tmp_path, method, error):
    """16 edits, a checkpoint every 4 calls, interrupted in the 10th edit call: Ctrl-C writes the state after 9,
    a crash leaves the one after 8; either way the resumed run ends with every weight and patch tensor equal to
    those of the uninterrupted run (weights in the model: FT-M; a codebook patch: GRACE)."""
    loaded = build_tiny("gpt2", tokenizer)
    base = state_of(loaded)
    reqs = requests(16)
    editor = build_editor(method, loaded, METHODS[method])
    reference, expected = full_run(loaded, editor, reqs, eval_every=4)
    assert_same_state(state_of(loaded), base)

    folder = tmp_path / "ckpt"
    editor = build_editor(method, loaded, METHODS[method])
    Interrupt(editor, 10, error)
    with pytest.raises(type(error)) as raised:
        evaluate_editing(loaded, editor, reqs, protocol="sequential", eval_every=4,
                         checkpointing=Checkpointing(folder, every=4), **OPTIONS)
    assert_same_state(state_of(loaded), base)  # every edit undone in memory
    written = 9 if isinstance(error, KeyboardInterrupt) else 8
    assert latest_checkpoint(folder).name == f"edits-{written:07d}"
    assert len(list(folder.glob("edits-*"))) == 1  # only the newest is kept
    if isinstance(error, KeyboardInterrupt):
        assert "--resume" in raised.value.note and str(folder) in raised.value.note

    editor = build_editor(method, loaded, METHODS[method])
    resumed, state = full_run(loaded, editor, reqs, eval_every=4, checkpointing=Checkpointing(folder, every=4,
                                                                                               resume=True))
    assert_same_state(state, expected)
    assert_same_state(state_of(loaded), base)  # the resumed edits undo too
    assert resumed.immediate == reference.immediate
    assert resumed.post == reference.post
    assert resumed.curve == reference.curve


class SlowEdits:
    """An editor whose edit calls each report ``seconds`` (an interruption at call ``at`` as ``Interrupt``)."""

    def __init__(self, editor, seconds: float, at: int = 0) -> None:
        self.seconds, self.at, self.calls, self.real = seconds, at, 0, editor.edit
        editor.edit = self

    def __call__(self, loaded, batch):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        delta = self.real(loaded, batch)
        delta.seconds = self.seconds
        return delta


def test_a_resumed_runs_seconds_cover_every_edit(tokenizer, tmp_path):
    """The report of a resumed run counts the interrupted process's edits too: 6 calls reporting 5 s before Ctrl-C
    and 2 reporting 1 s after give a median of 5 s over all 8 (not this process's 1 s), the phase totals include
    the earlier process's (the checkpoint records them, and the wall time), and the report says what they were.
    A checkpoint from before the seconds were recorded still resumes, its edit seconds taken from its rows, the
    rest marked unknown (None)."""
    from lightning_edit.evaluation.protocols import CheckpointedInterrupt
    from lightning_edit.manifest import write_manifest

    loaded = build_tiny("gpt2", tokenizer)
    reqs, folder = requests(8), tmp_path / "ckpt"
    editor = build_editor("ft-m", loaded, METHODS["ft-m"])
    SlowEdits(editor, 5.0, at=7)
    with pytest.raises(CheckpointedInterrupt):
        evaluate_editing(loaded, editor, reqs, protocol="sequential", checkpointing=Checkpointing(folder, every=4),
                         **OPTIONS)
    position = folder / "edits-0000006" / "position.json"
    saved = json.loads(position.read_text())
    earlier = saved["seconds"]
    assert earlier["wall"] >= earlier["edit"] + earlier["scoring"] > 0

    def resume():
        editor = build_editor("ft-m", loaded, METHODS["ft-m"])
        SlowEdits(editor, 1.0)
        return evaluate_editing(loaded, editor, reqs, protocol="sequential",
                                checkpointing=Checkpointing(folder, every=100, resume=True), **OPTIONS)

    report = resume()
    assert report.efficiency["edit_seconds"] == pytest.approx(5.0)
    assert report.config["earlier_seconds"] == earlier
    for phase in ("edit", "scoring", "prepare"):
        assert report.efficiency["time_split_seconds"][phase] >= round(earlier[phase], 3)

    saved.pop("seconds")  # as a checkpoint written before they were recorded (its manifest written again)
    position.write_text(json.dumps(saved))
    manifest = json.loads((position.parent / "manifest.json").read_text())
    write_manifest(position.parent, manifest.pop("files"), manifest.pop("format"), **manifest)
    report = resume()
    assert report.efficiency["edit_seconds"] == pytest.approx(5.0)
    assert report.efficiency["edit_seconds_mean"] >= 6 * 5.0 / 8  # the rows' 30 s in the mean
    assert report.config["earlier_seconds"] is None


def test_sigterm_checkpoints_like_ctrl_c(tokenizer, tmp_path):
    """SIGTERM in a checkpointed run (a scheduler pre-empting it; a background job, which the shell keeps from
    Ctrl-C) writes the state after the last finished call and says how to resume; the handler is put back after."""
    import os
    import signal

    from lightning_edit.evaluation.protocols import CheckpointedInterrupt

    loaded = build_tiny("gpt2", tokenizer)
    base = state_of(loaded)
    editor = build_editor("ft-m", loaded, METHODS["ft-m"])
    real, calls = editor.edit, []

    def edit_then_terminate(loaded_, batch):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the 4th call
        return real(loaded_, batch)

    editor.edit = edit_then_terminate
    before = signal.getsignal(signal.SIGTERM)
    folder = tmp_path / "ckpt"
    with pytest.raises(CheckpointedInterrupt, match="--resume"):
        evaluate_editing(loaded, editor, requests(6), protocol="sequential",
                         checkpointing=Checkpointing(folder, every=10), **OPTIONS)
    assert latest_checkpoint(folder).name == "edits-0000003"  # the 4th call was not finished
    assert signal.getsignal(signal.SIGTERM) is before
    assert_same_state(state_of(loaded), base)


def test_capability_curve_survives_a_resume(tokenizer, tmp_path):
    """The capability points measured before an interruption are in the checkpoint: the resumed run's curve is the
    uninterrupted run's, and a resume with other capability settings is refused naming the flags."""
    from lightning_edit.evaluation.capability import CapabilityCurve

    loaded = build_tiny("gpt2", tokenizer)
    reqs = requests(8)

    def curve(every=2):
        return CapabilityCurve(["local-perplexity"], every=every, limit=1, window=32)

    reference = curve()
    evaluate_editing(loaded, build_editor("ft-m", loaded, METHODS["ft-m"]), reqs, protocol="sequential",
                     capability=reference, **OPTIONS)
    assert [n for n, _ in reference.points] == [0, 2, 4, 6, 8]
    folder = tmp_path / "ckpt"
    editor = build_editor("ft-m", loaded, METHODS["ft-m"])
    Interrupt(editor, 6, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        evaluate_editing(loaded, editor, reqs, protocol="sequential", capability=curve(),
                         checkpointing=Checkpointing(folder, every=2), **OPTIONS)
    assert latest_checkpoint(folder).name == "edits-0000005"
    with pytest.raises(CheckpointError, match="capability.*--capability-every"):
        evaluate_editing(loaded, build_editor("ft-m", loaded, METHODS["ft-m"]), reqs, protocol="sequential",
                         capability=curve(every=3), checkpointing=Checkpointing(folder, resume=True), **OPTIONS)
    resumed = curve()
    evaluate_editing(loaded, build_editor("ft-m", loaded, METHODS["ft-m"]), reqs, protocol="sequential",
                     capability=resumed, checkpointing=Checkpointing(folder, every=2, resume=True), **OPTIONS)
    assert [n for n, _ in resumed.points] == [0, 2, 4, 6, 8]
    for (_, got), (_, want) in zip(resumed.points, reference.points):
        assert got["local-perplexity"] == pytest.approx(want["local-perplexity"], rel=1e-6)


def test_resume_refuses_another_runs_checkpoint(tokenizer, tmp_path):
    loaded = build_tiny("gpt2", tokenizer)
    reqs = requests(6)
    folder = tmp_path / "ckpt"
    editor = build_editor("ft-m", loaded, METHODS["ft-m"])
    evaluate_editing(loaded, editor, reqs, protocol="sequential", checkpointing=Checkpointing(folder, every=3), **OPTIONS)
    base = state_of(loaded)

    with pytest.raises(ConfigError, match="already holds a checkpoint.*--resume"):
        evaluate_editing(loaded, editor, reqs, protocol="sequential", checkpointing=Checkpointing(folder), **OPTIONS)
    other = build_editor("ft-m", loaded, {**METHODS["ft-m"], "num_steps": 3})

    def no_prepare(_loaded):
        raise AssertionError("the editor was prepared before the checkpoint was refused")

    other.prepare = no_prepare  # refused before any work
    with pytest.raises(CheckpointError, match="hparams.*--set"):
        evaluate_editing(loaded, other, reqs, protocol="sequential",
                         checkpointing=Checkpointing(folder, resume=True), **OPTIONS)
    with pytest.raises(CheckpointError, match="records_sha256.*--data"):
        evaluate_editing(loaded, editor, requests(6, offset=1), protocol="sequential",
                         checkpointing=Checkpointing(folder, resume=True), **OPTIONS)
    with pytest.raises(CheckpointError, match="batch_size.*--batch-size"):
        evaluate_editing(loaded, editor, reqs, protocol="sequential", batch_size=2,
                         checkpointing=Checkpointing(folder, resume=True), **OPTIONS)
    with pytest.raises(ConfigError, match="no checkpoint"):
        evaluate_editing(loaded, editor, reqs, protocol="sequential",
                         checkpointing=Checkpointing(tmp_path / "empty", resume=True), **OPTIONS)
    assert_same_state(state_of(loaded), base)  # every refusal before the first write

    position = latest_checkpoint(folder) / "position.json"  # a file changed after writing is refused by the manifest
    position.write_text(position.read_text().replace('"calls_done": 6', '"calls_done": 5'))
    with pytest.raises(CheckpointError, match="position.json"):
        evaluate_editing(loaded, editor, reqs, protocol="sequential",
                         checkpointing=Checkpointing(folder, resume=True), **OPTIONS)
    assert_same_state(state_of(loaded), base)


def test_immediate_and_retained_readings_and_curve(tokenizer):
    """Immediate: each batch scored right after its own edit call (the first equals a batch edit of the unedited
    model); retained: all after the last; the curve has both every K requests and ends on the final scores."""
    loaded = build_tiny("gpt2", tokenizer)
    reqs = requests(9)
    editor = build_editor("ft-m", loaded, {"num_steps": 5, "layers": [2], "lr": 5e-3})
    batch = evaluate_editing(loaded, editor, reqs[:2], protocol="batch", batch_size=2, **OPTIONS)
    report = evaluate_editing(loaded, editor, reqs, protocol="sequential", batch_size=2, eval_every=4, **OPTIONS)
    assert [r["immediate"] for r in report.requests[:2]] == [r["post"] for r in batch.requests]
    assert any(r["immediate"] != r["post"] for r in report.requests[:-2])  # later edits landed on them
    assert [p["edits"] for p in report.curve] == [4, 8, 9]  # batches of 2 cross 4 and 8; the last point is the end
    assert report.curve[-1]["retained"] == report.post and report.curve[-1]["immediate"] == report.immediate
    first = report.curve[0]
    assert first["immediate"]["reliability"] == pytest.approx(
        sum(r["immediate"]["reliability"] for r in report.requests[:4]) / 4, abs=1e-4)
    data = report.to_json()
    assert set(data["readings"]) == {"retained", "immediate", "definitions"}
    assert data["readings"]["immediate"] == report.immediate and data["curve"] == report.curve
    json.dumps(data)


def test_curve_and_checkpoints_need_the_sequential_protocol(tokenizer, tmp_path):
    loaded = build_tiny("gpt2", tokenizer)
    editor = build_editor("ft-m", loaded, METHODS["ft-m"])
    with pytest.raises(ConfigError, match="sequential"):
        evaluate_editing(loaded, editor, requests(2), protocol="single", eval_every=1, **OPTIONS)
    with pytest.raises(ConfigError, match="sequential"):
        evaluate_editing(loaded, editor, requests(2), protocol="batch", batch_size=2,
                         checkpointing=Checkpointing(tmp_path / "c"), **OPTIONS)


@pytest.mark.parametrize("argv, message", [
    (["--eval-every", "5"], "--eval-every is an option of --sequential"),
    (["--checkpoint-dir", "CKPT"], "--checkpoint-dir is an option of --sequential"),
    (["--sequential", "--resume", "CKPT", "--checkpoint-dir", "OTHER"], "give only --resume"),
    (["--sequential", "--resume", "CKPT"], "no checkpoint"),
])
def test_cli_refuses_bad_lifelong_flags_before_the_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    from lightning_edit.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("lightning_edit.models.load_model", refuse)
    argv = [str(tmp_path / a) if a in ("CKPT", "OTHER") else a for a in argv]
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_sequential_run_writes_readings_curve_figure_and_checkpoint(tokenizer, tmp_path, capsys):
    from conftest import save_tiny

    from lightning_edit.cli import main

    model = save_tiny("gpt2", tokenizer, tmp_path / "model")
    data = tmp_path / "requests.json"
    data.write_text(json.dumps([{"prompt": r.prompt, "target_new": r.target_new, "subject": r.subject,
                                 "rephrase_prompts": list(r.rephrase_prompts),
                                 "locality": [{"prompt": p.prompt, "answer": p.answer} for p in r.locality]}
                                for r in requests(6)]))
    out = tmp_path / "report.json"
    argv = ["--model", str(model), "--method", "ft-m", "--set", "layers=[2]", "--set", "num_steps=2", "--data", str(data),
            "--sequential", "--eval-every", "3", "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "2",
            "--output", str(out), "--no-fluency", "--no-pre-cache", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "retained (all scored after the last edit)" in printed and "immediate (each scored right after" in printed
    report = json.loads(out.read_text())
    assert [p["edits"] for p in report["curve"]] == [3, 6]
    assert report["readings"]["retained"]["reliability"] == report["summary"]["reliability"]
    assert (tmp_path / "report.curve.png").stat().st_size > 0
    assert latest_checkpoint(tmp_path / "ckpt").name == "edits-0000006"
    assert main(argv) == 2  # the folder holds a checkpoint: a fresh run into it is refused
    assert "--resume" in capsys.readouterr().err


def test_a_codebook_edit_keeps_only_what_it_added(tokenizer):
    """Each GRACE edit's record holds the rows it appended, not the whole codebook before and after it: what T
    kept edits hold grows as T, not T² (it held every earlier codebook before). Undo stays exact."""
    from lightning_edit.editors.memory.grace import GraceCodebook
    from lightning_edit.editors.memory.memory import find_memory

    loaded = build_tiny("gpt2", tokenizer)
    editor = build_editor("grace", loaded, {"num_steps": 2})
    deltas, books = [], []
    for request in requests(6):
        deltas.append(editor.edit(loaded, [request]))
        book = find_memory(loaded, GraceCodebook.key)
        books.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in book.state().items()})
    assert books[-1]["keys"].shape[0] > 1
    for delta in deltas[1:]:
        change = delta.patches[0].entry
        held = [t for pair in change.full.values() for t in pair if isinstance(t, torch.Tensor)]
        held += [g.added for g in getattr(change, "appended", {}).values() if isinstance(g.added, torch.Tensor)]
        held += [t for g in getattr(change, "appended", {}).values() if g.prefix is not None for t in (g.prefix.before, g.prefix.after)]
        assert held and all(t.shape[0] <= 1 for t in held if t.dim()), [tuple(t.shape) for t in held]
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in held)  # not views
    for k in range(len(deltas) - 1, 0, -1):  # undo newest first: each time exactly the codebook after k edits
        deltas[k].undo(loaded)
        now = find_memory(loaded, GraceCodebook.key).state()
        assert now["labels"] == books[k - 1]["labels"]
        assert all(torch.equal(now[n], books[k - 1][n]) for n in ("keys", "values", "radii"))
    deltas[0].undo(loaded)
    assert find_memory(loaded, GraceCodebook.key) is None


@pytest.mark.slow
@pytest.mark.timeout(7200)  # three runs of the sequence on the real model
@pytest.mark.parametrize("method, overrides", [("grace", {"num_steps": 10}), ("ft-m", {"num_steps": 5})])
def test_real_model_run_interrupted_resumes_to_the_same_state(smollm2, tmp_path, method, overrides):
    """smollm2-135m, ZsRE: a sequence interrupted by Ctrl-C and resumed ends with the weights and patches of the
    uninterrupted sequence (``N`` edits: LIGHTNING_EDIT_LIFELONG_N, default 40; a few hundred for the full check)."""
    import os

    from conftest import require_data

    from lightning_edit.data import load_requests

    require_data("zsre")
    n = int(os.environ.get("LIGHTNING_EDIT_LIFELONG_N", "40"))
    reqs = load_requests("zsre", n=n)
    base = state_of(smollm2)
    _, expected = full_run(smollm2, build_editor(method, smollm2, overrides), reqs)
    editor = build_editor(method, smollm2, overrides)
    Interrupt(editor, n // 2 + 1, KeyboardInterrupt())
    folder = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        evaluate_editing(smollm2, editor, reqs, protocol="sequential", checkpointing=Checkpointing(folder, every=4),
                         **OPTIONS)
    assert_same_state(state_of(smollm2), base)
    _, state = full_run(smollm2, build_editor(method, smollm2, overrides), reqs,
                        checkpointing=Checkpointing(folder, every=4, resume=True))
    assert_same_state(state, expected)
    assert_same_state(state_of(smollm2), base)


def _outputs(loaded, reqs) -> torch.Tensor:
    batch = loaded.tokenizer([r.prompt for r in reqs], return_tensors="pt", padding=True)
    with torch.no_grad():
        return loaded.model(**batch).logits


@pytest.mark.parametrize("method, overrides", [
    ("wise", {"memory_pool": [], "layer": -2, "num_steps": 3, "shard_size": 2, "shards_per_merge": 2}),
    ("grace", {"num_steps": 2}), ("t-patcher", {"memory_pool": [], "num_steps": 3})])
def test_a_sequence_keeps_one_record_per_memory(tokenizer, method, overrides):
    """The sequence's record of a memory is one change, each call's merged into it (WISE held a sparse copy of its
    side memory per edit: 3 MB each on smollm2); undoing it gives the unedited model back, re-applying it the
    edited one, exactly."""
    from lightning_edit.models.patches import PatchChange

    loaded = build_tiny("gpt2", tokenizer)
    reqs = requests(5)
    before = _outputs(loaded, reqs)
    report = evaluate_editing(loaded, build_editor(method, loaded, overrides), reqs, protocol="sequential",
                              keep_edits=True, **OPTIONS)
    (sequence,) = report.kept_deltas
    assert [type(c) for c in sequence.patches] == [PatchChange] and len(loaded.patches) == 1
    assert sequence.patches[0].summary["merged_edits"] == 5
    assert sequence.patches[0].container._diffs == [sequence.patches[0].entry]
    edited, state = _outputs(loaded, reqs), state_of(loaded)
    assert not torch.allclose(edited, before)
    sequence.undo(loaded)
    assert len(loaded.patches) == 0 and torch.equal(_outputs(loaded, reqs), before)
    sequence.reapply(loaded)
    assert_same_state(state_of(loaded), state)
    assert torch.equal(_outputs(loaded, reqs), edited)
    sequence.undo(loaded)


def test_only_a_memorys_two_newest_changes_merge(tokenizer):
    loaded = build_tiny("gpt2", tokenizer)
    editor = build_editor("grace", loaded, {"num_steps": 2})
    first, second, third = (editor.edit(loaded, [r]).patches[0] for r in requests(3))
    assert loaded.patches.merge(first, second) is None  # not the newest two: third came after
    assert loaded.patches.merge(third, second) is None  # out of order
    merged = loaded.patches.merge(second, third)
    assert merged is not None and merged.summary["merged_edits"] == 2
    assert loaded.patches.merge(first, merged) is not None  # and on: the merged change is the newest
    ike = build_editor("ike", loaded, {})
    a, b = (ike.edit(loaded, [r]).patches[0] for r in requests(2, offset=3))
    assert loaded.patches.merge(a, b) is None  # an unordered kind: each edit's entry is its own
