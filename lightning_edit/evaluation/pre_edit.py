"""Pre-edit scores and generations: they depend only on the model and the request, so they are computed once,
batched over every request not yet known, and kept on disk for later methods, runs and study cells.

An entry is one request's teacher-forced scores (every slot of ``RequestScores``) and, when asked for, its greedy
continuations. Its file name is a hash of everything the values depend on: every weight and buffer (all bytes,
not a sample), the model's config, dtype and device type, torch and transformers versions, the token ids of each
scored (prompt, target) pair and of each generation prompt, and the number of generated tokens. An entry is
written atomically (per-process temporary name, then ``os.replace``) and checked when read (slots and target ids as
expected, finite log-probabilities); one that fails is recomputed and rewritten. A model carrying forward hooks or
an in-context editor's prompt context is not cached: its outputs are not a function of its weights alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Callable, ContextManager, Optional, Sequence, Union

import torch

from ..models.placement import real_state
from ..models.loading import LoadedModel
from ..models.teacher_forcing import TargetScore, prompt_ids, target_ids
from ..paths import default_cache_root
from ..requests import EditRequest
from .measure import RequestScores, fluency_prompts, generate_greedy, measure, scored_pairs

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what an entry holds, or how values are computed, changes
SLOTS = tuple(f.name for f in fields(RequestScores))
SCORE_FIELDS = ("target_ids", "predicted_ids", "token_logprobs")


def model_fingerprint(loaded: LoadedModel) -> str:
    """SHA-256 of every state-dict tensor (name, dtype, shape, bytes), the config and the library versions."""
    import transformers

    digest = hashlib.sha256()
    for name, tensor in sorted(real_state(loaded.model).items()):  # offloaded tensors (--device-map) read where they live
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    digest.update(loaded.model.config.to_json_string(use_diff=False).encode())
    digest.update(f"{loaded.device.type}|{torch.__version__}|{transformers.__version__}|{FORMAT}".encode())
    return digest.hexdigest()


def default_pre_cache(cache_dir: Union[str, Path, None] = None) -> "PreEditCache":
    """``pre_edit/`` under ``cache_dir``, else under the cache root (``$LIGHTNING_EDIT_CACHE``, ``checkpoints/``...)."""
    return PreEditCache(Path(cache_dir or default_cache_root()) / "pre_edit")


class PreEditCache:
    """Pre-edit results on disk under ``root`` (e.g. ``<cache root>/pre_edit``). Holds no values in memory:
    pass one to ``evaluate_editing`` (or build one per run) to reuse what earlier runs computed."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str, request: EditRequest, expected_ids: list[list[int]],
             n_generations: int) -> Optional[tuple[RequestScores, list[str]]]:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return _read_entry(path, key, request, expected_ids, n_generations)
        except Exception as err:  # a torn, foreign or corrupt file is recomputed, never trusted
            log.warning("pre-edit cache entry %s is unusable (%s); recomputing it", path, err)
            return None

    def save(self, key: str, scores: RequestScores, generations: list[str]) -> None:
        from safetensors.torch import save_file

        tensors = {f"{slot}/{j}/{name}": getattr(s, name).contiguous()
                   for slot in SLOTS for j, s in enumerate(getattr(scores, slot)) for name in SCORE_FIELDS}
        counts = {slot: len(getattr(scores, slot)) for slot in SLOTS}
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            save_file(tensors, str(tmp), metadata={"key": key, "counts": json.dumps(counts),
                                                   "generations": json.dumps(generations)})
            os.replace(tmp, path)  # readers see the whole entry or none
        except OSError as err:  # a read-only or full cache slows later runs down; it does not fail this one
            log.warning("pre-edit cache: cannot write %s (%s)", path, err)
            tmp.unlink(missing_ok=True)


