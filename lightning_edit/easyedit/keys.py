"""How each key of an EasyEdit hyperparameter file is read here: mapped onto a field of ours, refused with the fix,
or noted for the one ``EasyEditKeyWarning`` (``hparams.py`` applies these tables)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..editors.learned.malmen.settings import MALMENTraining
from ..errors import ConfigError
from ..models.registry import MODELS, resolve_model_name


class EasyEditKeyWarning(UserWarning):
    """Keys of an EasyEdit hyperparameter file that have no meaning here, or only an approximate one."""


# ---- model_name ------------------------------------------------------------------------------------------------
def resolve_easyedit_model_name(name: str) -> tuple[str, Optional[str]]:
    """Our model name for EasyEdit's ``model_name``, and a note when it was translated.

    In order: a registered name or alias (``smollm2-135m``, ``gpt2-xl``); an existing local directory (loaded by
    transformers as it is); the hub id of a registered model (``openai-community/gpt2-xl`` → ``gpt2-xl``); a path
    whose last part is a registered name (EasyEdit's ``./hugging_cache/gpt2-xl`` → ``gpt2-xl``, fetched from the hub
    cache like any registered model); any other ``org/name`` hub id, passed to transformers. Anything else is a
    ConfigError naming the choices."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model_name must be a model name, a hub id or a directory, got {name!r}")
    if resolve_model_name(name) in MODELS:
        return name, None
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), None
    by_hub = [spec.name for spec in MODELS.values() if spec.hub_id and spec.hub_id.lower() == name.lower()]
    if by_hub:
        return by_hub[0], f"model_name: {name!r}: the registered model {by_hub[0]!r}"
    last = name.rstrip("/").rsplit("/", 1)[-1]
    if "/" in name and resolve_model_name(last) in MODELS:
        return last, f"model_name: {name!r}: not a directory here: the registered model {last!r} of the same name"
    if re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", name):
        return name, None  # a hub id: transformers resolves it (hub or its local cache)
    raise ConfigError(
        f"model_name {name!r} is not a registered model ({', '.join(sorted(MODELS))}), not a directory here and not "
        "a hub id (org/name); set model_name to one of these, or to a local transformers directory")


# ---- key mapping -------------------------------------------------------------------------------------------------
@dataclass
class Mapped:
    """What reading one file produces: our field values, and notes for the one warning."""

    values: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


Handler = Callable[[str, Any, Mapped], None]


def rename(ours: str, convert: Callable[[Any], Any] = lambda v: v) -> Handler:
    def handle(key: str, value: Any, out: Mapped) -> None:
        out.values[ours] = convert(value)
    return handle


def no_meaning(why: str) -> Handler:
    def handle(key: str, value: Any, out: Mapped) -> None:
        out.notes.append(f"{key}: {value!r}: {why}")
    return handle


def accepted(ok_values: tuple, why: str, refuse: bool = False) -> Handler:
    """A key whose listed values are what we do anyway; another value is refused (``refuse``) or noted."""
    def handle(key: str, value: Any, out: Mapped) -> None:
        if value in ok_values:
            return
        if refuse:
            raise ConfigError(f"{key}: {value!r} is not supported: {why}; set {key}: {ok_values[0]!r}")
        out.notes.append(f"{key}: {value!r}: {why}")
    return handle


def _context_templates(key: str, value: Any, out: Mapped) -> None:
    """EasyEdit's [[length, count], ...] of generated context prefixes → our count and one length."""
    pairs = value if isinstance(value, list) else None
    if not pairs or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) and x >= 0 for x in p) for p in pairs):
        raise ConfigError(f"{key} must be a list of [length, count] pairs such as [[5, 10], [10, 10]], got {value!r}")
    out.values["context_prefixes"] = sum(count for _, count in pairs)
    out.values["context_length"] = max(length for length, _ in pairs) or 1
    if len({length for length, count in pairs if count}) > 1:
        out.notes.append(f"{key}: {value!r}: prefixes here have one length; using {out.values['context_prefixes']} "
                         f"prefixes of {out.values['context_length']} tokens")


def _mom2_samples(key: str, value: Any, out: Mapped) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a whole number ≥ 1, got {value!r}")
    out.values["_mom2_n_samples"] = value  # turned into tokens once stats_seq_len is known (see _finish)


