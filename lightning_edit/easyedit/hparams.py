"""EasyEdit's hyperparameter classes, under EasyEdit's names, over ours.

``ROMEHyperParams.from_hparams("hparams/ROME/gpt2-xl.yaml")`` reads an EasyEdit YAML file: each key is either
mapped onto a field of our method's hyperparameters (same name, or renamed: ``edit_lr`` → ``lr``), kept for the
editor (``device``, ``fp16``, ``batch_size``, the module templates, ``v_loss_layer``), refused with the fix where
the file asks for something we do not do (``fact_token: subject_first``), or listed, once, in an
``EasyEditKeyWarning`` with what it means here. Nothing is dropped silently.

Module templates (``rewrite_module_tmp`` ...) and ``v_loss_layer`` can only be checked once the model is loaded:
``check_against_model`` does it (``BaseEditor.from_hparams`` calls it).
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from ..editors import EDITORS, HyperParams
from ..errors import ConfigError
from ..models.loading import LoadedModel
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
class _Mapped:
    """What reading one file produces: our field values, and notes for the one warning."""

    values: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


Handler = Callable[[str, Any, _Mapped], None]


def rename(ours: str, convert: Callable[[Any], Any] = lambda v: v) -> Handler:
    def handle(key: str, value: Any, out: _Mapped) -> None:
        out.values[ours] = convert(value)
    return handle


def no_meaning(why: str) -> Handler:
    def handle(key: str, value: Any, out: _Mapped) -> None:
        out.notes.append(f"{key}: {value!r}: {why}")
    return handle


def accepted(ok_values: tuple, why: str, refuse: bool = False) -> Handler:
    """A key whose listed values are what we do anyway; another value is refused (``refuse``) or noted."""
    def handle(key: str, value: Any, out: _Mapped) -> None:
        if value in ok_values:
            return
        if refuse:
            raise ConfigError(f"{key}: {value!r} is not supported: {why}; set {key}: {ok_values[0]!r}")
        out.notes.append(f"{key}: {value!r}: {why}")
    return handle


def _context_templates(key: str, value: Any, out: _Mapped) -> None:
    """EasyEdit's [[length, count], ...] of generated context prefixes → our count and one length."""
    pairs = value if isinstance(value, list) else None
    if not pairs or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) and x >= 0 for x in p) for p in pairs):
        raise ConfigError(f"{key} must be a list of [length, count] pairs such as [[5, 10], [10, 10]], got {value!r}")
    out.values["context_prefixes"] = sum(count for _, count in pairs)
    out.values["context_length"] = max(length for length, _ in pairs) or 1
    if len({length for length, count in pairs if count}) > 1:
        out.notes.append(f"{key}: {value!r}: prefixes here have one length; using {out.values['context_prefixes']} "
                         f"prefixes of {out.values['context_length']} tokens")


def _mom2_samples(key: str, value: Any, out: _Mapped) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a whole number ≥ 1, got {value!r}")
    out.values["_mom2_n_samples"] = value  # turned into tokens once stats_seq_len is known (see _finish)


def _inner_params(key: str, value: Any, out: _Mapped) -> None:
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


def _template(key: str, value: Any, out: _Mapped) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a module path such as 'model.layers.{{}}.mlp.down_proj', got {value!r}")
    out.values.setdefault("module_templates", {})[key] = value.removesuffix(".weight")


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

FT_KEYS: dict[str, Handler] = {
    "objective_optimization": rename("objective", lambda v: {"target_new": "target_tokens"}.get(v, v)),
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
    "act_margin": lambda key, v, out: out.values.update(zip(("alpha", "beta", "gamma"), v)),
    "save_freq": rename("shard_size"), "densities": rename("merge_density"),
    "merge_alg": accepted(("ties",), "shards are merged with TIES here"),
    **{k: no_meaning("not used by WISE here") for k in ("merge_freq", "weights", "retrieve", "replay", "objective_optimization")},
}


