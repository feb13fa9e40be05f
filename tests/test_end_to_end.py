"""The real embedded default model, end to end: loading, an FT-M edit, the CLI, the EasyEdit-shaped API, --save."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_edit import EditRequest, ModelNotAvailableError
from lightning_edit.api import BaseEditor
from lightning_edit.cli import main
from lightning_edit.editors import build_editor
from lightning_edit.editors.ft import FTMHyperParams
from lightning_edit.evaluation import evaluate_editing
from lightning_edit.models import load_model
from lightning_edit.models.teacher_forcing import score_targets

ROOT = Path(__file__).resolve().parents[1]
DARRIEUX = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", subject="Danielle Darrieux",
                       target_true="French", rephrase_prompts=("Danielle Darrieux grew up speaking",))


def test_smollm2_knows_real_facts(smollm2):
    assert smollm2.layout.family == "llama" and smollm2.layout.num_layers(smollm2.model) == 30
    french, english = score_targets(smollm2, [DARRIEUX.prompt] * 2, ["French", "English"])
    assert french.exact_match == 1.0 and french.mean_logprob > english.mean_logprob


def test_ft_m_edit_on_smollm2_and_undo(smollm2):
    before = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    editor = build_editor("ft-m", smollm2)
    report = evaluate_editing(smollm2, editor, [DARRIEUX], fluency=False, progress=False)
    assert report.pre["reliability"] < 0.5 and report.post["reliability"] == 1.0
    assert report.post["efficacy_score"] == 1.0
    assert report.efficiency["edit_seconds"] > 0 and report.efficiency["peak_memory_mb"] > 100
    for k, v in smollm2.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_easyedit_api_sequential_keeps_edits(smollm2):
    hparams = FTMHyperParams.from_hparams(ROOT / "configs" / "ft-m" / "default.yaml", model_name="smollm2-135m")
    editor = BaseEditor.from_hparams(hparams, loaded=smollm2)
    metrics, model, deltas = editor.edit(
        prompts=[DARRIEUX.prompt], target_new=["English"], ground_truth=["French"], subject=["Danielle Darrieux"],
        rephrase_prompts=["Danielle Darrieux grew up speaking"],
        locality_inputs={"neighborhood": {"prompt": ["The capital of Italy is"], "ground_truth": ["Rome"]}},
        sequential_edit=True)
    try:
        assert metrics[0]["post"]["reliability"] == 1.0 and "locality" in metrics[0]["post"]
        assert score_targets(smollm2, [DARRIEUX.prompt], ["English"])[0].exact_match == 1.0  # still edited
    finally:
        for d in reversed(deltas):
            d.undo(smollm2)
    assert score_targets(smollm2, [DARRIEUX.prompt], ["French"])[0].exact_match == 1.0


def test_cli_end_to_end_and_save(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["--method", "ft-m", "--data", "demo", "--n", "2", "--sequential", "--output", str(out),
                 "--save", str(tmp_path / "edited"), "--quiet", "--set", "num_steps=10", "--fluency-tokens", "12"])
    assert code == 0
    result = json.loads(out.read_text())
    s = result["summary"]
    for key in ("reliability", "generalization", "locality", "portability", "efficacy_score", "paraphrase_score",
                "neighborhood_score", "fluency", "edit_seconds", "peak_memory_mb", "method", "model", "n"):
        assert key in s, key
    assert s["n"] == 2 and s["method"] == "ft-m" and len(result["requests"]) == 2
    assert result["config"]["hparams"]["num_steps"] == 10 and result["config"]["threads"] == torch.get_num_threads()
    split = s["time_split_seconds"]
    assert split["edit"] > 0 and split["scoring"] > 0 and split["generation"] > 0
    assert "reliability" in result["metric_protocols"]
    printed = capsys.readouterr().out
    assert "→" in printed and "mean" in printed and "edits took" in printed and "after:" in printed
    assert "{" not in printed  # the JSON goes to --output, not to the screen (unless --json)
    # the saved edited model is the one scored (both edits kept), an ordinary HF directory in safetensors,
    # with a record of the edits and the scores it got; readable by others
    saved = tmp_path / "edited"
    record = json.loads((saved / "edits.json").read_text())
    assert (saved / "model.safetensors").exists() and record["method"] == "ft-m" and record["protocol"] == "sequential"
    assert record["summary"]["reliability"] == s["reliability"] and len(record["edits"]) == 2
    assert (saved / "model.safetensors").stat().st_mode & 0o044 == 0o044
    reloaded = load_model(str(saved))
    for row in result["requests"]:
        scored = score_targets(reloaded, [row["prompt"]], [row["target_new"]])[0].token_accuracy
        assert scored == row["post"]["reliability"]


def test_cli_bad_input_is_one_clear_line(capsys):
    assert main(["--method", "nope", "--quiet"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["--data", "/no/such/file.json", "--quiet"]) == 2
    assert "neither a known name" in capsys.readouterr().err


def test_missing_model_offline_is_a_clear_error():
    with pytest.raises(ModelNotAvailableError, match="local directory"):
        load_model("gpt2-xl")


@pytest.mark.slow
def test_done_criterion_ft_m_counterfact_20(tmp_path):
    """`python edit.py --method ft-m --model smollm2-135m --data counterfact --n 20` reaches reliability ≥ 0.9."""
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(ROOT / "edit.py"), "--method", "ft-m", "--model", "smollm2-135m", "--data", "counterfact",
                    "--n", "20", "--output", str(out), "--quiet"], check=True, cwd=ROOT)
    s = json.loads(out.read_text())["summary"]
    assert s["reliability"] >= 0.9 and 0.0 <= s["locality"] <= 1.0


@pytest.mark.slow
def test_gemma3_loads_and_caches():
    loaded = load_model("gemma3-270m")
    assert loaded.layout.family == "gemma3_text"
    assert score_targets(loaded, ["The capital of France is"], ["Paris"])[0].mean_logprob > -3


def test_cli_refuses_control_token_text_in_a_target(tmp_path, capsys):
    """`<|im_end|>` in a target would become smollm2's control token, not text: refused by name, no edit made."""
    data = tmp_path / "requests.json"
    data.write_text(json.dumps([{"prompt": "The capital of France is", "target_new": "Lyon<|im_end|>"}]))
    assert main(["--data", str(data), "--quiet", "--no-fluency", "--method", "ft-m"]) == 2
    err = capsys.readouterr().err
    assert "field 'target_new'" in err and "special (control) token" in err and "Traceback" not in err