def _read_entry(path: Path, key: str, request: EditRequest, expected_ids: list[list[int]],
                n_generations: int) -> tuple[RequestScores, list[str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("key") != key:
            raise ValueError("its key does not match its name")
        counts, generations = json.loads(meta["counts"]), json.loads(meta["generations"])
        scores = RequestScores()
        for slot in SLOTS:
            for j in range(int(counts.get(slot, 0))):
                getattr(scores, slot).append(TargetScore(**{name: f.get_tensor(f"{slot}/{j}/{name}") for name in SCORE_FIELDS}))
    pairs = scored_pairs(request)
    if [len(getattr(scores, slot)) for slot in SLOTS] != [sum(p[2] == slot for p in pairs) for slot in SLOTS]:
        raise ValueError("its slots do not match the request's prompts")
    position = {slot: 0 for slot in SLOTS}
    for (_, _, slot), ids in zip(pairs, expected_ids):
        s = getattr(scores, slot)[position[slot]]
        position[slot] += 1
        if s.target_ids.tolist() != ids or s.predicted_ids.shape != s.target_ids.shape \
                or s.token_logprobs.shape != s.target_ids.shape or not bool(torch.isfinite(s.token_logprobs).all()):
            raise ValueError(f"a {slot} score has the wrong target tokens, shape or non-finite log-probabilities")
    if not isinstance(generations, list) or len(generations) != n_generations or not all(isinstance(g, str) for g in generations):
        raise ValueError(f"it holds {len(generations)} generations, {n_generations} expected")
    return scores, generations


def _request_key(fingerprint: str, loaded: LoadedModel, request: EditRequest, gen_tokens: int,
                 score_ids: list[list[int]]) -> str:
    tok = loaded.tokenizer
    content = {"model": fingerprint, "pairs": [[prompt_ids(tok, p), ids] for (p, _, _), ids in zip(scored_pairs(request), score_ids)],
               "generate": gen_tokens, "gen_prompts": [tok(p)["input_ids"] for p in fluency_prompts(request)] if gen_tokens else []}
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


def pre_edit_results(loaded: LoadedModel, requests: Sequence[EditRequest], gen_tokens: int,
                     cache: Optional[PreEditCache], timer: Callable[[str], ContextManager]) -> tuple[list[RequestScores], list[list[str]]]:
    """Pre-edit scores and generations (empty lists when ``gen_tokens`` is 0) of every request: those in
    ``cache`` read back, the rest computed in one batched scoring pass and one batched generation run, then
    stored. ``timer(phase)`` times the scoring and generation phases (cache look-ups count as scoring)."""
    keys: list[Optional[str]] = [None] * len(requests)
    expected: list[list[list[int]]] = [[] for _ in requests]
    found: list[Optional[tuple[RequestScores, list[str]]]] = [None] * len(requests)
    with timer("scoring"):
        if cache is not None and loaded.computes_from_weights_alone:
            fingerprint = model_fingerprint(loaded)
            for i, r in enumerate(requests):
                expected[i] = [target_ids(loaded.tokenizer, t) for _, t, _ in scored_pairs(r)]
                keys[i] = _request_key(fingerprint, loaded, r, gen_tokens, expected[i])
                found[i] = cache.load(keys[i], r, expected[i], len(fluency_prompts(r)) if gen_tokens else 0)
        missing = [i for i, f in enumerate(found) if f is None]
        computed = measure(loaded, [requests[i] for i in missing]) if missing else []
    gens: list[str] = []
    if gen_tokens and missing:
        with timer("generation"):
            gens = generate_greedy(loaded, [p for i in missing for p in fluency_prompts(requests[i])], gen_tokens)
    pos = 0
    for i, scores in zip(missing, computed):
        k = len(fluency_prompts(requests[i])) if gen_tokens else 0
        found[i] = (scores, gens[pos: pos + k])
        pos += k
        if keys[i] is not None:
            cache.save(keys[i], *found[i])  # type: ignore[union-attr]  # keys are set only with a cache
    return [f[0] for f in found], [f[1] for f in found]  # type: ignore[index]  # every slot filled