def _inner_params(key: str, value: Any, out: Mapped) -> None:
    """GRACE/WISE's ``inner_params: [model.layers[27].mlp.down_proj.weight]`` → the block and a template to check."""
    items = value if isinstance(value, list) else [value]
    if len(items) != 1 or not isinstance(items[0], str):
        raise ConfigError(f"{key} must name exactly one weight, e.g. ['model.layers[27].mlp.down_proj.weight'], got {value!r}")
    path = re.sub(r"\[(\d+)\]", r".\1", items[0]).removesuffix(".weight")
    numbers = re.findall(r"\.(\d+)(?=\.)", path)
    if len(numbers) != 1:
        raise ConfigError(f"{key}: {items[0]!r} names no single block number")
    out.values["layer"] = int(numbers[0])
    out.values.setdefault("module_templates", {})[key] = re.sub(r"\.\d+(?=\.)", ".{}", path, count=1)


def _inner_params_layers(key: str, value: Any, out: Mapped) -> None:
    """MEND/MALMEN's ``inner_params: [transformer.h.46.mlp.c_proj.weight, ...]`` → ``layers`` (the blocks, in order)
    and one template, checked against the model once it is loaded: every weight must be the same projection."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(x, str) for x in items):
        raise ConfigError(f"{key} must list weights, e.g. ['model.layers.29.mlp.down_proj.weight'], got {value!r}")
    paths = [re.sub(r"\[(\d+)\]", r".\1", x).removesuffix(".weight") for x in items]
    numbers = [re.findall(r"\.(\d+)(?=\.)", p) for p in paths]
    for item, found in zip(items, numbers):
        if len(found) != 1:
            raise ConfigError(f"{key}: {item!r} names no single block number")
    templates = {re.sub(r"\.\d+(?=\.)", ".{}", p, count=1) for p in paths}
    if len(templates) != 1:
        raise ConfigError(f"{key}: the weights are different projections ({sorted(templates)}); the MLP output "
                          "projection of each listed block is what is edited here")
    out.values["layers"] = [int(n[0]) for n in numbers]
    out.values.setdefault("module_templates", {})[key] = templates.pop()


def training_key(ours: str, training: type) -> Handler:
    """A key of EasyEdit's training file that is a setting of ``train.py`` here (the ``training:`` section), typed
    and checked by the method's training settings (YAML reads ``1e-5`` as text)."""
    def handle(key: str, value: Any, out: Mapped) -> None:
        typed = getattr(training.from_dict({ours: value}, source=f"EasyEdit key {key}"), ours)
        out.values.setdefault("training", {})[ours] = typed
        out.notes.append(f"{key}: {value!r}: training.{ours} for `python train.py` (no effect on editing)")
    return handle


def _token(key: str, value: Any, out: Mapped) -> None:
    """MALMEN's ``token``: keys at the answer tokens (``ans``) or at every attended token (``mask``)."""
    choices = {"ans": "target", "mask": "all"}
    if value not in choices:
        raise ConfigError(f"{key} must be 'ans' (keys at the target tokens) or 'mask' (every token), got {value!r}")
    out.values["key_positions"] = choices[value]


def _template(key: str, value: Any, out: Mapped) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a module path such as 'model.layers.{{}}.mlp.down_proj', got {value!r}")
    out.values.setdefault("module_templates", {})[key] = value.removesuffix(".weight")


def _objective(key: str, value: Any, out: Mapped) -> None:
    """FT's ``objective_optimization``: EasyEdit's names (``target_new``, ``prompt_last``) or ours, as a string."""
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be 'target_new' (FT-M) or 'prompt_last' (FT-L), got {value!r}")
    out.values["objective"] = {"target_new": "target_tokens"}.get(value, value)


def _act_margin(key: str, value: Any, out: Mapped) -> None:
    """WISE's ``act_margin: [alpha, beta, gamma]``: exactly three numbers (a shorter list is not cut to fit)."""
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
        raise ConfigError(f"{key} must be a list of three numbers [alpha, beta, gamma], e.g. [5.0, 20.0, 10.0], "
                          f"got {value!r}")
    out.values.update(zip(("alpha", "beta", "gamma"), value))


