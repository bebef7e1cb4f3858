"""``TrainConfig``: everything one training run needs, typed and validated before any work starts.

Sections mirror the data flow: ``model`` → ``data`` → ``optim`` → ``trainer`` → ``log`` (+ ``seed``). All models
are frozen and reject unknown keys, so a typo in a YAML file or a ``--set`` override fails with the field's
name instead of being silently ignored. Defaults are the paper's DeiT recipe (reference §3) where one exists;
``configs/digits.yaml`` shrinks it for a 2-core CPU.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..pos import PosConfig
from ..rpe import RPEConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Frozen):
    """The network: a timm DeiT/ViT name plus optional size overrides, and the iRPE variant.

    ``rpe: null`` builds the no-RPE baseline. An official iRPE name (``deit_small_patch16_224_ctx_product_50_
    shared_k``) is resolved here into its timm base name and RPE config (``rpe`` given beside it refines it).
    """

    name: str = "deit_tiny_patch16_224"
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    num_classes: Optional[int] = Field(None, description="None: taken from the dataset")
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0)
    abs_pos: Union[bool, Literal["sincos"]] = Field(True, description="the absolute position embedding: true "
                                                     "(or learned), false (or none), sincos (fixed 2D sin-cos)")
    rpe: Optional[RPEConfig] = RPEConfig()
    pos: Optional[PosConfig] = Field(None, description="another position-encoding family (rope_axial, rope_mixed, "
                                     "rpb, cpb, cpe), beside or instead of iRPE")
    recompute_weights: bool = Field(False, description="iRPE layers keep no L×L attention weights for the backward "
                                    "pass and recompute them (less memory, slower; the same maths)")

    @model_validator(mode="before")
    @classmethod
    def _official_name(cls, data: Any) -> Any:
        from ..models import parse_official_name, resolve_rpe

        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or \
                parse_official_name(data["name"]) is None:
            return data  # plain names: pydantic validates rpe field by field (errors keep their dotted path)
        name, rpe = resolve_rpe(data["name"], data.get("rpe"))
        return {**data, "name": name, "rpe": rpe}

    @field_validator("abs_pos", mode="before")
    @classmethod
    def _abs_words(cls, v: Any) -> Any:
        from ..models.deit import ABS_POS_WORDS

        if isinstance(v, str) and v not in ABS_POS_WORDS:
            raise ValueError(f"allowed: true, false, {sorted(ABS_POS_WORDS)}")
        return ABS_POS_WORDS.get(v, v) if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        import timm

        if not timm.is_model(v):
            raise ValueError(f"unknown model {v!r}; use a timm DeiT/ViT name such as 'deit_tiny_patch16_224' "
                             f"(timm has {timm.list_models('deit_*')[:6]}...) or an official iRPE name such as "
                             "'deit_small_patch16_224_ctx_product_50_shared_k'")
        if not v.startswith(("deit", "vit")):
            raise ValueError(f"model {v!r}: iRPE needs a timm VisionTransformer; use a deit_* or vit_* name")
        return v

    @model_validator(mode="after")
    def _geometry(self) -> "ModelConfig":
        img, patch = self.resolved_img_size, self.resolved_patch_size
        if img % patch:
            raise ValueError(f"model.img_size={img} is not divisible by model.patch_size={patch}; "
                             f"choose a multiple of {patch}")
        if self.embed_dim is not None and self.num_heads is not None and self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads={self.num_heads}")
        if self.rpe is not None and self.depth is not None:
            self.rpe.layer_indices(self.depth)  # layer indices within depth
        if self.pos is not None:
            self._check_pos()
        return self

    def _check_pos(self) -> None:
        """The family fits this model (layers, head dimension, overlap with iRPE): built on the meta device,
        which costs no memory and no initialisation, so every rule lives in one place (the family's)."""
        import torch

        from ..models import create_model

        with torch.device("meta"):
            create_model(self.name, rpe=self.rpe, abs_pos=self.abs_pos, pos=self.pos, **self.timm_kwargs(2))

    @property
    def resolved_img_size(self) -> int:
        m = re.search(r"_(\d+)$", self.name)
        return self.img_size or (int(m.group(1)) if m else 224)

    @property
    def resolved_patch_size(self) -> int:
        m = re.search(r"patch(\d+)", self.name)
        return self.patch_size or (int(m.group(1)) if m else 16)

    def timm_kwargs(self, num_classes: int) -> Dict[str, Any]:
        """Keyword arguments for ``create_model``; unset sizes keep the timm model's own defaults."""
        kw = {k: getattr(self, k) for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads",
                                            "mlp_ratio") if getattr(self, k) is not None}
        return {**kw, "num_classes": self.num_classes or num_classes, "drop_path_rate": self.drop_path_rate}


#: datasets that come with their own test set (CIFAR's official test set, an image folder's ``val/``)
OWN_TEST_SET = ("cifar10", "cifar100", "imagefolder")
DEFAULT_TEST_FRACTION = 0.25