# ---- the classes ---------------------------------------------------------------------------------------------------
@dataclass
class EasyEditHParams(HyperParams):
    """Fields EasyEdit's files carry besides a method's own, kept for ``BaseEditor``."""

    device: Any = None  # EasyEdit's GPU number, or a device name; a GPU where there is none: the CPU, with a warning
    fp16: bool = False
    batch_size: Optional[int] = None  # requests per edit call in batch_edit
    module_templates: dict = field(default_factory=dict)  # EasyEdit key → template, checked against the model
    v_loss_layer: Optional[int] = None  # checked: the target is scored at the model's output here

    METHOD: ClassVar[str] = ""  # our registered method
    ALG_NAMES: ClassVar[tuple[str, ...]] = ()
    KEYS: ClassVar[dict[str, Handler]] = {}

    @property
    def alg_name(self) -> str:
        return self.ALG_NAMES[0]

    def method(self) -> str:
        return self.METHOD

    @classmethod
    def from_hparams(cls, path: str | Path, **overrides: Any) -> "EasyEditHParams":
        """Read an EasyEdit YAML file (``.yaml`` may be left out, as in EasyEdit)."""
        import yaml

        path = Path(path)
        if not path.exists() and path.with_suffix(".yaml").exists():
            path = path.with_suffix(".yaml")
        if not path.is_file():
            raise ConfigError(f"hyperparameter file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: an EasyEdit hyperparameter file is a mapping of keys to values")
        return cls.from_easyedit_dict({**raw, **overrides}, source=str(path))

    @classmethod
    def from_easyedit_dict(cls, raw: dict, source: str = "<dict>") -> "EasyEditHParams":
        alg = raw.get("alg_name")
        if alg is not None and alg not in cls.ALG_NAMES:
            raise ConfigError(f"{source}: alg_name {alg!r} is not read by {cls.__name__} (it reads {list(cls.ALG_NAMES)}); "
                              "use the class of that method, e.g. ROMEHyperParams for alg_name: ROME")
        fields = {f.name for f in dataclasses.fields(cls)}
        handlers = {**COMMON_KEYS, **cls.KEYS}
        out = _Mapped()
        for key, value in raw.items():
            if key == "alg_name":
                continue
            if key == "model_name" and value is not None:
                value, note = resolve_easyedit_model_name(value)
                if note:
                    out.notes.append(note)
            if key in handlers:
                handlers[key](key, value, out)
            elif key in fields:
                out.values[key] = value
            else:
                out.notes.append(f"{key}: {value!r}: no meaning for {cls.METHOD} here")
        cls._finish(out, source)
        if out.notes:
            warnings.warn(f"{source}: EasyEdit keys read differently here ({len(out.notes)}):\n  " + "\n  ".join(out.notes),
                          EasyEditKeyWarning, stacklevel=3)
        return cls.from_dict(out.values, source=source)

    @classmethod
    def _finish(cls, out: _Mapped, source: str) -> None:
        samples = out.values.pop("_mom2_n_samples", None)
        if samples is not None:
            if "mom2_n_tokens" in out.values:
                raise ConfigError(f"{source}: give mom2_n_samples (EasyEdit) or mom2_n_tokens, not both")
            seq_len = out.values.get("stats_seq_len", getattr(cls, "stats_seq_len", 256))
            out.values["mom2_n_tokens"] = samples * seq_len
            out.notes.append(f"mom2_n_samples: {samples}: statistics are counted in tokens here: {samples} sequences of "
                             f"stats_seq_len {seq_len} = mom2_n_tokens {samples * seq_len} (EasyEdit's samples are whole "
                             "Wikipedia articles)")

    def native(self) -> HyperParams:
        """Our method's own hyperparameters, validated (after any change a script made to this object)."""
        target = EDITORS[self.method()].HParams
        names = {f.name for f in dataclasses.fields(target)}
        return target.from_dict({k: v for k, v in dataclasses.asdict(self).items() if k in names},
                                source=f"{type(self).__name__}")


def _editor_hparams(method: str) -> type:
    return EDITORS[method].HParams


@dataclass
class ROMEHyperParams(EasyEditHParams, _editor_hparams("rome")):
    METHOD: ClassVar[str] = "rome"
    ALG_NAMES: ClassVar[tuple[str, ...]] = ("ROME",)
    KEYS: ClassVar[dict[str, Handler]] = LOCATE_KEYS


@dataclass
class MEMITHyperParams(EasyEditHParams, _editor_hparams("memit")):
    METHOD: ClassVar[str] = "memit"
    ALG_NAMES: ClassVar[tuple[str, ...]] = ("MEMIT",)
    KEYS: ClassVar[dict[str, Handler]] = ALWAYS_MOM2_KEYS


