"""Every knob of ``uniedit train`` in one place: typed option dataclasses (torch-free).

Each field carries its CLI flag and its help text, so the same table gives the command's
``--help``, the YAML schema of ``--config`` files and the resolved ``run_dir/config.yaml``
(litgpt keeps its hyperparameters the same way). Values are merged in this order:

1. the dataclass defaults, then the model family's training defaults (:data:`FAMILY_TRAINING`,
   e.g. Uni-Edit's learning rate 2e-5 and frozen ViT for Janus-Pro);
2. a YAML file (``--config``), nested by section as in ``examples/train/*.yaml``;
3. the flags given on the command line.

The YAML file written to ``run_dir/config.yaml`` is itself a valid ``--config``: rerunning it
reproduces the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import inspect
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

from uniedit_cli.errors import UsageError

# --- family facts needed before torch is imported ---------------------------------------------
# Trainable parts per family (the names ``--freeze`` takes); ``uniedit_cli.train.objectives``
# maps each to modules. Learning rates: Uni-Edit's released recipe trains at 2e-5 with the ViT
# frozen (REFERENCE.md, "Uni-Edit", Training); diffusers' train_instruct_pix2pix.py defaults to
# 1e-4 with the text encoder and VAE frozen.
FAMILY_TRAINING: dict[str, dict[str, Any]] = {
    "janus": {"parts": ("vision", "language", "generation"), "freeze": ["vision"], "lr": 2e-5},
    "ip2p": {"parts": ("unet", "text"), "freeze": ["text"], "lr": 1e-4},
}

CROPS = ("center", "random", "resize")
SCHEDULES = ("cosine", "constant", "linear")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TRACKERS = ("none", "tensorboard", "wandb")
DEVICES = ("auto", "cpu", "cuda")


def option(default: Any, flag: str, help: str, *, choices: tuple[str, ...] | None = None, min: float | None = None,
           max: float | None = None, bool_flags: str | None = None) -> Any:
    """A dataclass field with its CLI flag, help text and constraints."""
    meta = {"flag": flag, "help": help, "choices": choices, "min": min, "max": max, "bool_flags": bool_flags}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataOptions:
    path: Optional[str] = option(
        None, "--data",
        "Edit data: a `uniedit synth` folder, a folder or file of parquet (MagicBrush, InstructPix2Pix and "
        "uniedit layouts are recognised), a `datasets.save_to_disk` folder, a JSONL file of image paths, or a hub "
        "dataset id (from the local cache).")
    split: str = option("train", "--split", "Split to train on when the data has several.")
    image_column: Optional[str] = option(
        None, "--image-column", "Column of the source image (default: from the layout: input_image, source_img, original_image).")
    instruction_column: Optional[str] = option(
        None, "--instruction-column", "Column of the edit instruction (default: edit_prompt or instruction).")
    target_column: Optional[str] = option(
        None, "--target-column", "Column of the edited (target) image (default: edited_image or target_img).")
    resolution: Optional[int] = option(
        None, "--resolution", "Side of the square training images in pixels (default: the model's native size).", min=8)
    crop: str = option("center", "--crop", "How images become square: resize the short side then a center or random crop, "
                                           "or resize (squash, as diffusers' example).", choices=CROPS)
    random_flip: bool = option(False, "--random-flip", "Flip source and target together, at random, horizontally.",
                               bool_flags="--random-flip/--no-random-flip")
    val_size: int = option(8, "--val-size", "Rows held out for validation (from the data's validation split when it "
                                            "has one); 0 turns validation off.", min=0)
    max_rows: Optional[int] = option(None, "--max-rows", "Use at most this many training rows (debugging).", min=1)
    num_workers: int = option(0, "--num-workers", "DataLoader worker processes that decode images.", min=0)


@dataclass
class TuneOptions:
    lora: bool = option(False, "--lora", "Train LoRA adapters (peft) instead of all weights; final/ holds merged weights "
                                         "plus the adapter in final/lora/.", bool_flags="--lora/--full")
    lora_rank: int = option(16, "--lora-rank", "LoRA rank r.", min=1)
    lora_alpha: Optional[float] = option(None, "--lora-alpha", "LoRA alpha (default: the rank).", min=0)
    lora_dropout: float = option(0.0, "--lora-dropout", "Dropout on the LoRA branch.", min=0, max=1)
    lora_targets: Optional[str] = option(
        None, "--lora-targets", "Regex of module names that get LoRA (default: the family's attention and MLP projections).")
    freeze: Optional[list[str]] = option(
        None, "--freeze", "Parts kept frozen (repeat the flag or use commas). janus: vision, language, generation "
                          "(default vision, as Uni-Edit); ip2p: unet, text (default text). `none` trains every part. "
                          "The VQ tokenizer / VAE are always frozen.")
    gradient_checkpointing: bool = option(False, "--gradient-checkpointing", "Recompute activations in backward (less memory, "
                                                                             "~30% slower).",
                                          bool_flags="--gradient-checkpointing/--no-gradient-checkpointing")
    precision: str = option("auto", "--precision", "Mixed precision (weights stay fp32): auto is bf16 on GPUs that support "
                                                   "it, fp32 on CPU.", choices=PRECISIONS)
    drop_text_prob: float = option(0.05, "--drop-text-prob", "Conditioning dropout for classifier-free guidance: the "
                                                             "share of rows that lose the instruction (ip2p: that share "
                                                             "loses only it, and as many lose both, InstructPix2Pix sec. "
                                                             "3.2.1).", min=0, max=1)
    drop_image_prob: float = option(0.05, "--drop-image-prob", "The share of rows that lose the source image (ip2p: only "
                                                               "it; see --drop-text-prob).", min=0, max=1)
    ema: bool = option(False, "--ema", "Keep an exponential moving average of the trained weights; final/ gets the EMA.",
                       bool_flags="--ema/--no-ema")
    ema_decay: float = option(0.9999, "--ema-decay", "EMA decay (with diffusers' warm-up, so short runs move too).", min=0, max=1)


@dataclass
class OptimOptions:
    lr: Optional[float] = option(None, "--lr", "Peak learning rate (default: the family's, 2e-5 Janus as Uni-Edit, 1e-4 ip2p).",
                                 min=0)
    schedule: str = option("cosine", "--schedule", "Learning-rate schedule after warm-up.", choices=SCHEDULES)
    warmup_steps: int = option(0, "--warmup-steps", "Linear warm-up steps.", min=0)
    batch_size: int = option(4, "--batch-size", "Rows per device per micro-batch.", min=1)
    grad_accum: int = option(1, "--grad-accum", "Micro-batches accumulated per optimizer step.", min=1)
    max_steps: Optional[int] = option(None, "--max-steps", "Optimizer steps to train (wins over --epochs).", min=1)
    epochs: Optional[int] = option(None, "--epochs", "Passes over the training rows (default 1 when --max-steps is unset).",
                                   min=1)
    weight_decay: float = option(0.01, "--weight-decay", "AdamW weight decay.", min=0)
    adam_beta1: float = option(0.9, "--adam-beta1", "AdamW beta1.", min=0, max=1)
    adam_beta2: float = option(0.999, "--adam-beta2", "AdamW beta2.", min=0, max=1)
    adam_epsilon: float = option(1e-8, "--adam-epsilon", "AdamW epsilon.", min=0)
    max_grad_norm: float = option(1.0, "--max-grad-norm", "Clip the gradient norm to this (0: no clipping).", min=0)


@dataclass
class CheckpointOptions:
    save_every: int = option(500, "--save-every", "Write run_dir/checkpoint-N every N optimizer steps and at the last one (0: never).", min=0)
    limit: Optional[int] = option(3, "--checkpoint-limit", "Keep at most this many checkpoint-N folders (oldest removed).",
                                  min=1)
    resume: Optional[str] = option(None, "--resume", "`latest` (the newest complete checkpoint-N in --out) or a "
                                                     "checkpoint folder.")


@dataclass
class LogOptions:
    log_every: int = option(10, "--log-every", "Write metrics (run_dir/metrics.jsonl, trackers) every N steps.", min=1)
    report_to: str = option("none", "--report-to", "Tracker for metrics and validation grids, through accelerate.",
                            choices=TRACKERS)
    val_every: int = option(500, "--val-every", "Every N steps: validation loss and an image grid of edits "
                                                "(source, instruction, target, output) in run_dir/validation/ (0: only at "
                                                "the end).", min=0)
    val_steps: Optional[int] = option(None, "--val-steps", "Denoising steps of validation edits (diffusion models; "
                                                           "default: min(20, the model's)).", min=1)


@dataclass
class LaunchOptions:
    num_processes: Optional[int] = option(None, "--num-processes", "Run under `accelerate launch` with N processes (GPUs, "
                                                                   "or CPU ranks with gloo).", min=1)
    accelerate_config: Optional[str] = option(None, "--accelerate-config", "An accelerate config YAML (DDP, FSDP, DeepSpeed; "
                                                                           "see examples/accelerate/).")


SECTIONS: dict[str, type] = {
    "data": DataOptions, "tune": TuneOptions, "optim": OptimOptions, "checkpoint": CheckpointOptions,
    "log": LogOptions, "launch": LaunchOptions,
}


@dataclass
class TrainConfig:
    model: Optional[str] = option(None, "--model", "Registry name (see `uniedit models --can train`), hub id, or local folder.")
    family: Optional[str] = option(None, "--family", "Adapter family for a hub id or folder that cannot be recognised "
                                                     "(janus, ip2p).")
    out: Optional[str] = option(None, "--out", "Run folder: checkpoint-N/, final/, config.yaml, metrics.jsonl, "
                                               "validation/ (default runs/<model>).")
    seed: int = option(0, "--seed", "Seed of the data order, noise, dropout and crops (each row's randomness depends "
                                    "only on the seed, the epoch and the row, so runs resume exactly).")
    device: str = option("auto", "--device", "Where to train (a launched run uses accelerate's device per rank).",
                         choices=DEVICES)
    data: DataOptions = field(default_factory=DataOptions)
    tune: TuneOptions = field(default_factory=TuneOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    checkpoint: CheckpointOptions = field(default_factory=CheckpointOptions)
    log: LogOptions = field(default_factory=LogOptions)
    launch: LaunchOptions = field(default_factory=LaunchOptions)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def out_dir(self) -> Path:
        assert self.out is not None, "resolve() fills out"
        return Path(self.out)


# Keys that may change when a run is resumed (they do not change what is computed per step).
RESUMABLE_CHANGES = frozenset({
    "optim.max_steps", "optim.epochs", "checkpoint.save_every", "checkpoint.limit", "checkpoint.resume", "log.log_every",
    "log.report_to", "log.val_every", "log.val_steps", "data.num_workers", "launch.num_processes",
    "launch.accelerate_config", "device", "out",
})

# Written into run_dir/config.yaml by `uniedit train` (facts of the run); ignored when read back.
DERIVED_KEY = "derived"


# --- field table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Knob:
    section: str | None  # None: top level
    name: str
    flag: str
    type: Any  # the annotation, e.g. Optional[int]
    default: Any
    help: str
    choices: tuple[str, ...] | None
    min: float | None
    max: float | None
    bool_flags: str | None

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def base(self) -> type:
        """int / float / str / bool / list for an annotation like Optional[int]."""
        tp = self.type
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        return list if typing.get_origin(tp) is list or tp is list else tp


def _knobs_of(cls: type, section: str | None) -> list[Knob]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.name in SECTIONS and section is None:
            continue
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Knob(section, f.name, meta["flag"], hints[f.name], default, meta["help"], meta["choices"], meta["min"],
                        meta["max"], meta["bool_flags"]))
    return out


def knobs() -> list[Knob]:
    """Every option, top level first, then by section; names are unique across sections."""
    table = _knobs_of(TrainConfig, None)
    for section, cls in SECTIONS.items():
        table += _knobs_of(cls, section)
    names = [k.name for k in table]
    assert len(names) == len(set(names)), "option names must be unique across sections (they are CLI parameter names)"
    return table


# --- merging ------------------------------------------------------------------------------------

def _coerce(knob: Knob, value: Any, where: str) -> Any:
    """A YAML / CLI value as the field's type; YAML 1.1 reads 2e-5 as a string, so numbers are parsed."""
    if value is None:
        return None
    base = knob.base
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is list:
            items = value if isinstance(value, (list, tuple)) else [value]
            flat = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
            return flat
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number", list: "a list", str: "a string"}[base]
        raise UsageError(f"{where}: {knob.key} ({knob.flag}) must be {kind}, got {value!r}.") from None


