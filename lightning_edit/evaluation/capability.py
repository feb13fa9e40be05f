"""General capability of a (possibly edited) model, beside its edit metrics.

Edits can wreck a model's perplexity and downstream accuracy long before reliability or locality notice (Gu et al.
2024, "Model Editing Harms General Abilities of Large Language Models", arXiv:2401.04700; Gupta et al. 2024,
"Model Editing at Scale leads to Gradual and Catastrophic Forgetting", arXiv:2401.07453). ``capability_scores``
measures the model as it is now, patches attached:

* ``local-perplexity``: perplexity on text held out from the key statistics (the end of the WikiText-2 test split
  shipped with the package, ``paths.HELDOUT_TEXT_PATH``), in non-overlapping windows; lower is better;
* ``known-facts``: the share of ROME's known facts (``data get known_1000``) whose attribute the model completes
  greedily after the prompt (teacher-forced exact match; a prompt-rewriting patch's context included);
* any other name: an lm-evaluation-harness task (MMLU, ARC, HellaSwag, or a task YAML under ``include_path``), run
  through lm-eval's ``HFLM`` on the model object itself, so every hook a patch hangs on it is in the forward pass.

``CapabilityCurve`` is the hook a sequential run calls every K edits (``on_edits(n_done, loaded)``): the scores
after 0, K, 2K, ... edits and the number of edits at which a score first fell by 5%.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ..errors import ConfigError, DataError
from ..models import LoadedModel
from ..models.teacher_forcing import score_targets
from ..paths import HELDOUT_TEXT_PATH

PERPLEXITY_TASK = "local-perplexity"
FACTS_TASK = "known-facts"
LOCAL_TASKS = {PERPLEXITY_TASK: "perplexity on held-out WikiText-2 test text (lower is better)",
               FACTS_TASK: "greedy exact match of the attribute of ROME's known facts (known_1000)"}
DEFAULT_TASKS = (PERPLEXITY_TASK, FACTS_TASK)
LM_EVAL_INSTALL = "pip install lm-eval (or pip install 'lightning-edit[capability]')"
DROP = 0.05  # "capability fell": a score 5% worse than before the first edit


def parse_tasks(text: str, flag: str = "--tasks") -> list[str]:
    """Comma-separated task names, in order, without repeats; refused when it names none."""
    tasks = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not tasks:
        raise ConfigError(f"{flag} names no task; give e.g. {flag} {','.join(DEFAULT_TASKS)} (local, offline) or an "
                          "lm-eval task such as arc_easy")
    return tasks


def check_tasks(tasks: Sequence[str], include_path: Optional[str] = None, data_dir: Optional[str] = None,
                flag: str = "--tasks") -> None:
    """Everything the tasks need, checked before a model loads: lm-eval for a task that is not local, the
    ``include_path`` folder, and the known facts on disk."""
    harness = [t for t in tasks if t not in LOCAL_TASKS]
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path} is not a folder; give the folder holding your lm-eval "
                          "task YAMLs")
    if harness:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise ConfigError(f"{flag} {','.join(harness)}: lm-evaluation-harness tasks need the lm-eval package, "
                              f"which is not installed: {LM_EVAL_INSTALL}. The local tasks "
                              f"{', '.join(LOCAL_TASKS)} run without it") from None
    if FACTS_TASK in tasks:
        _known_facts(data_dir, limit=1)


def capability_scores(loaded: LoadedModel, tasks: Sequence[str], limit: Optional[int] = None,
                      data_dir: Optional[str] = None, include_path: Optional[str] = None, batch_size: int = 8,
                      window: int = 256) -> dict[str, float]:
    """Each task's score on ``loaded`` as it is now (patches attached): ``{task: value}``; an lm-eval task gives
    ``task/metric`` keys (``arc_easy/acc``). ``limit``: windows of ``window`` tokens for the perplexity, facts
    for the recall, documents per lm-eval task."""
    scores: dict[str, float] = {}
    if PERPLEXITY_TASK in tasks:
        scores[PERPLEXITY_TASK] = heldout_perplexity(loaded, limit=limit, window=window, batch_size=batch_size)
    if FACTS_TASK in tasks:
        scores[FACTS_TASK] = known_facts_recall(loaded, _known_facts(data_dir, limit), batch_size=batch_size)
    harness = [t for t in tasks if t not in LOCAL_TASKS]
    if harness:
        scores.update(lm_eval_scores(loaded, harness, limit=limit, include_path=include_path, batch_size=batch_size))
    return scores


@torch.no_grad()
def heldout_perplexity(loaded: LoadedModel, limit: Optional[int] = None, window: int = 256, batch_size: int = 8,
                       text_path: Union[str, Path] = HELDOUT_TEXT_PATH) -> float:
    """exp(mean next-token NLL) over the first ``limit`` non-overlapping ``window``-token windows of the text."""
    from torchmetrics.text import Perplexity

    if getattr(loaded.model.config, "is_encoder_decoder", False):
        raise ConfigError(f"{PERPLEXITY_TASK}: {loaded.name} is an encoder-decoder model; perplexity of running text "
                          "is measured on decoder-only models (use known-facts or an lm-eval task)")
    ids = loaded.tokenizer(Path(text_path).read_text(encoding="utf-8"))["input_ids"]
    windows = [ids[i: i + window] for i in range(0, len(ids) - window + 1, window)][:limit]
    if not windows:
        raise ConfigError(f"{PERPLEXITY_TASK}: --window {window} is longer than the held-out text ({len(ids)} tokens); "
                          "give a smaller --window")
    metric = Perplexity()
    for start in range(0, len(windows), batch_size):
        batch = torch.tensor(windows[start: start + batch_size], device=loaded.device)
        logits = loaded.model(input_ids=batch).logits.float()
        metric.update(logits[:, :-1].cpu(), batch[:, 1:].cpu())
    return float(metric.compute())


def known_facts_recall(loaded: LoadedModel, facts: Sequence[Any], batch_size: int = 8) -> float:
    """The share of facts whose whole attribute the model produces greedily after the prompt."""
    scores = score_targets(loaded, [f.prompt for f in facts], [f.target_true for f in facts], batch_size=batch_size)
    return sum(s.exact_match for s in scores) / len(scores)


def _known_facts(data_dir: Optional[str], limit: Optional[int]) -> list:
    from ..data import load_requests

    try:
        facts = load_requests("known_1000", n=limit, data_dir=data_dir)
    except DataError as err:
        raise DataError(f"{FACTS_TASK} needs ROME's known facts: run 'lightning-edit data get known_1000' "
                        f"(or leave {FACTS_TASK} out of --tasks). {err}") from None
    if not facts:
        raise DataError(f"{FACTS_TASK}: the known_1000 file holds no fact; fetch it again with "
                        "'lightning-edit data get known_1000'")
    return facts


def lm_eval_scores(loaded: LoadedModel, tasks: Sequence[str], limit: Optional[int] = None,
                   include_path: Optional[str] = None, batch_size: int = 8) -> dict[str, float]:
    """lm-evaluation-harness tasks on the model object (its hooks run inside HFLM's forward passes)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if loaded.patches.rewrites_prompts:
        raise ConfigError(f"{', '.join(tasks)}: {loaded.name} carries a patch that rewrites prompts (an in-context "
                          "editor); lm-eval builds its own prompts and would skip it. Use the local tasks")
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, device=str(loaded.device))
    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=_task_manager(tasks, include_path),
                              limit=limit, log_samples=False, verbosity="ERROR")["results"]
    return {f"{task}/{key.split(',')[0]}": float(value) for task, metrics in results.items()
            for key, value in metrics.items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float))}  # "acc,none": metric,filter


