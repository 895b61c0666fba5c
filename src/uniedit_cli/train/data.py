"""Edit datasets for training: find the data, map its columns, hold out validation rows, and
serve square (source, instruction, target) rows.

What ``--data`` can be (``open_splits``):

- a ``uniedit synth`` folder (``uniedit-data.json``, ``train/`` and ``test/`` parquet shards;
  ``test`` is uniedit-bench, held out by image, and is never used here unless ``--split test``);
- any folder or file of parquet, e.g. a hub snapshot (``data/train-*.parquet``,
  ``data/dev-*.parquet``); file names give the splits;
- a ``datasets.save_to_disk`` folder (one dataset, or a ``DatasetDict`` of splits);
- a JSONL file, or a folder with ``metadata.jsonl``: image columns hold paths relative to it;
- a hub dataset id (``osunlp/MagicBrush``), read through the ``datasets`` cache.

Column layouts recognised without flags (:data:`LAYOUTS`): uniedit / diffusers' instruct-pix2pix
example (``input_image, edit_prompt, edited_image``), MagicBrush (``source_img, instruction,
target_img``) and InstructPix2Pix clip-filtered (``original_image, edit_prompt,
edited_image``). Other names are mapped by ``--image-column``, ``--instruction-column`` and
``--target-column``.

Images are decoded lazily by :class:`EditRows`; a row whose image cannot be decoded (or whose
instruction is empty) is skipped, recorded in ``run_dir/skipped.jsonl`` and replaced by the next
good row, so every batch stays full and every rank takes the same number of steps.

Randomness (random crops, flips, and the per-row draws of the objectives) comes from
:func:`row_seed`: a function of the run's seed, the epoch and the row's index only. A row is
treated the same whatever batch, rank or process count it lands in, so a resumed run and a
run on N processes reproduce an uninterrupted one-process run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniedit_cli.errors import InputError, UniEditError, UsageError

# (layout name, (source image, instruction, target image)) in the order they are tried.
LAYOUTS: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("uniedit", ("input_image", "edit_prompt", "edited_image")),  # uniedit synth; diffusers' instruct_pix2pix example
    ("magicbrush", ("source_img", "instruction", "target_img")),  # osunlp/MagicBrush
    ("instructpix2pix", ("original_image", "edit_prompt", "edited_image")),  # timbrooks/instructpix2pix-clip-filtered
)
ROLES = ("image", "instruction", "target")
ROLE_FLAGS = {"image": "--image-column", "instruction": "--instruction-column", "target": "--target-column"}
ROLE_WORDS = {"image": "source-image", "instruction": "instruction", "target": "target-image"}
# A split that serves as the validation set when the data has one (MagicBrush ships "dev"). Not
# "test": a test split is a benchmark (synth's uniedit-bench), left to `uniedit eval`.
VALIDATION_SPLITS = ("validation", "valid", "val", "dev")
SYNTH_MANIFEST = "uniedit-data.json"
SKIP_LOG = "skipped.jsonl"
# A replacement for a bad row is looked for among the next rows; this many bad rows in a row
# means the data, not a row, is broken.
MAX_CONSECUTIVE_BAD = 64


@dataclass
class EditColumns:
    image: str
    instruction: str
    target: str
    layout: str  # a name from LAYOUTS, or "custom" when flags mapped a column

    def as_list(self) -> list[str]:
        return [self.image, self.instruction, self.target]


@dataclass
class EditData:
    """The training and validation rows of one dataset, columns mapped, images not yet decoded."""

    train: Any  # datasets.Dataset with the three columns only (image columns not decoded)
    val: Any | None
    columns: EditColumns
    source: str  # what --data was, for messages
    base_dir: Path | None  # relative image paths are read from here
    val_from: str = ""  # "split 'dev'" or "held out from 'train'"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"source": self.source, "layout": self.columns.layout, "columns": self.columns.as_list(),
                "train_rows": len(self.train), "val_rows": 0 if self.val is None else len(self.val),
                "val_from": self.val_from}


# --- opening ----------------------------------------------------------------------------------

def _parquet_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*.parquet")):
        rel = path.relative_to(folder)
        # hidden files are shards still being written; synth's rejected/ rows are not training data
        if any(part.startswith(".") for part in rel.parts) or rel.parts[0] == "rejected":
            continue
        files.append(path)
    return files


_SPLIT_IN_NAME = re.compile(r"(?:^|[/_.\-])(train|training|validation|valid|val|dev|test)(?=[/_.\-]|$)")


def _split_of(rel: str) -> str:
    found = _SPLIT_IN_NAME.findall(rel.lower())
    if not found:
        return "train"
    name = found[-1]
    return {"training": "train"}.get(name, name)


def _load_parquet(files_by_split: dict[str, list[Path]], source: str):
    import datasets

    with _read_errors(source):
        return datasets.load_dataset("parquet", data_files={k: [str(p) for p in v] for k, v in files_by_split.items()})


def _load_json(path: Path, source: str, notes: list[str] | None = None):
    """A JSONL file, line by line: a malformed or non-UTF-8 line is skipped and counted (datasets'
    json loader fails the whole file on one bad line, and names a wrong row)."""
    import datasets

    from uniedit_cli.io import read_jsonl

    rows, bad = [], []
    for number, row, error in read_jsonl(path):
        if error is None:
            rows.append(row)
        else:
            bad.append(f"line {number}: {error}")
    if not rows:
        why = f" ({len(bad)} unreadable line(s); {bad[0]})" if bad else ""
        raise UsageError(f"--data {source!r} has no rows{why}: nothing to train on.")
    if bad and notes is not None:
        notes.append(f"skipped {len(bad)} unreadable line(s) of {path.name} ({'; '.join(bad[:3])}"
                     f"{'; ...' if len(bad) > 3 else ''})")
    with _read_errors(source):
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})


@contextlib.contextmanager
def _read_errors(source: str):
    """A file datasets cannot read is bad input: one message, no traceback."""
    try:
        yield
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow and datasets raise many types for bad files
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        if "corresponds to no data" in first:
            raise UsageError(f"--data {source!r} has no rows: nothing to train on.") from None
        raise UsageError(f"--data {source!r} could not be read ({type(exc).__name__}: {first}).",
                         hint="Check that the files are complete parquet / JSONL written by datasets or pyarrow.") from None


def _quiet_datasets() -> None:
    import datasets

    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()


def open_splits(path: str, notes: list[str] | None = None) -> tuple[dict[str, Any], Path | None, str]:
    """``({split: datasets.Dataset}, base folder for relative image paths, kind)`` for ``--data``;
    what was skipped while opening is appended to ``notes``."""
    _quiet_datasets()
    import datasets

    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix == ".parquet":
            return dict(_load_parquet({"train": [local]}, path)), local.parent, "parquet file"
        if local.suffix in (".jsonl", ".json"):
            return dict(_load_json(local, path, notes)), local.parent, "JSONL file"
        raise UsageError(f"--data {path!r}: a {local.suffix or 'extensionless'} file is not edit data.",
                         hint="Pass a parquet or JSONL file, or a folder (a `uniedit synth` output, parquet shards, "
                              "or a datasets.save_to_disk folder).")
    if local.is_dir():
        if (local / "dataset_dict.json").exists() or (local / "state.json").exists():
            with _read_errors(path):
                loaded = datasets.load_from_disk(str(local))
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            return splits, local, "datasets.save_to_disk folder"
        synth = (local / SYNTH_MANIFEST).exists()
        files = _parquet_files(local)
        if synth and not files:
            raise UsageError(f"--data {path!r}: a `uniedit synth` folder with no finished shards yet.",
                             hint="Let `uniedit synth` finish (rerun it to resume), then train.")
        if files:
            by_split: dict[str, list[Path]] = {}
            for file in files:
                by_split.setdefault(_split_of(str(file.relative_to(local))), []).append(file)
            return dict(_load_parquet(by_split, path)), local, "uniedit synth folder" if synth else "parquet folder"
        if (local / "metadata.jsonl").exists():
            return dict(_load_json(local / "metadata.jsonl", path, notes)), local, "JSONL folder"
        raise UsageError(f"--data {path!r}: the folder holds no edit data (no parquet files, metadata.jsonl, "
                         "uniedit-data.json or save_to_disk dataset).")
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", path):
        try:
            loaded = datasets.load_dataset(path)
        except Exception as exc:  # noqa: BLE001 - offline, gated, unknown: one message with the fix
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UsageError(
                f"--data {path!r}: could not load the hub dataset ({first}).",
                hint=f"On a machine with network run `hf download {path} --repo-type dataset --local-dir <folder>` "
                     "and pass --data <folder>.",
            ) from None
        return dict(loaded), None, "hub dataset"
    raise UsageError(f"--data {path!r}: no such file or folder.",
                     hint="Pass a `uniedit synth` folder, a parquet folder or file, or a hub dataset id (org/name).")


# --- columns ----------------------------------------------------------------------------------

def map_columns(column_names: list[str], *, image: str | None, instruction: str | None, target: str | None,
                source: str) -> EditColumns:
    """The three columns to train on, or a usage error that names the missing column and its flag."""
    explicit = {"image": image, "instruction": instruction, "target": target}
    listing = ", ".join(column_names) or "none"
    for role, name in explicit.items():
        if name is not None and name not in column_names:
            raise UsageError(f"{ROLE_FLAGS[role]} {name!r}: data {source!r} has no such column (its columns: {listing}).")
    best: tuple[int, str, dict[str, str]] | None = None
    for layout, names in LAYOUTS:
        chosen = {role: explicit[role] or default for role, default in zip(ROLES, names)}
        found = sum(chosen[role] in column_names for role in ROLES)
        if found == 3:
            custom = any(explicit[role] and explicit[role] != default for role, default in zip(ROLES, names))
            return EditColumns(chosen["image"], chosen["instruction"], chosen["target"], "custom" if custom else layout)
        if best is None or found > best[0]:
            best = (found, layout, chosen)
    assert best is not None
    _, layout, chosen = best
    role = next(r for r in ROLES if chosen[r] not in column_names)
    raise UsageError(
        f"data {source!r} has no {ROLE_WORDS[role]} column {chosen[role]!r} (its columns: {listing}).",
        hint=f"Map it with {ROLE_FLAGS[role]} NAME.",
    )


def _check_column_types(ds, columns: EditColumns, source: str) -> None:
    import datasets

    for role, name in zip(ROLES, columns.as_list()):
        feature = ds.features[name]
        if role == "instruction":
            if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
                raise UsageError(f"data {source!r}: the instruction column {name!r} holds {feature}, not text.",
                                 hint=f"Map the right column with {ROLE_FLAGS[role]} NAME.")
            continue
        ok = isinstance(feature, datasets.Image) or (
            isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "binary", "large_binary"))
        if isinstance(feature, dict):
            ok = "bytes" in feature or "path" in feature
        if not ok:
            raise UsageError(f"data {source!r}: the {ROLE_WORDS[role]} column {name!r} holds {feature}, not images "
                             "(an Image feature, image bytes or image paths).",
                             hint=f"Map the right column with {ROLE_FLAGS[role]} NAME.")


def _undecoded(ds, columns: EditColumns):
    """Only the three columns, image columns left as bytes/paths (decoded by EditRows, failures counted)."""
    import datasets

    ds = ds.select_columns(columns.as_list())
    for name in (columns.image, columns.target):
        if isinstance(ds.features[name], datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def _check_targets_present(ds, columns: EditColumns, source: str, probe: int = 256) -> None:
    """Data whose target column is empty (a `uniedit synth --editor none` output: instructions,
    no edited images) cannot train an editor; say so before the model loads."""
    head = ds.select_columns([columns.target])[:min(probe, len(ds))][columns.target]

    def empty(value) -> bool:
        if isinstance(value, dict):
            return not value.get("bytes") and not value.get("path")
        return value is None or (isinstance(value, (str, bytes)) and not value)

    if head and all(empty(v) for v in head):
        raise UsageError(
            f"--data {source!r}: the target column {columns.target!r} is empty in the first {len(head)} rows, so there "
            "are no edited images to learn from (a `uniedit synth --editor none` output holds instructions only).",
            hint="Make targets with `uniedit synth --editor MODEL` (the built-in world renders them exactly), or map "
                 "another column with --target-column.")


# --- loading ----------------------------------------------------------------------------------

def load_edit_data(options, *, seed: int) -> EditData:
    """Open ``options.path`` (a :class:`~uniedit_cli.train.config.DataOptions`), map its columns
    and split off validation rows; raises a usage error before any training on bad input."""
    source = str(options.path)
    notes: list[str] = []
    splits, base_dir, kind = open_splits(source, notes)
    if not splits:
        raise UsageError(f"--data {source!r} holds no splits.")
    if options.split in splits:
        split = options.split
    elif len(splits) == 1:
        split = next(iter(splits))
    else:
        raise UsageError(f"--split {options.split!r}: data {source!r} has the splits {', '.join(splits)}.",
                         hint="Pass --split NAME.")
    train = splits[split]
    columns = map_columns(list(train.column_names), image=options.image_column,
                          instruction=options.instruction_column, target=options.target_column, source=source)
    _check_column_types(train, columns, source)
    if len(train) == 0:
        raise UsageError(f"data {source!r} ({kind}) has no rows in split {split!r}: nothing to train on.")
    train = _undecoded(train, columns)
    _check_targets_present(train, columns, source)
    val, val_from = None, ""
    if options.val_size > 0:
        val_split = next((name for name in VALIDATION_SPLITS if name in splits and name != split), None)
        if val_split is not None and len(splits[val_split]) > 0:
            held = splits[val_split]
            missing = [c for c in columns.as_list() if c not in held.column_names]
            if missing:
                raise UsageError(f"data {source!r}: split {val_split!r} lacks the column(s) {', '.join(missing)}.")
            val = _undecoded(held, columns).select(range(min(options.val_size, len(held))))
            val_from = f"split {val_split!r}"
        else:
            if len(train) <= options.val_size:
                raise UsageError(
                    f"data {source!r} has {len(train)} rows; holding out --val-size {options.val_size} for validation "
                    "leaves none to train on.", hint="Pass a smaller --val-size, or --val-size 0 for no validation.")
            # a fixed, seeded choice: a resumed run holds out the same rows
            picked = sorted(random.Random(f"val:{seed}").sample(range(len(train)), options.val_size))
            chosen = set(picked)
            val = train.select(picked)
            train = train.select([i for i in range(len(train)) if i not in chosen])
            val_from = f"held out from {split!r}"
    if options.max_rows is not None and len(train) > options.max_rows:
        train = train.select(range(options.max_rows))
        notes.append(f"using the first {options.max_rows} training rows (--max-rows)")
    return EditData(train=train, val=val, columns=columns, source=source, base_dir=base_dir, val_from=val_from,
                    notes=notes)


# --- rows ---------------------------------------------------------------------------------------

def row_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one row in one epoch (independent of batch, rank and process count)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BadRow(Exception):
    pass


def decode_image(value: Any, base_dir: Path | None):
    """An RGB PIL image from an Image-feature dict, raw bytes or a path; BadRow when it cannot be read."""
    from PIL import Image

    from uniedit_cli.io import load_image, max_image_pixels, to_rgb

    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, path = bytes(value), None
    elif isinstance(value, str):
        data, path = None, value
    elif value is None:
        raise BadRow("no image")
    else:  # a decoded PIL image (a dataset that was not cast), passed through
        try:
            return to_rgb(value)
        except Exception as exc:  # noqa: BLE001
            raise BadRow(f"unreadable image ({exc})") from None
    if data:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_image_pixels()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                img.load()
            return to_rgb(img)
        except Exception as exc:  # noqa: BLE001 - any decoder error makes the row bad
            raise BadRow(f"image does not decode ({type(exc).__name__}: {exc})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    if path:
        file = Path(path).expanduser()
        if not file.is_absolute() and base_dir is not None:
            file = base_dir / file
        try:
            return load_image(file)
        except InputError as exc:
            raise BadRow(str(exc)) from None
    raise BadRow("empty image cell")


def square(images: list, resolution: int, crop: str, rng: random.Random | None, flip: bool) -> list:
    """Make each image ``resolution`` x ``resolution`` with the same crop and flip for all of them
    (a source and its target must stay aligned, as diffusers' example transforms them together)."""
    from PIL import Image

    out = []
    # one draw for the whole row, as fractions, so images of different sizes crop the same region
    fx = rng.random() if (crop == "random" and rng is not None) else 0.5
    fy = rng.random() if (crop == "random" and rng is not None) else 0.5
    for img in images:
        if crop == "resize":
            img = img.resize((resolution, resolution), Image.BICUBIC)
        else:
            scale = resolution / min(img.size)
            w, h = max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))
            img = img.resize((w, h), Image.BICUBIC)
            left, top = round((w - resolution) * fx), round((h - resolution) * fy)
            img = img.crop((left, top, left + resolution, top + resolution))
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(img)
    return out


