"""GRACE: codebook edits on tiny models of every family, exact detach, codebook rules, one real check."""
from __future__ import annotations

import pytest
import torch

from lightning_edit.editors import build_editor
from lightning_edit.editors.memory.grace import GraceCodebook
from lightning_edit.editors.memory.memory import find_memory
from lightning_edit.errors import ConfigError
from lightning_edit.requests import EditRequest

from patch_checks import logits_of, run_sequential_checks, target_accuracy

EDIT = EditRequest(prompt="The capital of Freedonia is", target_new="Paris")
OTHER = EditRequest(prompt="Danielle Darrieux speaks", target_new="English")


def test_grace_edits_and_detaches_exactly_on_every_family(tiny_model):
    editor = build_editor("grace", tiny_model, {"num_steps": 15, "lr": 1.0})
    run_sequential_checks(tiny_model, editor, [EDIT, OTHER], GraceCodebook.key, size_of=lambda m: m.size)


def test_grace_codebook_rules(tiny_decoder):
    """Same key, same label: the entry is reused (expand); same key, new label: overwritten; far key: added."""
    editor = build_editor("grace", tiny_decoder, {"num_steps": 5})
    first = editor.edit(tiny_decoder, [EDIT])
    book = find_memory(tiny_decoder, GraceCodebook.key)
    assert book.size == 1 and book.values["labels"] == ("paris",)
    assert float(book.values["radii"][0]) == pytest.approx(editor.hparams.epsilon_init)
    again = editor.edit(tiny_decoder, [EDIT])
    assert book.size == 1  # expanded, not duplicated
    changed = editor.edit(tiny_decoder, [EditRequest(prompt=EDIT.prompt, target_new="Rome")])
    assert book.size == 1 and book.values["labels"] == ("rome",)
    # A key far away from every entry opens a new one.
    far = build_editor("grace", tiny_decoder, {"num_steps": 5, "epsilon_init": 1e-6})
    for d in (changed, again, first):
        d.undo(tiny_decoder)
    assert len(tiny_decoder.patches) == 0
    deltas = [far.edit(tiny_decoder, [EDIT]), far.edit(tiny_decoder, [OTHER])]
    assert find_memory(tiny_decoder, GraceCodebook.key).size == 2
    for d in reversed(deltas):
        d.undo(tiny_decoder)


def test_grace_split_halves_both_radii(tiny_decoder):
    """Two different answers for nearby keys: the old entry's radius and the new one's become half the distance."""
    editor = build_editor("grace", tiny_decoder, {"num_steps": 3, "epsilon_init": 1e6})
    first = editor.edit(tiny_decoder, [EDIT])
    second = editor.edit(tiny_decoder, [OTHER])
    book = find_memory(tiny_decoder, GraceCodebook.key)
    assert book.size == 2
    distance = float(torch.dist(book.values["keys"][0], book.values["keys"][1]))
    assert book.values["radii"].tolist() == pytest.approx([distance / 2, distance / 2], rel=1e-5)
    second.undo(tiny_decoder)
    assert book.size == 1 and float(book.values["radii"][0]) == pytest.approx(1e6)
    first.undo(tiny_decoder)


@pytest.mark.parametrize("overrides, field", [({"epsilon_init": 0}, "epsilon_init"), ({"value_init": "hot"}, "value_init"),
                                              ({"layer": 99}, "layer"), ({"lr": -1}, "lr")])
def test_grace_bad_config_names_the_field(tiny_decoder, overrides, field):
    with pytest.raises(ConfigError, match=field):
        editor = build_editor("grace", tiny_decoder, overrides)
        editor.edit(tiny_decoder, [EDIT])


def test_grace_refuses_a_memory_built_elsewhere(tiny_decoder):
    delta = build_editor("grace", tiny_decoder, {"num_steps": 2, "layer": -1}).edit(tiny_decoder, [EDIT])
    with pytest.raises(ConfigError, match="other settings"):
        build_editor("grace", tiny_decoder, {"num_steps": 2, "layer": -2}).edit(tiny_decoder, [OTHER])
    delta.undo(tiny_decoder)
    assert len(tiny_decoder.patches) == 0


def test_grace_real_model_edit_and_locality(smollm2):
    request = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English")
    probe = ["Michel Rocard is a native speaker of"]
    before = logits_of(smollm2, probe, ["French"])
    editor = build_editor("grace", smollm2)
    delta = editor.edit(smollm2, [request])
    try:
        assert target_accuracy(smollm2, request) == 1.0
        assert torch.equal(logits_of(smollm2, probe, ["French"]), before)  # outside every radius: untouched
    finally:
        delta.undo(smollm2)
    assert torch.equal(logits_of(smollm2, probe, ["French"]), before)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["zsre", "counterfact"])
def test_grace_100_sequential_edits(smollm2, data):
    from patch_checks import sequential_report

    summary = sequential_report(smollm2, "grace", data, 100)
    assert summary["reliability"] >= 0.9
    assert summary["locality"] >= 0.9