def _check(knob: Knob, value: Any, where: str) -> None:
    if value is None:
        return
    if knob.choices and value not in knob.choices:
        raise UsageError(f"{where}: {knob.key} ({knob.flag}) is {value!r}; choose one of {', '.join(knob.choices)}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if knob.min is not None and value < knob.min:
            raise UsageError(f"{where}: {knob.key} ({knob.flag}) must be at least {knob.min:g}, got {value!r}.")
        if knob.max is not None and value > knob.max:
            raise UsageError(f"{where}: {knob.key} ({knob.flag}) must be at most {knob.max:g}, got {value!r}.")


def read_yaml(path: str | Path) -> dict:
    from uniedit_cli.io import read_yaml_mapping

    return read_yaml_mapping(path, flag="--config", hint="Pass a YAML file, e.g. one from examples/train/.")


def _apply_yaml(config: TrainConfig, data: dict, where: str) -> None:
    table = knobs()
    by_top = {k.name: k for k in table if k.section is None}
    known = sorted({k.key for k in table} | set(SECTIONS))
    for key, value in data.items():
        if key == DERIVED_KEY:
            continue
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise UsageError(f"{where}: {key} must be a mapping of options, got {value!r}.")
            section = getattr(config, key)
            names = {k.name: k for k in table if k.section == key}
            for sub, subvalue in value.items():
                if sub not in names:
                    raise _unknown(f"{key}.{sub}", known, where)
                knob = names[sub]
                subvalue = _coerce(knob, subvalue, where)
                _check(knob, subvalue, where)
                setattr(section, sub, subvalue)
        elif key in by_top:
            knob = by_top[key]
            value = _coerce(knob, value, where)
            _check(knob, value, where)
            setattr(config, key, value)
        else:
            raise _unknown(key, known, where)


# Names users bring from diffusers' and transformers' training scripts -> ours.
FAMILIAR_NAMES = {
    "learning_rate": "lr", "lr_scheduler": "schedule", "lr_warmup_steps": "warmup_steps",
    "train_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "max_train_steps": "max_steps", "num_train_epochs": "epochs",
    "checkpointing_steps": "save_every", "save_steps": "save_every", "checkpoints_total_limit": "limit",
    "save_total_limit": "limit", "resume_from_checkpoint": "resume", "mixed_precision": "precision",
    "use_ema": "ema", "conditioning_dropout_prob": "drop_text_prob", "dataset_name": "path",
    "original_image_column": "image_column", "edit_prompt_column": "instruction_column",
    "edited_image_column": "target_column", "validation_steps": "val_every", "output_dir": "out",
}


def _unknown(key: str, known: list[str], where: str) -> UsageError:
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in known if k.rsplit(".", 1)[-1] == FAMILIAR_NAMES.get(leaf)]
    close = close or difflib.get_close_matches(key, known, n=3) or [k for k in known if k.rsplit(".", 1)[-1] == leaf]
    return UsageError(f"{where}: unknown option {key!r}." + (f" Did you mean {', '.join(close)}?" if close else ""),
                      hint="Options are listed by `uniedit train --help`; YAML nests them by section "
                           f"({', '.join(SECTIONS)}).")


