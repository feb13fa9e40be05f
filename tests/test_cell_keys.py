"""A study cell's records hash: a field added to the records later changes the hash only of records that use it, so
the committed cells of every other record keep verifying."""
from __future__ import annotations

import hashlib
import json

from lightning_edit import EditRequest, PromptAnswer
from lightning_edit.evaluation.study.cells import LATER_FIELDS, _as_json


def _request(**extra) -> EditRequest:
    return EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", target_true="French",
                       subject="Danielle Darrieux", locality=(PromptAnswer("The capital of Italy is", "Rome"),), **extra)


def _hash(items: list) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=_as_json).encode()).hexdigest()


def test_a_record_without_the_later_fields_hashes_as_before_they_existed():
    record = _request().to_dict()
    before = {k: v for k, v in record.items() if k not in LATER_FIELDS}  # the record as it was serialised then
    assert _hash([_request()]) == hashlib.sha256(json.dumps([before], sort_keys=True).encode()).hexdigest()


def test_a_record_that_uses_a_later_field_hashes_differently():
    assert _hash([_request(generation_prompts=("Danielle Darrieux often speaks",))]) != _hash([_request()])
    assert _hash([_request(relation_id="P103")]) != _hash([_request()])


def test_a_trained_editors_digest_is_the_same_before_and_after_it_loads(tmp_path):
    """A cell's key must not depend on whether an earlier cell of the method already loaded its trained editor (it
    did: the manifest's JSON before, the file's bytes after, so cells computed later in a run never verified)."""
    import json
    from types import SimpleNamespace

    from lightning_edit.evaluation.study.cells import checkpoint_digest

    (tmp_path / "manifest.json").write_text(json.dumps({"method": "malmen", "files": {"editor.safetensors": "ab"}}))
    before = SimpleNamespace(hparams=SimpleNamespace(editor_checkpoint=str(tmp_path)), checkpoint=None)
    loaded = SimpleNamespace(hparams=before.hparams, checkpoint=SimpleNamespace(
        directory=tmp_path, manifest=json.loads((tmp_path / "manifest.json").read_text())))
    assert checkpoint_digest(before) == checkpoint_digest(loaded) is not None
    assert checkpoint_digest(SimpleNamespace(hparams=SimpleNamespace(), checkpoint=None)) is None