class EditRows:
    """Map-style dataset of square edit rows: ``{index, row_seed, source, instruction, target}``.

    Duck-typed for ``torch.utils.data.DataLoader`` (no torch import here). ``set_epoch`` changes
    the per-row randomness; worker processes get it when the next epoch's iterator starts them.
    """

    def __init__(self, table, columns: EditColumns, *, base_dir: Path | None, resolution: int, crop: str,
                 random_flip: bool, seed: int, skip_log: Path | None = None, epoch: int = 0):
        self.table = table
        self.columns = columns
        self.base_dir = base_dir
        self.resolution = int(resolution)
        self.crop = crop
        self.random_flip = bool(random_flip)
        self.seed = int(seed)
        self.skip_log = skip_log
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.table)

    def decode(self, index: int) -> tuple[Any, str, Any]:
        row = self.table[int(index)]
        instruction = row[self.columns.instruction]
        if not isinstance(instruction, str) or not instruction.strip():
            raise BadRow("empty instruction")
        source = decode_image(row[self.columns.image], self.base_dir)
        target = decode_image(row[self.columns.target], self.base_dir)
        return source, instruction.strip(), target

    def __getitem__(self, index: int) -> dict:
        seed = row_seed(self.seed, self.epoch, index)
        n = len(self.table)
        for offset in range(min(MAX_CONSECUTIVE_BAD, n)):
            candidate = (index + offset) % n
            try:
                source, instruction, target = self.decode(candidate)
                break
            except BadRow as exc:
                self._record(candidate, str(exc))
        else:
            raise UniEditError(
                f"{min(MAX_CONSECUTIVE_BAD, n)} consecutive rows from row {index} could not be used (bad images or empty "
                "instructions); the data looks broken.", hint=f"See {self.skip_log} for the reasons." if self.skip_log else None)
        rng = random.Random(f"crop:{seed}")
        flip = self.random_flip and rng.random() < 0.5
        source, target = square([source, target], self.resolution, self.crop, rng, flip)
        return {"index": int(index), "row_seed": seed, "source": source, "instruction": instruction, "target": target}

    def _record(self, index: int, reason: str) -> None:
        if self.skip_log is None:
            return
        from uniedit_cli.io import append_jsonl

        append_jsonl(self.skip_log, {"row": int(index), "epoch": self.epoch, "reason": reason})