def _apply_cli(config: TrainConfig, values: dict) -> None:
    for knob in knobs():
        value = values.get(knob.name)
        if value is None:
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        value = _coerce(knob, value, "command line")
        _check(knob, value, "command line")
        target = config if knob.section is None else getattr(config, knob.section)
        setattr(target, knob.name, value)


def load_config(config_path: str | Path | None, cli_values: dict | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then the command line; family defaults are filled by :func:`resolve`."""
    config = TrainConfig()
    if config_path is not None:
        _apply_yaml(config, read_yaml(config_path), f"--config {config_path}")
    _apply_cli(config, cli_values or {})
    return config


def resolve(config: TrainConfig, family: str) -> TrainConfig:
    """Fill what depends on the model's family and check what can be checked without data or torch."""
    facts = FAMILY_TRAINING.get(family)
    if facts is None:
        trainable = ", ".join(FAMILY_TRAINING)
        raise UsageError(f"the {family} family cannot be trained by `uniedit train` yet; trainable families: {trainable}.")
    if config.optim.lr is None:
        config.optim.lr = float(facts["lr"])
    if config.tune.freeze is None:
        config.tune.freeze = list(facts["freeze"])
    freeze = [part.lower() for part in config.tune.freeze]
    if "none" in freeze:
        if len(freeze) > 1:
            raise UsageError("--freeze none cannot be combined with part names.")
        freeze = []
    unknown = [part for part in freeze if part not in facts["parts"]]
    if unknown:
        raise UsageError(f"--freeze {', '.join(unknown)}: {family} models have the parts {', '.join(facts['parts'])}.",
                         hint="Use `--freeze none` to train every part.")
    if not config.tune.lora and len(set(freeze)) == len(facts["parts"]):
        raise UsageError(f"--freeze {', '.join(freeze)} leaves nothing to train.", hint="Freeze fewer parts, or use --lora.")
    config.tune.freeze = sorted(set(freeze))
    if config.data.path is None:
        raise UsageError("no training data: pass --data (a `uniedit synth` folder, a parquet folder or a hub dataset id).")
    model_dir = Path(config.model).expanduser() if config.model else None
    if config.out is None:
        name = model_dir.name if model_dir is not None and model_dir.is_dir() else (config.model or "run")
        config.out = str(Path("runs") / name.replace("/", "--"))
    # Local paths are recorded absolute, so run_dir/config.yaml works as --config from any folder.
    config.out = str(Path(config.out).expanduser().resolve())
    if model_dir is not None and model_dir.is_dir():
        config.model = str(model_dir.resolve())
    if Path(config.data.path).expanduser().exists():
        config.data.path = str(Path(config.data.path).expanduser().resolve())
    accel = config.launch.accelerate_config
    if accel is not None and Path(accel).expanduser().is_file():
        config.launch.accelerate_config = str(Path(accel).expanduser().resolve())
    if config.tune.lora_alpha is None:
        config.tune.lora_alpha = float(config.tune.lora_rank)
    if config.checkpoint.resume is not None and config.checkpoint.resume != "latest":
        if not Path(config.checkpoint.resume).is_dir():
            raise UsageError(f"--resume {config.checkpoint.resume!r}: no such checkpoint folder.",
                             hint="Pass `latest` or a run_dir/checkpoint-N folder.")
    return config


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key == DERIVED_KEY:
            continue
        dotted = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, dotted + ".")
        elif a != b:
            out.append(dotted)
    return out


