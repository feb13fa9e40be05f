"""lightning_edit.easyedit: EasyEdit's names, YAML keys and metric structure over our editors."""
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import lightning_edit.models as models
from lightning_edit.easyedit import (BaseEditor, EasyEditKeyWarning, FTHyperParams, GraceHyperParams, MEMITHyperParams,
                                     ROMEHyperParams, WISEHyperParams, resolve_easyedit_model_name)
from lightning_edit.errors import ConfigError

from conftest import build_tiny

ROOT = Path(__file__).resolve().parents[1]
GPT2_TEMPLATES = """
rewrite_module_tmp: "transformer.h.{}.mlp.c_proj"
layer_module_tmp: "transformer.h.{}"
mlp_module_tmp: "transformer.h.{}.mlp"
attn_module_tmp: "transformer.h.{}.attn"
ln_f_module: "transformer.ln_f"
lm_head_module: "transformer.wte"
"""
LLAMA_TEMPLATES = """
rewrite_module_tmp: "model.layers.{}.mlp.down_proj"
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp"
attn_module_tmp: "model.layers.{}.self_attn"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
"""


def write(tmp_path: Path, text: str, name: str = "hp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def rome_file(tmp_path: Path, templates: str = LLAMA_TEMPLATES, extra: str = "") -> Path:
    """An EasyEdit-format ROME file for the tiny 4-block models (cheap: no statistics, 1 prefix, 3 steps)."""
    return write(tmp_path, f"""
alg_name: "ROME"
model_name: "smollm2-135m"
stats_dir: "{tmp_path / 'stats'}"
device: 0
layers: [1]
fact_token: "subject_last"
v_num_grad_steps: 3
v_lr: 5e-1
v_loss_layer: 3
v_weight_decay: 0.5
clamp_norm_factor: 4
kl_factor: 0.0625
mom2_adjustment: false
context_template_length_params: [[4, 1]]
mom2_dataset: "wikitext"
mom2_n_tokens: 1000
mom2_dtype: "float32"
{templates}
{extra}
""")


def test_easyedit_keys_are_mapped_and_the_rest_warned_once(tmp_path):
    path = write(tmp_path, f"""
alg_name: "MEMIT"
model_name: "./hugging_cache/gpt2-xl"
stats_dir: "./data/stats"
device: 0
layers: [13, 14]
clamp_norm_factor: 0.75
layer_selection: "all"
fact_token: "subject_last"
v_num_grad_steps: 20
v_lr: 5e-1
v_loss_layer: 47
kl_factor: 0.0625
mom2_update_weight: 20000
context_template_length_params: [[5, 10], [10, 10]]
mom2_dataset: "wikipedia"
mom2_n_samples: 100
mom2_dtype: "float32"
max_length: 40
P_loc: "./null_space_project.pt"
{GPT2_TEMPLATES}
""")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hp = MEMITHyperParams.from_hparams(path.with_suffix(""))  # EasyEdit style: no .yaml
    ours = [w for w in caught if issubclass(w.category, EasyEditKeyWarning)]
    assert len(ours) == 1  # every key read differently, in one warning
    message = str(ours[0].message)
    for key in ("model_name", "mom2_dataset", "mom2_n_samples", "context_template_length_params", "max_length", "P_loc"):
        assert f"\n  {key}:" in message, key
    assert "layers:" not in message and "v_lr:" not in message  # mapped as they are: not listed
    assert hp.model_name == "gpt2-xl" and hp.layers == [13, 14] and hp.v_lr == 0.5 and hp.mom2_update_weight == 20000.0
    assert hp.clamp_norm_factor == 0.75 and hp.stats_dir == "./data/stats" and hp.device == 0 and hp.v_loss_layer == 47
    assert (hp.context_prefixes, hp.context_length) == (20, 10)
    assert hp.mom2_n_tokens == 100 * hp.stats_seq_len
    assert hp.module_templates["lm_head_module"] == "transformer.wte" and hp.alg_name == "MEMIT"
    native = hp.native()
    assert type(native).__name__ == "MEMITHyperParams" and not hasattr(native, "module_templates")


def test_shipped_smollm2_rome_file_matches_our_rome_config():
    with warnings.catch_warnings():
        warnings.simplefilter("error", EasyEditKeyWarning)  # nothing in it is read differently
        hp = ROMEHyperParams.from_hparams(ROOT / "lightning_edit/configs/easyedit/ROME/smollm2-135m.yaml")
    ours = type(hp.native()).for_model("rome", "smollm2-135m", family="llama")  # configs/rome/ merged for the model
    for name in ("layers", "context_prefixes", "context_length", "v_num_grad_steps", "v_lr", "mom2_n_tokens",
                 "v_weight_decay", "clamp_norm_factor", "kl_factor", "mom2_adjustment"):
        assert getattr(hp, name) == getattr(ours, name), name


@pytest.mark.parametrize("line, match", [
    ('alg_name: "MEMIT"', "alg_name 'MEMIT'"),
    ('fact_token: "subject_first"', "fact_token"),
    ("v_lr: fast", "v_lr"),
    ("context_template_length_params: [5, 10]", "context_template_length_params"),
])
def test_wrong_values_are_refused_with_the_key(tmp_path, line, match):
    path = write(tmp_path, f'alg_name: "ROME"\nmodel_name: smollm2-135m\n{line}\n')
    if line.startswith("alg_name"):
        path.write_text(f"{line}\nmodel_name: smollm2-135m\n")
    with pytest.raises(ConfigError, match=match):
        ROMEHyperParams.from_hparams(path)


def test_model_name_rule():
    assert resolve_easyedit_model_name("smollm2-135m") == ("smollm2-135m", None)
    assert resolve_easyedit_model_name("openai-community/gpt2-xl")[0] == "gpt2-xl"
    assert resolve_easyedit_model_name("./hugging_cache/llama-2-7b")[0] == "llama-2-7b"
    assert resolve_easyedit_model_name("Qwen/Qwen2-0.5B") == ("Qwen/Qwen2-0.5B", None)  # any hub id
    with pytest.raises(ConfigError, match="not a registered model"):
        resolve_easyedit_model_name("./hugging_cache/llama-7b")


def test_other_methods_keys(tmp_path):
    ft = FTHyperParams.from_easyedit_dict({"alg_name": "FT", "model_name": "smollm2-135m", "layers": [3], "lr": "5e-4",
                                           "objective_optimization": "prompt_last", "norm_constraint": False, "kl_factor": 0})
    assert ft.method() == "ft-l" and ft.native().norm_constraint is None and ft.native().lr == 5e-4
    with pytest.warns(EasyEditKeyWarning, match="dropout"):
        grace = GraceHyperParams.from_easyedit_dict({"alg_name": "GRACE", "model_name": "smollm2-135m", "edit_lr": 1.0,
                                                     "n_iter": 30, "eps": 1.0, "dist_fn": "euc", "dropout": 0.0,
                                                     "inner_params": ["model.layers[3].mlp.down_proj.weight"]})
    assert (grace.layer, grace.num_steps, grace.module_templates["inner_params"]) == (3, 30, "model.layers.{}.mlp.down_proj")
    with pytest.warns(EasyEditKeyWarning, match="retrieve"):
        wise = WISEHyperParams.from_easyedit_dict({"alg_name": "WISE", "model_name": "smollm2-135m", "act_margin": [5.0, 20.0, 10.0],
                                                   "save_freq": 10, "retrieve": True})
    assert (wise.alpha, wise.beta, wise.gamma, wise.shard_size) == (5.0, 20.0, 10.0, 10)


def test_module_templates_and_v_loss_layer_checked_against_the_model(tmp_path, tokenizer):
    gpt2, llama = build_tiny("gpt2", tokenizer), build_tiny("llama", tokenizer)
    hp = ROMEHyperParams.from_hparams(rome_file(tmp_path, templates=LLAMA_TEMPLATES))
    with pytest.raises(ConfigError, match=r"rewrite_module_tmp.*transformer\.h\.\{\}\.mlp\.c_proj"):
        BaseEditor.from_hparams(hp, loaded=gpt2)
    assert BaseEditor.from_hparams(hp, loaded=llama).editor.name == "rome"
    hp = ROMEHyperParams.from_hparams(rome_file(tmp_path, templates=GPT2_TEMPLATES))
    assert BaseEditor.from_hparams(hp, loaded=gpt2).alg_name == "ROME"  # GPT-2's tied head named by its embedding
    hp.v_loss_layer = 47
    with pytest.raises(ConfigError, match="set v_loss_layer: 3"):
        BaseEditor.from_hparams(hp, loaded=gpt2)


def test_device_0_without_cuda_falls_back_to_cpu(tmp_path, tokenizer, monkeypatch):
    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs, name=name)
        return build_tiny("llama", tokenizer)

    monkeypatch.setattr(models, "load_model", fake_load)  # where the runner loads from
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hp = ROMEHyperParams.from_hparams(rome_file(tmp_path))
    with pytest.warns(RuntimeWarning, match="sees no CUDA"):
        editor = BaseEditor.from_hparams(hp)
    assert seen["device"] == torch.device("cpu") and seen["name"] == "smollm2-135m" and editor.model is editor.loaded.model


