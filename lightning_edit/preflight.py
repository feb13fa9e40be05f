"""One preflight for every front door: ``edit.py`` (and ``--multihop``), ``study``, ``ask``, ``trace``, ``train.py``
and the Python faces (``api.BaseEditor``, ``easyedit.BaseEditor``) make the same checks, in this order, before any
model is loaded:

1. ``check_environment``: the device exists here and the dtype is one a model loads in;
2. ``check_model_source``: the model is a registered name, a hub id (``owner/name``), or a local folder whose
   ``config.json`` is a JSON object with a plain ``model_type``; a folder written by ``--save`` has its manifest
   verified now (every file hashed), before anything named in it is downloaded or read;
3. ``check_method``: the method exists, its hyperparameters merge and type-check (``configs/<method>/`` ← ``--set``),
   a trained editor named by ``--editor`` exists, the statistics text is a file;
4. once the tokenizer is there (loading it is the first thing that needs the model), ``check_requests``: no
   control-token text in a request, no prompt longer than the model's context.

A failed check is a ``LightningEditError`` naming the flag or field and the fix; nothing has loaded by then.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence, Type

from .errors import ConfigError, DataError
from .models.checks import (HUB_MODEL_ID, check_device, check_environment, check_model_source,  # noqa: F401
                            unavailable_reason)


def check_method(method: str, model: str, overrides: Optional[dict] = None, editor: Optional[str] = None,
                 editor_flag: str = "--editor", family: Optional[str] = None) -> tuple[Type, Any, dict]:
    """The editor class, its merged and type-checked hyperparameters for ``model`` (of ``family``: by default
    what the model's name or folder tells), and the overrides (with ``editor_checkpoint`` from ``editor``). Hub
    editors are fetched now: offline, a one-line error."""
    from .checkpoints import is_hub_id, resolve_editor_dir
    from .editors import get_editor_class
    from .models.registry import family_of, resolve_model_name

    cls = get_editor_class(method)
    overrides = dict(overrides or {})
    takes_editor = "editor_checkpoint" in {f.name for f in dataclasses.fields(cls.HParams)}
    if editor and not takes_editor:
        raise ConfigError(f"{editor_flag} is for the methods that learn (mend, malmen, ke, serac); {method} takes no trained editor")
    if editor:
        if not Path(editor).exists() and not is_hub_id(editor):
            raise ConfigError(f"{editor_flag} {editor}: no such checkpoint folder; train one with "
                              f"'python train.py {method} {model}' or give its path (or a hub id user/repo)")
        overrides["editor_checkpoint"] = editor
    family = family if family is not None else family_of(model)
    hparams = cls.HParams.for_model(method, resolve_model_name(model), family, overrides)
    if editor and is_hub_id(editor):
        resolve_editor_dir(editor)
    _check_stats_text(getattr(hparams, "stats_text", None))
    return cls, hparams, overrides


def check_study(config: Any, device: str) -> None:
    """A study (``edit.py study``): the device, its model, and every method with its hyperparameters, as
    ``edit.py`` checks one run, before the first cell loads anything. A trained editor that is not there is left
    to the study, which reports that method as skipped (a study runs the methods it can)."""
    from .checkpoints import is_hub_id

    check_environment(device)
    check_model_source(config.model, flag="model (of the study)")
    for method in config.methods:
        editor = config.editor_checkpoints.get(method)
        present = editor is not None and (Path(editor).exists() or is_hub_id(editor))
        check_method(method, config.model, config.overrides.get(method, {}), editor if present else None,
                     editor_flag=f"editor_checkpoints.{method}")


def _check_stats_text(stats_text: Optional[str]) -> None:
    from .data.text import resolve_text_source

    # an hf://datasets/... text is fetched now: offline, a one-line error before the model loads
    if stats_text and not resolve_text_source(stats_text).is_file():
        raise DataError(f"field 'stats_text' names {stats_text}, which is not a file; leave it unset for the text shipped "
                        "with the package, or fetch WikiText-2 with 'python edit.py data get wikitext'")


def check_requests(requests: Sequence[Any], loaded: Any) -> None:
    """What needs the tokenizer: control-token text in a request, prompts longer than the model's context."""
    from .models.request_checks import check_context_length, check_special_tokens

    check_special_tokens(requests, loaded.tokenizer)
    check_context_length(requests, loaded)


def check_prompts(prompts: Sequence[str], loaded: Any, new_tokens: int, flag: str = "PROMPT") -> None:
    """Prompts to answer (``ask``): no control-token text, and prompt + ``new_tokens`` within the context."""
    from .errors import RequestError
    from .models.request_checks import _special_tokens, context_length
    from .models.teacher_forcing import prompt_ids

    specials = _special_tokens(loaded.tokenizer)
    limit = context_length(getattr(loaded.model, "config", None))
    for prompt in prompts:
        token = next((t for t in specials if t in prompt), None)
        if token is not None:
            raise RequestError(f"{flag} {prompt[:80]!r} contains {token!r}, which the tokenizer of {loaded.name} reads as "
                               "one special (control) token, not as text; spell it differently")
        n = len(prompt_ids(loaded.tokenizer, prompt)) + new_tokens
        if limit is not None and n > limit:
            raise RequestError(f"{flag} {prompt[:40]!r}... is {n - new_tokens} tokens; with --max-new-tokens {new_tokens} "
                               f"that is more than the {limit} positions {loaded.name} reads; shorten it")
