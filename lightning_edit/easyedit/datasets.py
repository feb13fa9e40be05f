"""EasyEdit's dataset classes (``ZsreDataset``, ``CounterFactDataset``, ``KnowEditDataset``) over our data layer.

Each reads an EasyEdit data file through ``lightning_edit.data`` (each record parsed and converted once, by
``datasets``; nothing fetched) and serves EasyEdit's item dicts, the keys its example scripts read
(``data['prompt']``, ``data['portability_r']``, ...). ``requests`` holds the same records as our ``EditRequest``s;
``path`` and ``size`` say where they came from (``BaseEditor.edit(train_ds=...)`` hands them to IKE as its pool).
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Optional, Sequence, Union

from ..data import load_requests
from ..errors import ConfigError
from ..requests import EditRequest, PromptAnswer


class EasyEditDataset(abc.ABC):
    """A list of EasyEdit item dicts, indexable like EasyEdit's ``torch.utils.data.Dataset`` classes."""

    def __init__(self, data_dir: Union[str, Path], size: Optional[int] = None, config=None, *args, **kwargs):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ConfigError(f"{type(self).__name__}: size must be a whole number ≥ 0 or None, got {size!r}")
        self.path = Path(data_dir)
        if not self.path.is_file():
            raise ConfigError(f"{type(self).__name__}: {self.path} is not a file; give the path of the JSON data file "
                              "(EasyEdit's data_dir argument names the file itself)")
        self.size = size
        # EasyEdit drops unusable records (an empty 'alt') and then keeps the first `size`
        self.requests: list[EditRequest] = load_requests(str(self.path))[:size]
        self._data = [self.item(i, r) for i, r in enumerate(self.requests)]

    @abc.abstractmethod
    def item(self, index: int, request: EditRequest) -> dict:
        """EasyEdit's item dict of one request."""

    def __getitem__(self, index):
        return self._data[index]

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self):
        return iter(self._data)


def _first(probes: Sequence[PromptAnswer], kinds: Sequence[str]) -> tuple[Optional[str], Optional[str]]:
    for probe in probes:
        if probe.kind in kinds:
            return probe.prompt, probe.answer
    return None, None


class ZsreDataset(EasyEditDataset):
    """EasyEdit's ``ZsreDataset`` over a ZsRE file (``src``, ``alt``, ``rephrase``, ``loc``, ``loc_ans`` ...)."""

    def item(self, index: int, r: EditRequest) -> dict:
        loc, loc_ans = _first(r.locality, ("nq", "neighborhood"))
        return {"case_id": index, "prompt": r.prompt, "target_new": r.target_new, "ground_truth": r.target_true,
                "rephrase_prompt": r.rephrase_prompts[0] if r.rephrase_prompts else None,
                "locality_prompt": loc, "locality_ground_truth": loc_ans,
                "cond": f"{r.target_true} >> {r.target_new} || {r.prompt}", "subject": r.subject}


class CounterFactDataset(EasyEditDataset):
    """EasyEdit's ``CounterFactDataset`` over its CounterFact file (``prompt``, ``target_new``, ``locality_prompt``)."""

    def item(self, index: int, r: EditRequest) -> dict:
        loc, loc_ans = _first(r.locality, ("neighborhood", "nq"))
        return {"case_id": r.case_id, "prompt": r.prompt, "target_new": r.target_new, "ground_truth": r.target_true,
                "subject": r.subject, "rephrase_prompt": r.rephrase_prompts[0] if r.rephrase_prompts else None,
                "locality_prompt": loc, "locality_ground_truth": loc_ans}


def _probe_list(probes: Sequence[PromptAnswer], kind: str) -> Optional[list[dict]]:
    """KnowEdit's ``[{"prompt": ..., "ground_truth": ...}]`` of one kind; None where the record has none (EasyEdit)."""
    out = [{"prompt": p.prompt, "ground_truth": p.answer} for p in probes if p.kind == kind]
    return out or None


class KnowEditDataset(EasyEditDataset):
    """EasyEdit's ``KnowEditDataset`` over a KnowEdit file (wiki_counterfact, wiki_recent, zsre, WikiBio)."""

    def item(self, index: int, r: EditRequest) -> dict:
        return {"subject": r.subject, "prompt": r.prompt, "target_new": r.target_new, "ground_truth": r.target_true,
                "rephrase_prompt": r.rephrase_prompts[0] if r.rephrase_prompts else None,
                "portability_r": _probe_list(r.portability, "Reasoning"),
                "portability_s": _probe_list(r.portability, "Subject_Aliasing"),
                "portability_l": _probe_list(r.portability, "Logical_Generalization"),
                "locality_rs": _probe_list(r.locality, "Relation_Specificity"),
                "locality_f": _probe_list(r.locality, "Forgetfulness")}