def collate_rows(rows: list[dict]) -> dict:
    """Lists, not tensors: each family's adapter turns images and text into its own inputs."""
    return {key: [row[key] for row in rows] for key in rows[0]}


def skipped_rows(skip_log: Path) -> dict[int, str]:
    """Distinct rows recorded as skipped (any epoch, any rank) -> their last reason."""
    found: dict[int, str] = {}
    if not skip_log.exists():
        return found
    for line in skip_log.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "row" in record:
            found[int(record["row"])] = str(record.get("reason", ""))
    return found


def validation_rows(data: EditData, *, resolution: int, crop: str, seed: int, skip_log: Path | None) -> list[dict]:
    """Decoded, squared validation rows (center crop, no flip: the same pixels every time)."""
    if data.val is None:
        return []
    rows = []
    holder = EditRows(data.val, data.columns, base_dir=data.base_dir, resolution=resolution,
                      crop="resize" if crop == "resize" else "center", random_flip=False, seed=seed)
    for i in range(len(data.val)):
        try:
            source, instruction, target = holder.decode(i)
        except BadRow as exc:
            if skip_log is not None:
                from uniedit_cli.io import append_jsonl

                append_jsonl(skip_log, {"validation_row": i, "reason": str(exc)})
            continue
        source, target = square([source, target], resolution, holder.crop, None, False)
        rows.append({"index": i, "row_seed": row_seed(seed, -1, i), "source": source, "instruction": instruction,
                     "target": target})
    return rows