def test_edit_returns_easyedit_metrics_and_weights_copy(tmp_path, tokenizer, monkeypatch):
    from lightning_edit.easyedit import editor as easyedit_editor

    monkeypatch.setattr(easyedit_editor, "FLUENCY_TOKENS", 4)  # EasyEdit's 100 generated tokens: slow for a unit test
    llama = build_tiny("llama", tokenizer)
    editor = BaseEditor.from_hparams(ROMEHyperParams.from_hparams(rome_file(tmp_path)), loaded=llama)
    original = {k: v.clone() for k, v in llama.model.state_dict().items()}
    args = dict(prompts=["Ray Charles plays the", "Grant Hill plays"], ground_truth=["piano", "basketball"],
                target_new=["violin", "soccer"], subject=["Ray Charles", "Grant Hill"],
                rephrase_prompts=["The instrument of Ray Charles is the", "The sport of Grant Hill is"],
                locality_inputs={"neighborhood": {"prompt": ["Larry Bird plays", "Joseph Fischhof plays the"],
                                                  "ground_truth": ["basketball", "piano"]}},
                portability_inputs={"one_hop": {"prompt": ["Ray Charles's instrument has", "Grant Hill's sport uses a"],
                                                "ground_truth": ["strings", "ball"]}},
                verbose=False)
    metrics, model, weights_copy = editor.edit(**args, keep_original_weight=True, test_generation=True)
    assert len(metrics) == 2 and model is llama.model and dict(weights_copy) == {}
    for i, m in enumerate(metrics):
        assert m["case_id"] == i and m["protocol"] == "single" and m["requested_rewrite"]["subject"] == args["subject"][i]
        assert set(m["pre"]) == {"rewrite_acc", "rephrase_acc", "portability", "fluency"}  # locality only in post
        assert set(m["post"]) == {"rewrite_acc", "rephrase_acc", "locality", "portability", "fluency"}
        assert set(m["post"]["locality"]) == {"neighborhood_acc"} and set(m["post"]["portability"]) == {"one_hop_acc"}
        for value in (m["pre"]["rewrite_acc"], m["post"]["rephrase_acc"], m["post"]["locality"]["neighborhood_acc"]):
            assert isinstance(value, list) and len(value) == 1 and 0.0 <= value[0] <= 1.0
        assert m["post"]["rewrite_acc"][0] == m["lightning_edit"]["post"]["reliability"] and m["time"] > 0
    for k, v in llama.model.state_dict().items():  # not sequential: every edit undone, as in EasyEdit
        assert torch.equal(v, original[k]), k

    metrics, model, weights_copy = editor.edit(**args, sequential_edit=True)
    assert {m["protocol"] for m in metrics} == {"sequential"} and list(weights_copy) == ["model.layers.1.mlp.down_proj.weight"]
    assert not torch.equal(model.state_dict()["model.layers.1.mlp.down_proj.weight"], original["model.layers.1.mlp.down_proj.weight"])
    with torch.no_grad():  # how EasyEdit scripts restore: write the copies back
        for name, before in weights_copy.items():
            model.get_parameter(name)[...] = before
    for k, v in llama.model.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_edit_arguments_refused_before_any_work(tmp_path, tokenizer):
    editor = BaseEditor.from_hparams(ROMEHyperParams.from_hparams(rome_file(tmp_path)), loaded=build_tiny("llama", tokenizer))
    base = dict(prompts=["Ray Charles plays the"], target_new=["violin"], subject=["Ray Charles"], verbose=False)
    with pytest.raises(ConfigError, match="eval_metric='ppl'"):
        editor.edit(**base, eval_metric="ppl")
    with pytest.raises(ConfigError, match=r"\['target_neg_prompts'\]"):
        editor.edit(**base, target_neg_prompts=[])
    with pytest.raises(ConfigError, match="locality_inputs must be a dict"):  # EasyEdit's old locality_prompts list
        editor.batch_edit(base["prompts"], base["target_new"], None, None, ["Larry Bird plays"], verbose=False)