def dump_yaml(config: TrainConfig, *, command: list[str], derived: dict | None = None) -> str:
    """``config.yaml`` text: a header with the command to rerun it, the options, then the run's facts."""
    import shlex

    import yaml

    body = config.to_dict()
    if derived:
        body[DERIVED_KEY] = derived
    header = (
        "# Resolved configuration of this run, written by `uniedit train` (a valid --config).\n"
        f"# Started with:  uniedit {shlex.join(command)}\n"
        "# Resume with:   uniedit train --config <this file> --resume latest\n"
        f"# '{DERIVED_KEY}' holds facts of the run (data counts, world size); it is ignored when read back.\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


# --- the typer command -----------------------------------------------------------------------------

def _enum_for(knob: Knob) -> type[enum.Enum]:
    return enum.Enum("".join(part.title() for part in knob.name.split("_")), {c: c for c in knob.choices}, type=str)  # type: ignore[misc]


def command_signature() -> inspect.Signature:
    """The ``uniedit train`` parameters, built from the option table (one home for each option)."""
    from typing import Annotated

    import typer

    params = [inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[str], typer.Option("--config", "-c", help="A YAML config (see examples/train/); "
                                                                                 "flags given here override it.",
                                                         rich_help_panel="Config")],
    )]
    panels = {None: "Model and run", "data": "Data", "tune": "What to train", "optim": "Optimization",
              "checkpoint": "Checkpoints", "log": "Logging and validation", "launch": "Distributed"}
    for knob in knobs():
        base = knob.base
        shown = knob.default
        extra: dict[str, Any] = {}
        if knob.choices:
            annotation: Any = Optional[_enum_for(knob)]
        elif base is list:
            annotation = Optional[list[str]]
        else:
            annotation = Optional[base]
        if knob.min is not None and base in (int, float):
            extra["min"] = knob.min
        if knob.max is not None and base in (int, float):
            extra["max"] = knob.max
        decls = [knob.bool_flags] if knob.bool_flags else [knob.flag]
        if knob.name == "model":
            decls.append("-m")
        if knob.name == "out":
            decls.append("-o")
        help_text = knob.help + (f" [dim]\\[default: {_show(shown)}][/]" if shown not in (None, []) else "")
        info = typer.Option(*decls, help=help_text, show_default=False, rich_help_panel=panels[knob.section], **extra)
        params.append(inspect.Parameter(knob.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[annotation, info]))
    return inspect.Signature(params)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def with_signature(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``func(**options)`` the generated signature so typer builds the options from it."""
    func.__signature__ = command_signature()  # type: ignore[attr-defined]
    func.__annotations__ = {}
    return func