COMMON_KEYS: dict[str, Handler] = {
    "model_parallel": accepted((False, None), "one device here (no model parallelism); the model loads on `device`"),
    "max_length": no_meaning("prompts are not truncated here; prompts longer than the model's context are refused"),
    **{k: _template for k in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp",
                              "ln_f_module", "lm_head_module")},
}

LOCATE_KEYS: dict[str, Handler] = {
    "fact_token": accepted(("subject_last",), "keys are read at the subject's last token only", refuse=True),
    "layer_selection": accepted(("all",), "every layer in `layers` is edited", refuse=True),
    "context_template_length_params": _context_templates,
    "mom2_n_samples": _mom2_samples,
    "mom2_dataset": accepted(("wikitext", "wikitext-2", "wikitext2"), "statistics come from the WikiText-2 test "
                             "excerpt shipped with lightning-edit (set stats_text to a text file to use another)"),
    "mom2_dtype": accepted(("float32",), "statistics are summed in float64 and stored in float32 here"),
    "P_loc": no_meaning("the null-space projection is computed from the cached statistics and kept in memory"),
    "L2": no_meaning("AlphaEdit here has no extra L2 term beyond mom2_update_weight"),
}

# MEMIT and AlphaEdit always weight their update by the key statistics (ROME has the switch as a field).
ALWAYS_MOM2_KEYS: dict[str, Handler] = {
    **LOCATE_KEYS,
    "mom2_adjustment": accepted((True,), "this method always weights its update by the key statistics", refuse=True),
}

R_ROME_KEYS: dict[str, Handler] = {
    **LOCATE_KEYS,
    "enable_random_prefix_keys": accepted((True,), "r-ROME's key here is the one averaged over the context prefixes",
                                          refuse=True),
    "enable_prompt_keys": accepted((False,), "r-ROME's key here is the one averaged over the context prefixes, not "
                                   "the prompt's", refuse=True),
    "original_implementation": accepted((False,), "ROME's original update is the method rome (ROMEHyperParams)",
                                        refuse=True),
}


def _pmet_rewrite_modules(key: str, value: Any, out: Mapped) -> None:
    """PMET's ``rewrite_module_tmps``: here the FFN output projection only (the paper's choice, and its files')."""
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], str):
        raise ConfigError(f"{key}: {value!r}: PMET here updates the FFN output projection only; set {key} to a list "
                          "of that one template, e.g. ['model.layers.{}.mlp.down_proj']")
    out.values.setdefault("module_templates", {})[key] = value[0].removesuffix(".weight")


PMET_KEYS: dict[str, Handler] = {
    **ALWAYS_MOM2_KEYS,
    "rewrite_module_tmps": _pmet_rewrite_modules,
    "nll_loss_factor": no_meaning("the new-object NLL has weight 1 here; PMET's code also weighs it 0.1 while the "
                                  "target is already each position's most likely token, which is not done here"),
}

FT_KEYS: dict[str, Handler] = {
    "objective_optimization": _objective,
    "norm_constraint": rename("norm_constraint", lambda v: None if v is False else v),
    "kl_factor": accepted((0, 0.0), "fine-tuning here has no KL term"),
}

KN_KEYS: dict[str, Handler] = {
    "refine": rename("use_rephrases"),
    "p": rename("refine_fraction"),
    "lr_scale": no_meaning("the edit's size is edit_scale (a multiple of the target's output embedding) here"),
    "n_toks": no_meaning("every token of target_new is edited (cap with max_target_tokens)"),
    "batch_size": no_meaning("integrated gradients run rows_per_pass scaled copies per pass here"),
}

GRACE_KEYS: dict[str, Handler] = {
    "inner_params": _inner_params, "edit_lr": rename("lr"), "n_iter": rename("num_steps"),
    "eps": rename("epsilon_init"), "val_init": rename("value_init"),
    "dist_fn": accepted(("euc",), "the codebook's distance is Euclidean here"),
    "replacement": accepted(("replace_prompt",), "the codebook value replaces the FFN output over the prompt here"),
    "eps_expand": accepted(("coverage",), "deferral radii grow by coverage here"),
    "val_train": accepted(("sgd",), "values are trained by gradient steps here"),
    "reg": accepted(("early_stop",), "training stops early at early_stop_loss here"),
    **{k: no_meaning("not used by GRACE here") for k in ("val_reg", "num_pert", "dropout")},
}