def test_batch_edit_uses_hparams_batch_size(tmp_path, tokenizer):
    text = rome_file(tmp_path, extra="batch_size: 2\nmom2_update_weight: 100").read_text()
    path = write(tmp_path, text.replace('"ROME"', '"MEMIT"').replace("mom2_adjustment: false", "mom2_adjustment: true"), "memit.yaml")
    editor = BaseEditor.from_hparams(MEMITHyperParams.from_hparams(path), loaded=build_tiny("llama", tokenizer))
    metrics, _, weights_copy = editor.batch_edit(prompts=["Ray Charles plays the", "Grant Hill plays", "Larry Bird plays"],
                                                 target_new=["violin", "soccer", "golf"],
                                                 subject=["Ray Charles", "Grant Hill", "Larry Bird"], verbose=False)
    assert len(metrics) == 3 and {m["protocol"] for m in metrics} == {"batch"} and dict(weights_copy) == {}
    assert metrics[0]["scored"].endswith("(2 edit calls)")  # batches of hparams.batch_size = 2


# EasyEdit's README ROME example, verbatim but for its import line (and the hparams path: our EasyEdit-format file).
README_ROME_EXAMPLE = '''
from lightning_edit.easyedit import BaseEditor
from lightning_edit.easyedit import ROMEHyperParams

prompts = ['Ray Charles, the',
            'Grant Hill is a professional',
            'The law in Ikaalinen declares the language'
            ]
ground_truth = ['piano',
                'basketball',
                'Finnish'
                ]
target_new = ['violin',
              'soccer',
              'Swedish'
              ]
subject = ['Ray Charles',
            'Grant Hill',
            'Ikaalinen'
            ]

hparams = ROMEHyperParams.from_hparams('./lightning_edit/configs/easyedit/ROME/smollm2-135m')
editor = BaseEditor.from_hparams(hparams)
metrics, edited_model, _ = editor.edit(
    prompts=prompts,
    ground_truth=ground_truth,
    target_new=target_new,
    subject=subject,
    sequential_edit=True
)
print(metrics)
print(type(edited_model))
'''


