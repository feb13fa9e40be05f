"""Causal tracing on tiny random models: exactness of the fast restored runs, sanity bounds, files, hooks."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import build_tiny, save_tiny
from lightning_edit.cli import main as cli_main
from lightning_edit.evaluation.trace_report import suggest_layers, token_categories
from lightning_edit.evaluation.tracing import Cell, PromptTracer, RecordTrace, subject_embedding_std, trace_requests
from lightning_edit.requests import EditRequest

REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", target_true="French",
                      subject="Danielle Darrieux", case_id=0)
OTHER = EditRequest(prompt="Toko Yasuda, the", target_new="piano", target_true="guitar", subject="Toko Yasuda", case_id=1)


def _tracer(loaded, samples: int = 3, window: int = 2) -> PromptTracer:
    return PromptTracer(loaded, REQUEST, 3 * subject_embedding_std(loaded, [REQUEST]), samples=samples, window=window)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_fast_restorations_equal_full_runs(family, tokenizer):
    """Stand-in lower blocks and the corrupted run's cache give the probabilities of full restored runs."""
    tracer = _tracer(build_tiny(family, tokenizer))
    n_tokens = tracer.ids.shape[1]
    cells = [Cell(kind, layer, t) for kind in ("hidden", "mlp", "attn") for layer in (0, 2, 3) for t in (0, 4, n_tokens - 1)]
    fast = tracer.run(cells)
    for cell, p in zip(cells, fast):
        modules, _ = tracer.patched_modules(cell)
        assert p == pytest.approx(tracer.restored_probability([(m, cell.position) for m in modules]), rel=1e-4), cell


def test_restoring_every_embedding_gives_the_clean_run(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    tracer = _tracer(loaded)
    everything = [(loaded.layout.embeddings, t) for t in range(tracer.ids.shape[1])]
    assert tracer.restored_probability(everything) == pytest.approx(tracer.high, rel=1e-5)
    assert tracer.restored_probability([]) == pytest.approx(tracer.low, rel=1e-6)
    assert tracer.high != pytest.approx(tracer.low, rel=1e-4)  # the noise did change the run
    # Restoring the last block's output at the last token is the clean output there: p is the clean p.
    assert tracer.run([Cell("hidden", tracer.n_layers - 1, tracer.ids.shape[1] - 1)])[0] == pytest.approx(tracer.high, rel=1e-5)


def test_trace_leaves_no_hooks_or_stand_ins(tokenizer):
    loaded = build_tiny("gemma3_text", tokenizer)
    (result,) = trace_requests(loaded, [REQUEST], samples=2, window=2, progress=False)
    for kind in ("hidden", "mlp", "attn"):
        assert result.scores[kind].shape == (len(result.tokens), 4)
        assert torch.isfinite(result.scores[kind]).all()
    for name, module in loaded.model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
        assert "forward" not in module.__dict__, name


def test_suggestion_takes_the_peak_mlp_layer_at_the_last_subject_token():
    scores = torch.zeros(5, 8)
    scores[2, 6] = 0.5  # last subject token (range 1:3), layer 6
    scores[4, 1] = 0.9  # last token: not what ROME edits
    trace = RecordTrace(case_id=0, prompt="", subject="", answer="x", tokens=list("abcde"), subject_range=(1, 3),
                        high=0.6, low=0.1, scores={"mlp": scores + 0.1})
    suggestion = suggest_layers([trace], memit_width=5)
    assert suggestion.rome == 6 and suggestion.memit == [2, 3, 4, 5, 6]
    trace.scores["mlp"] = torch.zeros(5, 8)
    trace.scores["mlp"][2, 1] = 0.5
    assert suggest_layers([trace], memit_width=5).memit == [0, 1]  # clamped at the first layer
    assert token_categories(5, 1, 3)["middle subject tokens"] == []


def test_trace_command_writes_csv_and_png(tmp_path, tokenizer, capsys):
    model_dir = save_tiny("llama", tokenizer, tmp_path / "tiny")
    data = tmp_path / "requests.json"
    data.write_text(json.dumps([{"prompt": r.prompt, "target_new": r.target_new, "target_true": r.target_true,
                                 "subject": r.subject} for r in (REQUEST, OTHER)]))
    out = tmp_path / "trace"
    rc = cli_main(["trace", "--model", str(model_dir), "--data", str(data), "--n", "2", "--samples", "2",
                   "--window", "2", "--output", str(out), "--plots", "1", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "suggested layers: rome [" in printed and "traced 2 records" in printed
    assert {p.name for p in out.iterdir()} == {"average.png", "cells.csv", "records.csv", "record_0.png", "summary.csv"}
    with (out / "cells.csv").open() as f:
        rows = list(csv.DictReader(f))
    n_tokens = {r.case_id: len(tokenizer(r.prompt)["input_ids"]) for r in (REQUEST, OTHER)}
    assert len(rows) == 3 * 4 * sum(n_tokens.values())  # kinds × layers × tokens
    assert (out / "average.png").read_bytes()[:4] == b"\x89PNG"


def test_trace_command_refuses_bad_input_before_loading(tmp_path, capsys):
    assert cli_main(["trace", "--model", "no-such-model", "--kinds", "mlp,residual"]) == 2
    assert "--kinds" in capsys.readouterr().err
    data = tmp_path / "requests.json"
    data.write_text(json.dumps([{"prompt": "The capital of Italy is", "target_new": "Paris", "subject": "Italy"}]))
    assert cli_main(["trace", "--model", "no-such-model", "--data", str(data), "--output", str(tmp_path / "o")]) == 2
    assert "target_true" in capsys.readouterr().err