def _task_manager(tasks: Sequence[str], include_path: Optional[str]):
    """lm-eval's task index: the user's folder alone when it defines every task named (indexing lm-eval's own
    thousands of task files takes a while), else theirs and lm-eval's."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        own = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in own.all_tasks for t in tasks):
            return own
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"--tasks {','.join(unknown)}: no such lm-eval task (nor a local one: "
                          f"{', '.join(LOCAL_TASKS)}); 'lm-eval ls tasks' lists lm-eval's, --include-path FOLDER "
                          "adds your own task YAMLs")
    return manager


def relative_change(task: str, before: float, after: float) -> float:
    """How much worse ``after`` is than ``before``, as a fraction (positive = worse): perplexity rising, a score
    falling."""
    if not before or math.isnan(before) or math.isnan(after):
        return float("nan")
    change = (after - before) / abs(before)
    return change if task == PERPLEXITY_TASK else -change


class CapabilityCurve:
    """Capability every ``every`` edits of a sequential run: ``on_edits(n_done, loaded)`` scores the model after
    0 edits (before the first), then whenever ``n_done`` reaches the next multiple of ``every``, and after the last."""

    def __init__(self, tasks: Sequence[str], every: int, **score_options: Any) -> None:
        if every < 1:
            raise ConfigError(f"--capability-every must be a positive number of edits, got {every}")
        self.tasks, self.every, self.options = list(tasks), every, score_options
        self.points: list[tuple[int, dict[str, float]]] = []

    def on_edits(self, n_done: int, loaded: LoadedModel, last: bool = False) -> None:
        due = not self.points or n_done // self.every > self.points[-1][0] // self.every or last
        if due and (not self.points or self.points[-1][0] != n_done):
            self.points.append((n_done, capability_scores(loaded, self.tasks, **self.options)))

    def identity(self) -> dict:
        """What a checkpoint of a run with this curve must share with the run that resumes it."""
        return {"tasks": self.tasks, "every": self.every,
                "options": {k: v for k, v in sorted(self.options.items()) if k != "data_dir"}}

    def restore(self, points: Sequence[Sequence]) -> None:
        """The points of a checkpoint (``[edits, scores]`` pairs), put back when a run resumes it."""
        self.points = [(int(n), dict(scores)) for n, scores in points]

    def first_drop(self, threshold: float = DROP) -> dict[str, Optional[int]]:
        """Per score: the number of edits after which it was first ``threshold`` worse than before any edit."""
        if not self.points:
            return {}
        base = self.points[0][1]
        return {key: next((n for n, s in self.points[1:]
                           if relative_change(key, base[key], s.get(key, math.nan)) >= threshold), None)
                for key in base}

    def to_json(self) -> dict:
        return {"every": self.every, "tasks": self.tasks, "threshold": DROP,
                "points": [{"edits": n, **scores} for n, scores in self.points], "first_drop_at": self.first_drop()}

    def summary(self) -> str:
        """A table of the scores after each number of edits, then when each first fell by 5%."""
        if not self.points:
            return "capability: not measured"
        keys = list(self.points[0][1])
        lines = [f"{'edits':>6}" + "".join(f"  {k:>18}" for k in keys)]
        lines += [f"{n:>6}" + "".join(f"  {s.get(k, math.nan):>18.4f}" for k in keys) for n, s in self.points]
        last = self.points[-1][0]
        for key, n in self.first_drop().items():
            lines.append(f"{key}: " + (f"first fell by {DROP:.0%} at {n} edits" if n is not None
                                       else f"did not fall by {DROP:.0%} within {last} edits"))
        return "\n".join(lines)