@pytest.mark.slow
def test_readme_rome_example_on_smollm2(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(README_ROME_EXAMPLE, "easyedit_readme_rome.py", "exec"), namespace)
    metrics, edited_model, weights_copy = namespace["metrics"], namespace["edited_model"], namespace["_"]
    printed = capsys.readouterr().out
    assert "rewrite_acc" in printed and "LlamaForCausalLM" in printed
    assert len(metrics) == 3
    for m in metrics:
        assert set(m["pre"]) >= {"rewrite_acc", "locality", "portability"} and set(m["post"]) >= {"rewrite_acc", "locality", "portability"}
        print(m["requested_rewrite"]["prompt"], "pre", m["pre"]["rewrite_acc"], "post", m["post"]["rewrite_acc"])
    # Three ROME edits kept one after another, scored after the last: the new targets are now the model's answers.
    post = [m["post"]["rewrite_acc"][0] for m in metrics]
    pre = [m["pre"]["rewrite_acc"][0] for m in metrics]
    assert sum(post) / 3 >= 0.9 and sum(pre) / 3 <= 0.5, (pre, post)
    weights_copy()  # undo through the callable form of the third return value
    assert dict(weights_copy) and "model.layers.4.mlp.down_proj.weight" in weights_copy


# EasyEdit's hparams/MALMEN/gpt2-xl.yaml, every key as the file has it (zjunlp/EasyEdit)
MALMEN_GPT2_XL = """
alg_name: "MALMEN"
archive: ./results/models/MALMEN/gpt2-xl
device: 0
model_name: ./hugging_cache/gpt2-xl
model_class: GPT2LMHeadModel
tokenizer_class: GPT2TokenizerFast
tokenizer_name: ./hugging_cache/gpt2-xl
inner_params:
- transformer.h.42.mlp.c_proj.weight
- transformer.h.43.mlp.c_proj.weight
- transformer.h.44.mlp.c_proj.weight
- transformer.h.45.mlp.c_proj.weight
- transformer.h.46.mlp.c_proj.weight
- transformer.h.47.mlp.c_proj.weight
dropout: 0.0
train_base: False
no_grad_layers: null
rank: 1920
n_blocks: 2
lr: 1e-6
meta_lr: 1e-5
loc_coef: 1
max_grad_norm: 1
token: mask
n_edits: 1
batch_size: 1
editor_batch_size: 1024
silent: False
max_iters: 10000
log_interval: 100
eval_log_interval: 100
final_eval: True
val_interval: 100
early_stop_patience: 1000
early_stop_key: "ES_val"
eval_only: False
debug: False
save: False
val_batch_size: 1
val_steps: 200 # only for debug
model_parallel: false
results_dir: ./results
"""