@dataclass
class AlphaEditHyperParams(EasyEditHParams, _editor_hparams("alphaedit")):
    METHOD: ClassVar[str] = "alphaedit"
    ALG_NAMES: ClassVar[tuple[str, ...]] = ("AlphaEdit",)
    KEYS: ClassVar[dict[str, Handler]] = ALWAYS_MOM2_KEYS


@dataclass
class FTHyperParams(EasyEditHParams, _editor_hparams("ft-m")):
    """EasyEdit's FT: FT-M (``objective_optimization: target_new``) or FT-L (``prompt_last``)."""

    ALG_NAMES: ClassVar[tuple[str, ...]] = ("FT", "FT-M", "FT-L")
    KEYS: ClassVar[dict[str, Handler]] = FT_KEYS

    def method(self) -> str:
        return "ft-m" if self.objective == "target_tokens" else "ft-l"


def _simple(name: str, method: str, alg_names: tuple[str, ...], keys: Optional[dict] = None) -> type:
    """A class whose EasyEdit keys map by name (plus ``keys``); the rest are listed in the warning."""
    cls = dataclasses.make_dataclass(name, [], bases=(EasyEditHParams, _editor_hparams(method)),
                                     namespace={"METHOD": method, "ALG_NAMES": alg_names, "KEYS": keys or {},
                                                "__module__": __name__,
                                                "__doc__": f"EasyEdit's {name}, over lightning-edit's {method}."})
    return cls


KNHyperParams = _simple("KNHyperParams", "kn", ("KN",), KN_KEYS)
GraceHyperParams = _simple("GraceHyperParams", "grace", ("GRACE",), GRACE_KEYS)
WISEHyperParams = _simple("WISEHyperParams", "wise", ("WISE",), WISE_KEYS)
MENDHyperParams = _simple("MENDHyperParams", "mend", ("MEND",), {"archive": rename("editor_checkpoint")})
SERACHparams = _simple("SERACHparams", "serac", ("SERAC",), {"archive": rename("editor_checkpoint")})
KEHyperParams = _simple("KEHyperParams", "ke", ("KE",), {"archive": rename("editor_checkpoint")})
IKEHyperParams = _simple("IKEHyperParams", "ike", ("IKE",))

EASYEDIT_CLASSES = (ROMEHyperParams, MEMITHyperParams, AlphaEditHyperParams, FTHyperParams, KNHyperParams,
                    GraceHyperParams, WISEHyperParams, MENDHyperParams, SERACHparams, KEHyperParams, IKEHyperParams)


# ---- checks against the loaded model ------------------------------------------------------------------------------
def check_against_model(hparams: EasyEditHParams, loaded: LoadedModel) -> None:
    """Each module template of the file must be where our layout of this model edits; ``v_loss_layer`` must be the
    last block. A mismatch is a ConfigError naming the key, both paths and the fix."""
    layout, model = loaded.layout, loaded.model
    expected = {
        "rewrite_module_tmp": layout.mlp_out, "inner_params": layout.mlp_out,
        "layer_module_tmp": f"{layout.blocks}.{{}}",
        "mlp_module_tmp": layout.mlp_out.rsplit(".", 1)[0], "attn_module_tmp": layout.attn_out.rsplit(".", 1)[0],
        "ln_f_module": layout.final_norm, "lm_head_module": layout.lm_head,
    }
    for key, given in hparams.module_templates.items():
        want = expected[key]
        if given == want:
            continue
        if key == "lm_head_module" and given == layout.embeddings and _tied(loaded):
            continue  # EasyEdit names GPT-2's tied output matrix by its embedding (transformer.wte): the same weights
        raise ConfigError(
            f"{key}: {given!r} is not where lightning-edit finds it in {loaded.name} (family {layout.family}): "
            f"{want!r}. A file written for another model? Set {key}: \"{want}\" (or remove the key)")
    n_layers = layout.num_layers(model)
    if hparams.v_loss_layer is not None and hparams.v_loss_layer != n_layers - 1:
        raise ConfigError(f"v_loss_layer: {hparams.v_loss_layer}: the target is scored at the output of the last block "
                          f"here; {loaded.name} has {n_layers} blocks, so set v_loss_layer: {n_layers - 1} (or remove it)")


def _tied(loaded: LoadedModel) -> bool:
    layout = loaded.layout
    head = layout.module(loaded.model, layout.lm_head).weight
    return head.data_ptr() == layout.module(loaded.model, layout.embeddings).weight.data_ptr()