class DataConfig(_Frozen):
    """Dataset and input pipeline; augmentation values are timm's (``create_transform`` / ``Mixup``)."""

    name: str = "digits"
    root: Optional[str] = Field(None, description="cifar10/cifar100/imagefolder root directory")
    download: bool = False
    batch_size: int = Field(128, ge=1, description="per device")
    eval_batch_size: Optional[int] = Field(None, ge=1, description="None: 1.5 × batch_size, as in DeiT")
    num_workers: int = Field(0, ge=0)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of the training images held out "
                                "(stratified, by split_seed) to choose the epoch; 0: no validation split, the "
                                "final epoch is reported")
    test_fraction: Optional[float] = Field(None, gt=0.0, lt=1.0, description="embedded sets, synthetic: share of all "
                                           "images held out as the test split (None: 0.25); cifar10/cifar100/"
                                           "imagefolder use their own test set and refuse a value")
    split_seed: int = Field(0, ge=0, description="seed of the train/val/test split, independent of the model "
                            "seed: every variant and seed sees the same validation and test images")
    # generated data: synthetic (throughput runs) and relpos (a task of relative positions)
    num_samples: int = Field(1024, ge=2, description="synthetic: training images; relpos: all images, before "
                             "the test and validation splits")
    num_classes: int = Field(1000, ge=2, description="synthetic only")
    # augmentation (timm.data.create_transform)
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = Field(0.25, ge=0.0, le=1.0)
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    scale: Tuple[float, float] = (0.08, 1.0)
    interpolation: str = "bicubic"
    crop_pct: Optional[float] = None
    # batch mixing (timm.data.Mixup), applied in the LightningModule
    mixup: float = Field(0.8, ge=0.0)
    cutmix: float = Field(1.0, ge=0.0)
    mixup_prob: float = Field(1.0, ge=0.0, le=1.0)
    mixup_switch_prob: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from .datasets import DATAMODULES

        return DATAMODULES.check(v)

    @model_validator(mode="before")
    @classmethod
    def _default_test_fraction(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("test_fraction") is None and \
                data.get("name", "digits") not in OWN_TEST_SET:
            return {**data, "test_fraction": DEFAULT_TEST_FRACTION}
        return data

    @model_validator(mode="after")
    def _root_needed(self) -> "DataConfig":
        if self.name in OWN_TEST_SET and not self.root:
            raise ValueError(f"data.root is required for data.name={self.name!r} (the directory holding the files)")
        if self.name in OWN_TEST_SET and self.test_fraction is not None:
            test = "its val/ folder" if self.name == "imagefolder" else "the official test set"
            raise ValueError(f"data.test_fraction={self.test_fraction!r}: data.name={self.name!r} tests on {test}; "
                             "leave test_fraction unset (validation is carved from the training images by "
                             "val_fraction)")
        if self.test_fraction is not None and (1 - self.test_fraction) * (1 - self.val_fraction) <= 0.05:
            raise ValueError(f"data.test_fraction={self.test_fraction:g} with data.val_fraction="
                             f"{self.val_fraction:g} leaves {(1 - self.test_fraction) * (1 - self.val_fraction):.0%}"
                             " of the images for training; allowed: more than 5%")
        return self

    @property
    def has_validation(self) -> bool:
        """Whether a validation split exists to choose the epoch on (else the final epoch is reported)."""
        return self.val_fraction > 0

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


class OptimConfig(_Frozen):
    """DeiT's AdamW recipe: lr scaled by global batch / ``lr_base_batch``, cosine with warmup (timm factories)."""

    opt: str = "adamw"
    lr: float = Field(5e-4, gt=0.0, description="base lr for a global batch of lr_base_batch")
    lr_base_batch: int = Field(512, ge=1)
    scale_lr: bool = True
    weight_decay: float = Field(0.05, ge=0.0)
    decay_rpe_tables: bool = Field(False, description="paper: no decay on RPE tables; official code decays them")
    opt_eps: float = 1e-8
    sched: str = "cosine"
    min_lr: float = Field(1e-5, ge=0.0)
    warmup_lr: float = Field(1e-6, ge=0.0)
    warmup_epochs: int = Field(5, ge=0)
    step_on_epochs: bool = Field(True, description="DeiT steps the schedule per epoch; False: per update")
    smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    clip_grad: Optional[float] = Field(None, gt=0.0)
    ema_decay: Optional[float] = Field(None, gt=0.0, lt=1.0, description="None: no EMA. With EMA, Lightning's "
                                       "EMAWeightAveraging validates and ends with the averaged weights")


class TrainerConfig(_Frozen):
    """Passed through to ``pl.Trainer``; ``precision: auto`` is bf16-mixed on GPU and 32 on CPU."""

    max_epochs: int = Field(300, ge=1)
    accelerator: str = "auto"
    devices: Union[int, str, List[int]] = 1
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: str = "auto"
    accumulate_grad_batches: int = Field(1, ge=1)
    limit_train_batches: Optional[Union[int, float]] = None
    limit_val_batches: Optional[Union[int, float]] = None
    limit_test_batches: Optional[Union[int, float]] = None
    deterministic: Union[bool, Literal["auto"]] = "auto"
    log_every_n_steps: int = Field(20, ge=1)
    enable_progress_bar: bool = True
    throughput_skip_steps: int = Field(5, ge=0, description="first steps of each epoch left out of train img/s")
    benchmark_batches: int = Field(10, ge=0, description="timed inference batches after training; 0: skip")


class LogConfig(_Frozen):
    """W&B identity; offline automatically without an API key. ``runs_dir`` holds one directory per run."""

    wandb: bool = True
    project: str = "irpe_bench"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: Tuple[str, ...] = ()
    mode: Literal["auto", "online", "offline"] = "auto"
    runs_dir: str = "results/runs"
    save_top_k: int = Field(1, ge=0)


class EvalConfig(_Frozen):
    """What is evaluated besides the test split at the training size (:mod:`.resolution`)."""

    img_sizes: Tuple[int, ...] = Field((), description="image sizes (pixels, square) at which the checkpoint chosen "
                                       "on validation is also tested: test/by_img_size; multiples of the patch size")

    @field_validator("img_sizes")
    @classmethod
    def _sizes(cls, v: Tuple[int, ...]) -> Tuple[int, ...]:
        bad = [s for s in v if s < 1]
        if bad:
            raise ValueError(f"image sizes must be positive; given {bad[0]}")
        return tuple(sorted(set(v)))


class TrainConfig(_Frozen):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    log: LogConfig = LogConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _cross(self) -> "TrainConfig":
        if self.data.mixing and self.data.batch_size % 2:
            raise ValueError(f"data.batch_size={self.data.batch_size}: mixup/cutmix need an even batch size")
        patch = self.model.resolved_patch_size
        bad = [s for s in self.eval.img_sizes if s % patch]
        if bad:
            raise ValueError(f"eval.img_sizes: {bad[0]} is not a multiple of model.patch_size={patch}; allowed: "
                             f"multiples of {patch}, e.g. {[patch * k for k in (2, 3, 4)]}")
        return self


def merge(base: Dict[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """``over`` laid on ``base``, section by section (nested mappings merge; anything else replaces); a new dict."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def submodel(annotation: Any) -> Optional[type]:
    """The pydantic model a field holds (``Optional[RPEConfig]`` → ``RPEConfig``), or None for plain values."""
    return next((a for a in getattr(annotation, "__args__", (annotation,))
                 if isinstance(a, type) and issubclass(a, BaseModel)), None)


def format_errors(err: ValidationError, source: str = "config", root: type = None) -> str:
    """One line per problem, naming the dotted field, the value given and what is allowed (for an unknown
    key: the keys its section has, when the section is a model). ``root``: the validated model (TrainConfig)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            model: Any = root or TrainConfig
            for p in e["loc"][:-1]:
                fields = getattr(model, "model_fields", {})
                model = submodel(fields[p].annotation) if p in fields else None
            msg = f"unknown key; allowed: {sorted(model.model_fields)}" if model is not None else "unknown key"
        given = e.get("input")
        lines.append(f"{loc}: {msg} (given: {given!r})" if e["type"] != "extra_forbidden" else f"{loc}: {msg}")
    return f"invalid {source}:\n  " + "\n  ".join(lines)


def build_config(data: Optional[Mapping[str, Any]] = None, overrides: Optional[Mapping[str, Any]] = None,
                 source: str = "config") -> TrainConfig:
    """Validate a nested dict (plus nested overrides); raise ``ValueError`` with readable field errors."""
    merged = merge(dict(data or {}), overrides or {})
    try:
        return TrainConfig(**merged)
    except ValidationError as e:
        raise ValueError(format_errors(e, source)) from None


class _Yaml12BoolLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 booleans: only true/false. Under YAML 1.1 the key ``on`` (iRPE's
    attachment field) would load as the boolean True."""


_Yaml12BoolLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12BoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_yaml(path: Union[str, Path], what: str = "config file") -> Dict[str, Any]:
    """A YAML file that must hold a mapping (YAML 1.2 booleans, safe loader); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    with path.open() as f:
        try:
            data = yaml.load(f, Loader=_Yaml12BoolLoader) or {}  # safe: a SafeLoader subclass
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ValueError(f"{what} {str(path)!r}: not valid YAML{where} "
                             f"({getattr(e, 'problem', None) or type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: Union[str, Path], overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    return build_config(read_yaml(path), overrides, source=f"config {path}")


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"model": {"rpe": {"on": "k"}}}`` → ``{"model.rpe.on": "k"}``: W&B filters and groups on flat keys."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out