def test_easyedit_malmen_file(tmp_path):
    from lightning_edit.easyedit import MALMENHyperParams

    with pytest.warns(EasyEditKeyWarning) as caught:
        hp = MALMENHyperParams.from_hparams(write(tmp_path, MALMEN_GPT2_XL))
    message = "\n".join(str(w.message) for w in caught)
    for key in ("meta_lr", "loc_coef", "editor_batch_size", "dropout", "train_base"):
        assert f"\n  {key}:" in message, key
    assert hp.model_name == "gpt2-xl" and hp.alg_name == "MALMEN"
    assert hp.layers == [42, 43, 44, 45, 46, 47] and hp.module_templates["inner_params"] == "transformer.h.{}.mlp.c_proj"
    assert (hp.rank, hp.n_blocks, hp.edit_lr_init, hp.key_positions) == (1920, 2, 1e-6, "all")  # token: mask
    assert hp.editor_checkpoint == "./results/models/MALMEN/gpt2-xl"
    assert hp.training == {"lr": 1e-5, "c_loc": 1.0, "gradient_clip_val": 1.0, "max_steps": 10000, "batch_size": 1}
    assert isinstance(hp.training["lr"], float)  # YAML reads 1e-5 as text: typed by the training settings
    native = hp.native()
    assert type(native).__name__ == "MALMENHyperParams" and native.layers == hp.layers
    with pytest.raises(ConfigError, match="token"):
        MALMENHyperParams.from_easyedit_dict({"alg_name": "MALMEN", "model_name": "smollm2-135m", "token": "subject"})
    with pytest.raises(ConfigError, match="different projections"):
        MALMENHyperParams.from_easyedit_dict({"alg_name": "MALMEN", "model_name": "smollm2-135m", "inner_params": [
            "model.layers.28.mlp.down_proj.weight", "model.layers.29.mlp.up_proj.weight"]})


# EasyEdit's hparams/R-ROME/llama-7b.yaml, hparams/EMMET/llama-7b.yaml and hparams/PMET/llama-7b.yaml (github
# zjunlp/EasyEdit), keys and values as written there; model_name set to a registered model (theirs is a local path)
# and v_loss_layer left out (it is checked against the loaded model, a tiny one here).
EASYEDIT_NEW_LOCATE_FILES = {
    "R-ROME": """
alg_name: "R-ROME"
model_name: "smollm2-135m"
stats_dir: "./data/stats"
device: 0
layers: [5]
fact_token: "subject_last"
v_num_grad_steps: 25
v_lr: 5e-1
v_weight_decay: 1e-3
clamp_norm_factor: 4
kl_factor: 0.0625
mom2_adjustment: false
context_template_length_params: [[5, 10], [10, 10]]
rewrite_module_tmp: "model.layers.{}.mlp.down_proj"
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp"
attn_module_tmp: "model.layers.{}.self_attn"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
model_parallel: false
fp16: true
""",
    "EMMET": """
layers: [5]
clamp_norm_factor: 4
layer_selection: "all"
fact_token: "subject_last"
v_num_grad_steps: 25
v_lr: 5e-1
v_weight_decay: 1e-3
kl_factor: 0.0625
mom2_adjustment: true
mom2_update_weight: 100000
rewrite_module_tmp: "model.layers.{}.mlp.down_proj"
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp"
attn_module_tmp: "model.layers.{}.self_attn"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
update_norm_lambda: 0
emmet_lambda: 0.1
model_parallel: false
stats_dir: "./data/stats"
device: 4
model_name: "smollm2-135m"
alg_name: "EMMET"
""",
    "PMET": """
alg_name: "PMET"
model_name: "smollm2-135m"
stats_dir: "./data/stats"
device: 0
layers: [4, 5, 6, 7, 8]
clamp_norm_factor: 1
layer_selection: "all"
fact_token: "subject_last"
v_num_grad_steps: 20
v_lr: 5e-1
v_weight_decay: 0.5
kl_factor: 0.0625
mom2_adjustment: true
mom2_update_weight: 15000
rewrite_module_tmp: "model.layers.{}.mlp.down_proj"
rewrite_module_tmps: ["model.layers.{}.mlp.down_proj"]
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp.down_proj"
attn_module_tmp: "model.layers.{}.self_attn.o_proj"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
model_parallel: false
nll_loss_factor: 1
""",
}


