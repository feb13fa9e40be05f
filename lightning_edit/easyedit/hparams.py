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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from ..editors import EDITORS, HyperParams
from ..errors import ConfigError, docs_link
from ..models.layout import ModelLayout
from ..models.loading import LoadedModel
from .keys import (ALWAYS_MOM2_KEYS, COMMON_KEYS, FT_KEYS, GRACE_KEYS, IKE_KEYS, KN_KEYS, LOCATE_KEYS, LORA_KEYS,
                   MALMEN_KEYS, PMET_KEYS, R_ROME_KEYS, ULTRAEDIT_KEYS, WISE_KEYS, EasyEditKeyWarning, Handler, Mapped,
                   rename, resolve_easyedit_model_name)


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

    def site_templates(self, layout: ModelLayout) -> dict[str, str]:
        """Module templates this method's files name differently from ROME's (EasyEdit key → our layout's path)."""
        return {}

    @classmethod
    def from_hparams(cls, path: str | Path, **overrides: Any) -> "EasyEditHParams":
        """Read an EasyEdit YAML file (``.yaml`` may be left out, as in EasyEdit)."""
        import yaml

        path = Path(path)
        if not path.exists() and path.with_suffix(".yaml").exists():
            path = path.with_suffix(".yaml")
        if not path.is_file():
            raise ConfigError(f"hyperparameter file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"hyperparameter file {path} is not UTF-8 text ({err.reason}); save it as UTF-8") from None
        except yaml.YAMLError as err:  # the first line says where (line, column) and what
            raise ConfigError(f"hyperparameter file {path} is not valid YAML: {str(err).splitlines()[0]} "
                              f"({_yaml_mark(err)})") from None
        except (OSError, RecursionError) as err:
            raise ConfigError(f"hyperparameter file {path} cannot be read ({type(err).__name__}: {err})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: an EasyEdit hyperparameter file is a mapping of keys to values")
        return cls.from_easyedit_dict({**raw, **overrides}, source=str(path))

    @classmethod
    def from_easyedit_dict(cls, raw: dict, source: str = "<dict>") -> "EasyEditHParams":
        if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
            raise ConfigError(f"{source}: EasyEdit hyperparameters are a mapping of key names to values, got {raw!r:.80}")
        alg = raw.get("alg_name")
        if alg is not None and alg not in cls.ALG_NAMES:
            raise ConfigError(f"{source}: alg_name {alg!r} is not read by {cls.__name__} (it reads {list(cls.ALG_NAMES)}); "
                              "use the class of that method, e.g. ROMEHyperParams for alg_name: ROME")
        fields = {f.name for f in dataclasses.fields(cls)}
        handlers = {**COMMON_KEYS, **cls.KEYS}
        out = Mapped()
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
            warnings.warn(f"{source}: EasyEdit keys read differently here ({len(out.notes)}; how each key maps: "
                          f"{docs_link('guides/easyedit.md')}):\n  " + "\n  ".join(out.notes),
                          EasyEditKeyWarning, stacklevel=3)
        return cls.from_dict(out.values, source=source)

    @classmethod
    def _finish(cls, out: Mapped, source: str) -> None:
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


def _yaml_mark(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "see the file"


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
class R_ROMEHyperParams(EasyEditHParams, _editor_hparams("r-rome")):  # EasyEdit's name
    METHOD: ClassVar[str] = "r-rome"
    ALG_NAMES: ClassVar[tuple[str, ...]] = ("R-ROME",)
    KEYS: ClassVar[dict[str, Handler]] = R_ROME_KEYS


@dataclass
class EMMETHyperParams(EasyEditHParams, _editor_hparams("emmet")):
    METHOD: ClassVar[str] = "emmet"
    ALG_NAMES: ClassVar[tuple[str, ...]] = ("EMMET",)
    KEYS: ClassVar[dict[str, Handler]] = ALWAYS_MOM2_KEYS


@dataclass
class PMETHyperParams(EasyEditHParams, _editor_hparams("pmet")):
    METHOD: ClassVar[str] = "pmet"
    ALG_NAMES: ClassVar[tuple[str, ...]] = ("PMET",)
    KEYS: ClassVar[dict[str, Handler]] = PMET_KEYS

    def site_templates(self, layout: ModelLayout) -> dict[str, str]:
        """PMET's files name the optimised sites themselves: the FFN and attention output projections."""
        return {"mlp_module_tmp": layout.mlp_out, "attn_module_tmp": layout.attn_out, "rewrite_module_tmps": layout.mlp_out}


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
MALMENHyperParams = _simple("MALMENHyperParams", "malmen", ("MALMEN",), MALMEN_KEYS)
UltraEditHyperParams = _simple("UltraEditHyperParams", "ultraedit", ("ULTRAEDIT", "UltraEdit"), ULTRAEDIT_KEYS)
LoRAHyperParams = _simple("LoRAHyperParams", "lora", ("LoRA",), LORA_KEYS)


@dataclass
class IKEHyperParams(EasyEditHParams, _editor_hparams("ike")):
    """EasyEdit's IKE, over ours. ``sentence_model_name`` is kept for scripts that read it; the demonstrations are
    embedded with our registered encoder ``sentence_model`` (all-MiniLM-L6-v2, EasyEdit's default)."""

    sentence_model_name: Optional[str] = None
    METHOD: ClassVar[str] = "ike"
    ALG_NAMES: ClassVar[tuple[str, ...]] = ("IKE",)
    KEYS: ClassVar[dict[str, Handler]] = IKE_KEYS


EASYEDIT_CLASSES = (ROMEHyperParams, R_ROMEHyperParams, MEMITHyperParams, EMMETHyperParams, PMETHyperParams,
                    AlphaEditHyperParams, FTHyperParams, LoRAHyperParams, KNHyperParams, GraceHyperParams,
                    WISEHyperParams, UltraEditHyperParams, MENDHyperParams, MALMENHyperParams, SERACHparams,
                    KEHyperParams, IKEHyperParams)


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
        **hparams.site_templates(layout),
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
