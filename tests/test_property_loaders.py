"""Property: whatever a request file or an EasyEdit hyperparameter dict holds, the loaders either accept it or raise
one of this package's own errors (``LightningEditError``), never a bare TypeError, KeyError, RecursionError...

Generated request records mix the fields of every format the loaders detect (lightning-edit's own, ZsRE, CounterFact
in both layouts, KnowEdit, MQuAKE, known_1000) with values of random JSON types: nested lists and objects, numbers,
booleans, null, strings with braces. They are written in each file layout the loaders read (a JSON list, JSON lines,
an object holding the list under "data") and loaded. Deterministic (``derandomize``), so CI does not flake.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_edit.errors import LightningEditError

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# text a request might hold, braces (str.format fields) and odd characters included
TEXT = st.one_of(st.sampled_from(["", " ", "Paris", "{}", "{1}", "{:99999}", "{0.__class__}", "{{}}", "{prompt}",
                                  "The capital of {} is", "{} is in {1}", "{0[0]} {}", "a/b/../c", "<|endoftext|>"]),
                 st.text(max_size=12))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False), TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                    st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)

REQUEST_FIELDS = ["prompt", "target_new", "subject", "target_true", "rephrase_prompts", "locality", "portability",
                  "case_id", "src", "alt", "rephrase", "loc", "loc_ans", "answers", "pred", "ground_truth",
                  "locality_prompt", "locality_ground_truth", "rephrase_prompt", "requested_rewrite",
                  "neighborhood_prompts", "paraphrase_prompts", "attribute_prompts", "known_id", "attribute",
                  "template", "text", "labels", "concept", "questions", "new_answer", "new_answer_alias"]
# a value that is often the right shape for its field, else anything
PROBE = st.fixed_dictionaries({"prompt": JSON, "answer": JSON}, optional={"kind": JSON, "ground_truth": JSON})
REWRITE = st.fixed_dictionaries({"prompt": st.one_of(TEXT, JSON), "subject": st.one_of(TEXT, JSON)},
                                optional={"target_new": st.one_of(st.fixed_dictionaries({"str": JSON}), JSON),
                                          "target_true": st.one_of(st.fixed_dictionaries({"str": JSON}), JSON),
                                          "question": JSON})
FIELD_VALUE = {
    "locality": st.one_of(st.lists(PROBE, max_size=3), st.dictionaries(TEXT, st.lists(PROBE, max_size=2), max_size=2), JSON),
    "portability": st.one_of(st.lists(PROBE, max_size=3), st.dictionaries(TEXT, PROBE, max_size=2), JSON),
    "requested_rewrite": st.one_of(REWRITE, st.lists(REWRITE, max_size=3), JSON),
}


# CounterFact (ROME's layout) whole: the prompt holds the subject's place as "{}" beside other braces
ROME_RECORD = st.fixed_dictionaries({"requested_rewrite": st.fixed_dictionaries({
    "prompt": TEXT, "subject": TEXT, "target_new": st.fixed_dictionaries({"str": TEXT}),
    "target_true": st.fixed_dictionaries({"str": TEXT})})}, optional={"paraphrase_prompts": JSON, "case_id": JSON})


@st.composite
def records(draw) -> dict:
    if draw(st.integers(0, 3)) == 0:
        return draw(ROME_RECORD)
    keys = draw(st.lists(st.sampled_from(REQUEST_FIELDS), min_size=1, max_size=8, unique=True))
    record = {k: draw(FIELD_VALUE.get(k, st.one_of(TEXT, JSON))) for k in keys}
    if draw(st.booleans()):  # often a record some format matches
        record.setdefault("prompt", draw(TEXT))
        record.setdefault("target_new", draw(TEXT))
    return record


def _write(folder: Path, layout: str, recs: list) -> Path:
    path = folder / f"requests.{'jsonl' if layout == 'lines' else 'json'}"
    if layout == "lines":
        path.write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    else:
        path.write_text(json.dumps({"data": recs} if layout == "data" else recs), encoding="utf-8")
    return path


@SETTINGS
@given(recs=st.lists(records(), min_size=1, max_size=4), layout=st.sampled_from(["list", "lines", "data"]),
       n=st.one_of(st.none(), st.integers(0, 5)), offset=st.integers(0, 3))
def test_request_files_raise_only_package_errors(recs, layout, n, offset):
    from lightning_edit.data import load_requests

    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), layout, recs)
        try:
            load_requests(str(path), n=n, offset=offset)
        except LightningEditError:
            pass


@SETTINGS
@given(record=st.dictionaries(st.sampled_from(REQUEST_FIELDS), st.one_of(TEXT, JSON, st.lists(PROBE, max_size=2)),
                              max_size=6))
def test_request_records_raise_only_package_errors(record):
    from lightning_edit.requests import EditRequest

    try:
        EditRequest.from_dict(record)
    except LightningEditError:
        pass


LIST_ARG = st.one_of(JSON, st.lists(st.one_of(TEXT, JSON), max_size=3))
PROBES_ARG = st.one_of(JSON, st.dictionaries(TEXT, st.fixed_dictionaries({"prompt": LIST_ARG, "ground_truth": LIST_ARG}),
                                             max_size=2))


@SETTINGS
@given(prompts=st.one_of(TEXT, st.lists(TEXT, max_size=3), JSON), target_new=LIST_ARG,
       subject=st.one_of(st.none(), LIST_ARG), ground_truth=st.one_of(st.none(), LIST_ARG),
       rephrase=st.one_of(st.none(), LIST_ARG), locality=st.one_of(st.none(), PROBES_ARG),
       portability=st.one_of(st.none(), PROBES_ARG))
def test_easyedit_request_lists_raise_only_package_errors(prompts, target_new, subject, ground_truth, rephrase,
                                                          locality, portability):
    from lightning_edit.requests import requests_from_lists

    try:
        requests_from_lists(prompts, target_new, subject, ground_truth, rephrase, locality, portability)
    except LightningEditError:
        pass


def _easyedit_keys(cls) -> list[str]:
    from lightning_edit.easyedit.keys import COMMON_KEYS

    return sorted({*COMMON_KEYS, *cls.KEYS, *(f.name for f in dataclasses.fields(cls))} - {"model_name"})


@st.composite
def easyedit_hparams(draw):
    from lightning_edit.easyedit.hparams import EASYEDIT_CLASSES

    cls = draw(st.sampled_from(EASYEDIT_CLASSES))
    keys = draw(st.lists(st.sampled_from(_easyedit_keys(cls) + ["alg_name", "no_such_key"]), max_size=6, unique=True))
    raw = {k: draw(st.one_of(SCALAR, JSON, st.lists(st.integers(-40, 40), max_size=4))) for k in keys}
    return cls, raw


@SETTINGS
@given(case=easyedit_hparams(), as_file=st.booleans())
def test_easyedit_hparams_raise_only_package_errors(case, as_file):
    cls, raw = case
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        try:
            if as_file:
                path = Path(tmp) / "hparams.yaml"
                path.write_text(yaml.safe_dump(raw), encoding="utf-8")
                cls.from_hparams(path)
            else:
                cls.from_easyedit_dict(raw)
        except LightningEditError:
            pass


@SETTINGS
@given(method=st.sampled_from(["rome", "memit", "ft-m", "grace", "wise", "mend", "serac", "ike", "kn", "t-patcher"]),
       data=st.data())
def test_native_hparams_from_dict_raise_only_package_errors(method, data):
    from lightning_edit.editors import get_editor_class

    hp = get_editor_class(method).HParams
    names = [f.name for f in dataclasses.fields(hp)]
    keys = data.draw(st.lists(st.sampled_from(names + ["no_such_key"]), max_size=5, unique=True))
    values = {k: data.draw(st.one_of(SCALAR, JSON, st.lists(st.integers(-40, 40), max_size=4))) for k in keys}
    try:
        hp.from_dict(values)
    except LightningEditError:
        pass