def test_easyedit_files_of_r_rome_emmet_and_pmet(tmp_path, tokenizer):
    from lightning_edit.easyedit import EMMETHyperParams, PMETHyperParams, R_ROMEHyperParams, check_against_model

    llama = build_tiny("llama", tokenizer)  # the same module paths as LLaMA-7B's
    read = {}
    for alg, cls in (("R-ROME", R_ROMEHyperParams), ("EMMET", EMMETHyperParams), ("PMET", PMETHyperParams)):
        with pytest.warns(EasyEditKeyWarning, match="mom2_dataset: 'wikipedia'"):
            read[alg] = cls.from_hparams(write(tmp_path, EASYEDIT_NEW_LOCATE_FILES[alg], f"{alg}.yaml"))
        check_against_model(read[alg], llama)  # every module template is where our layout edits
    r_rome, emmet, pmet = (read[a].native() for a in ("R-ROME", "EMMET", "PMET"))
    assert type(r_rome).__name__ == "RROMEHyperParams" and read["R-ROME"].method() == "r-rome"
    assert (r_rome.layers, r_rome.v_num_grad_steps, r_rome.v_weight_decay, r_rome.mom2_adjustment) == ([5], 25, 1e-3, False)
    assert (r_rome.context_prefixes, r_rome.context_length) == (20, 10)
    assert (emmet.emmet_lambda, emmet.update_norm_lambda, emmet.mom2_update_weight) == (0.1, 0, 100000)
    assert (pmet.layers, pmet.clamp_norm_factor, pmet.mom2_update_weight) == ([4, 5, 6, 7, 8], 1, 15000)
    with pytest.raises(ConfigError, match="mlp_module_tmp"):  # ROME's style of template is not PMET's site
        check_against_model(PMETHyperParams.from_easyedit_dict(
            {"alg_name": "PMET", "model_name": "smollm2-135m", "mlp_module_tmp": "model.layers.{}.mlp"}), llama)


@pytest.mark.parametrize("cls_name, raw, match", [
    ("R_ROMEHyperParams", {"alg_name": "R-ROME", "original_implementation": True}, "original_implementation"),
    ("R_ROMEHyperParams", {"alg_name": "R-ROME", "enable_prompt_keys": True}, "enable_prompt_keys"),
    ("PMETHyperParams", {"alg_name": "PMET", "rewrite_module_tmps": ["model.layers.{}.self_attn.o_proj",
                                                                     "model.layers.{}.mlp.down_proj"]}, "FFN output"),
    ("EMMETHyperParams", {"alg_name": "EMMET", "mom2_adjustment": False}, "mom2_adjustment"),
    ("EMMETHyperParams", {"alg_name": "MEMIT"}, "alg_name"),
])
def test_easyedit_new_locate_keys_we_do_not_do_are_refused(cls_name, raw, match):
    import lightning_edit.easyedit as easyedit

    with pytest.raises(ConfigError, match=match):
        getattr(easyedit, cls_name).from_easyedit_dict({"model_name": "smollm2-135m", **raw})


def test_every_easyedit_class_is_exported_under_its_name():
    import lightning_edit.easyedit as easyedit

    assert {cls.__name__ for cls in easyedit.EASYEDIT_CLASSES} <= set(easyedit.__all__)
    assert all(getattr(easyedit, name) is not None for name in easyedit.__all__)