WISE_KEYS: dict[str, Handler] = {
    "inner_params": _inner_params, "edit_lr": rename("lr"), "n_iter": rename("num_steps"),
    "act_margin": _act_margin,
    "save_freq": rename("shard_size"), "densities": rename("merge_density"),
    "merge_alg": accepted(("ties",), "shards are merged with TIES here"),
    **{k: no_meaning("not used by WISE here") for k in ("merge_freq", "weights", "retrieve", "replay", "objective_optimization")},
}


def _sentence_model_name(key: str, value: Any, out: Mapped) -> None:
    """IKE's sentence encoder: EasyEdit's all-MiniLM-L6-v2 is our registered default; another one is noted."""
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a sentence model's name or folder, got {value!r}")
    out.values["sentence_model_name"] = value
    if value.rstrip("/").rsplit("/", 1)[-1].lower() != "all-minilm-l6-v2":
        out.notes.append(f"{key}: {value!r}: demonstrations are embedded with the registered encoder named by "
                         "sentence_model here (all-MiniLM-L6-v2); set sentence_model to a local model folder for "
                         "another")


IKE_KEYS: dict[str, Handler] = {
    "sentence_model_name": _sentence_model_name,
    "results_dir": no_meaning("the pool's embeddings are cached as safetensors under the cache directory here"),
}


# MALMEN: the network's keys map by name (rank, n_blocks); its training keys go to the training: section.
MALMEN_KEYS: dict[str, Handler] = {
    "archive": rename("editor_checkpoint"), "inner_params": _inner_params_layers, "lr": rename("edit_lr_init"),
    "token": _token, **{key: training_key(ours, MALMENTraining) for key, ours in (
        ("meta_lr", "lr"), ("loc_coef", "c_loc"), ("max_grad_norm", "gradient_clip_val"), ("max_iters", "max_steps"),
        ("n_edits", "batch_size"))},
    "editor_batch_size": no_meaning("every key of an edit goes through the hypernetwork at once here"),
}


def _ultraedit_inner_params(key: str, value: Any, out: Mapped) -> None:
    """UltraEdit's ``inner_params: [model.layers.11.mlp.gate_proj, ...]`` → ``modules: {mlp.gate_proj: [11, ...]}``
    (the module's path inside its block, checked against the model when the editor runs)."""
    items = value if isinstance(value, list) else None
    if not items or not all(isinstance(x, str) for x in items):
        raise ConfigError(f"{key} must list module paths such as ['model.layers.18.mlp.up_proj'], got {value!r}")
    modules: dict[str, list[int]] = {}
    for item in items:
        path = re.sub(r"\[(\d+)\]", r".\1", item).removesuffix(".weight")
        found = re.fullmatch(r"[\w.]*?\.(\d+)\.([A-Za-z_][\w.]*)", path)
        if not found:
            raise ConfigError(f"{key}: {item!r} names no module inside a numbered block "
                              "(e.g. model.layers.18.mlp.up_proj)")
        modules.setdefault(found.group(2), []).append(int(found.group(1)))
    out.values["modules"] = modules


def _ultraedit_token(key: str, value: Any, out: Mapped) -> None:
    positions = {"mask": "all", "ans": "target"}
    if value not in positions:
        raise ConfigError(f"{key} must be 'mask' (every prompt and target token) or 'ans' (target tokens), "
                          f"got {value!r}")
    out.values["positions"] = positions[value]


ULTRAEDIT_KEYS: dict[str, Handler] = {
    "inner_params": _ultraedit_inner_params, "token": _ultraedit_token,
    "batch_size_once": rename("forward_batch_size"), "half": rename("fp16"),
    "editor_batch_size": no_meaning("speed only: every token of a turn is normalised at once here"),
    "dropout": accepted((0, 0.0, None), "UltraEdit here applies no dropout"),
    "no_grad_layers": accepted((None,), "gradients are taken at the edited modules' outputs only here"),
}

LORA_KEYS: dict[str, Handler] = {
    "lora_type": accepted(("lora",), "AdaLoRA's rank allocation is not implemented here, only LoRA", refuse=True),
    "batch_size": rename("train_batch_size"),
    "kl_factor": accepted((0, 0.0), "LoRA here has no KL term"),
    "norm_constraint": accepted((False, None, 0), "LoRA here bounds no norm of the adapter"),
}
