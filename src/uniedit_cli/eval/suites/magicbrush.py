"""MagicBrush (OSU-NLP-Group/MagicBrush): instruction editing, single- and multi-turn, scored
as the official ``evaluation/image_eval.py`` does, plus the Emu Edit convention.

Data layouts (``--data``):

1. The hub dev split saved locally (``osunlp/MagicBrush``, 528 turns): a folder (or file) of
   parquet shards with columns ``img_id, turn_index, source_img, mask_img, instruction,
   target_img`` (images as ``{"bytes", "path"}`` structs), e.g. from
   ``hf download osunlp/MagicBrush --repo-type dataset --include "data/dev-*" --local-dir D``;
   shards named ``<split>-*.parquet`` are picked by the ``split`` option (default ``dev``); a
   ``datasets.save_to_disk`` folder works too. The images are written once into a cache
   folder laid out like the test set (``images/<img_id>/<img_id>-input.png``,
   ``-output<t>.png``, ``-mask<t>.png``; a turn's source that equals the previous target is
   not written twice) with a ``manifest.json``; later runs read only the manifest. The folder
   is the ``cache_dir`` option, default ``$UNIEDIT_HOME/cache/magicbrush/<fingerprint>``
   (``~/.cache/uniedit`` when UNIEDIT_HOME is unset). The hub split has no captions: the
   caption metrics need ``local_descriptions.json`` / ``global_descriptions.json`` next to the
   data or the ``local_captions`` / ``global_captions`` options.
2. The official test set (535 sessions, 1,053 turns; the password-protected zip linked from
   the MagicBrush README), unzipped. Assumed layout, as read by the official
   ``edit_cli_single_multi_turn.py`` and ``image_eval.py``::

       <root>/edit_sessions.json        {img_id: [{"input", "mask", "output", "instruction"}, ...]}
       <root>/images/<img_id>/<img_id>-input.png, <img_id>-mask<t>.png, <img_id>-output<t>.png
       <root>/local_descriptions.json   {img_id: {image file name: caption}} (CLIP-T captions)
       <root>/global_descriptions.json  {img_id: {image file name: caption}}

   ``--data`` may point at ``<root>``, at ``<root>/images`` or at a folder holding ``test/``.
   Turn t's ``input`` is ``<img_id>-output<t-1>.png`` for t > 1 (the ground-truth previous
   image). ``edit_turns.json`` (a flat list of the same dicts) is accepted instead of
   ``edit_sessions.json``; caption files may also be named ``local_captions.json`` etc.

Sample ids are ``<img_id>-<turn>`` (turn from 1). Modes (the ``mode`` option):

- ``single`` (default; the paper's single-turn / image_eval.py's "all turn"): every turn is
  edited from the ground-truth previous image (``inputs["image"]`` is set) and every turn is
  scored.
- ``multi`` (multi-turn / "final turn"): each session is chained on the model's own outputs
  and only its final turn is scored. Turn 1 has ``inputs["image"]`` set; a later turn has
  ``inputs["image"] = None`` and ``meta["previous"]`` = the id of the turn before. The runner
  must generate in waves (:meth:`MagicBrushSuite.turn_waves`: all turn-1 samples, then all
  turn-2 samples, ...) and, before a chained sample, take its input image from the previous
  sample's output (:meth:`MagicBrushSuite.chained_inputs` does it, returning None when that
  output is missing: then the sample fails and the session's final turn is reported as
  "no output image"). ``meta["final"]`` marks the scored turns.

Metrics: ``l1, l2, clip-i, dino, clip-t`` (convention ``magicbrush-official``: against the
ground-truth target, CLIP-T with the target's local caption) and ``clip-dir, clip-out,
clip-im, l1-src, dino-src`` (convention ``emu-edit``: CLIP_dir and CLIP_out with the global
captions of source and target, CLIP_im / L1 / DINO against the source: the turn's
ground-truth input in single-turn mode, the session's original input in multi-turn mode).
``metric_conventions`` maps each name to its convention, and ``SuiteResult.breakdown`` carries
the numbers grouped under each convention's name. A missing or unreadable output is reported
per sample (never fatal); averages are over the scored samples, with counts in
``breakdown["counts"]``.

Options (``MagicBrushSuite(data, **options)``): ``mode`` (single | multi), ``split`` (hub
layout, default dev), ``cache_dir`` (hub layout image cache), ``local_captions`` /
``global_captions`` (caption JSON files), ``clip_weights`` / ``dino_weights`` (checkpoint
files; default: the hub / torch hub caches), ``dtype`` (fp32 default; bf16 / fp16),
``batch_size``, ``workers``, ``embedding_cache`` (folder for reference embeddings kept between
runs; default ``$UNIEDIT_HOME/cache/metric-embeddings``, False disables), ``scorer`` (a ready
:class:`~uniedit_cli.eval.metrics.ImageScorer`, e.g. shared between suites), ``random_weights``
(tests only: real architectures, random weights), ``progress`` (a callable given the number of
samples just scored, batch by batch: an increment for a progress bar).

Deviations from image_eval.py, none of which changes a number beyond float rounding: the CLIP
model runs in fp32 where ``clip.load`` on a GPU runs fp16; captions over 77 tokens are
truncated where ``clip.tokenize`` raises; L1/L2 are exact rather than float32 sums.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from uniedit_cli.errors import UsageError
from uniedit_cli.eval.suites.base import Sample, Suite, SuiteResult

MB_CONVENTION = "magicbrush-official"
EMU_CONVENTION = "emu-edit"
MANIFEST = "manifest.json"
_MANIFEST_VERSION = 1
_SPLITS = ("train", "dev", "validation", "test")
_LOCAL_CAPTION_FILES = ("local_descriptions.json", "local_captions.json", "local_description.json")
_GLOBAL_CAPTION_FILES = ("global_descriptions.json", "global_captions.json", "global_description.json")


@dataclass
class _Turn:
    session: str
    turn: int
    instruction: str
    source: str  # ground-truth input of this turn (path)
    target: str  # ground-truth output (path)
    mask: str | None
    source_name: str  # official file names, the keys of the caption files
    target_name: str


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _image_ext(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "png").lower()
    except Exception:
        return ".png"
    return {"jpeg": ".jpg"}.get(fmt, "." + fmt)


def _image_bytes(value: Any, base: Path) -> bytes | None:
    """A parquet image cell: ``{"bytes", "path"}`` (datasets' Image feature) or raw bytes."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        path = value.get("path")
        if path:
            for candidate in (Path(path), base / path):
                if candidate.is_file():
                    return candidate.read_bytes()
    return None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"MagicBrush {what} {str(path)!r} is not readable JSON ({exc}).") from None


def _caption_lookup(captions: Any, session: str, name: str) -> str | None:
    """Caption files map {img_id: {file name: caption}}; a flat {file name: caption} works too."""
    if not isinstance(captions, dict):
        return None
    inner = captions.get(session)
    if isinstance(inner, dict):
        value = inner.get(name)
    else:
        value = captions.get(name)
    return value if isinstance(value, str) and value.strip() else None


class MagicBrushSuite(Suite):
    name: ClassVar[str] = "magicbrush"
    task: ClassVar[str] = "edit"
    output_kind: ClassVar[str] = "image"
    convention: ClassVar[str] = MB_CONVENTION
    default_metrics: ClassVar[tuple[str, ...]] = ("l1", "l2", "clip-i", "dino", "clip-t")
    all_metrics: ClassVar[tuple[str, ...]] = ("l1", "l2", "clip-i", "dino", "clip-t",
                                              "clip-dir", "clip-out", "clip-im", "l1-src", "dino-src")
    metric_conventions: ClassVar[dict[str, str]] = {
        "l1": MB_CONVENTION, "l2": MB_CONVENTION, "clip-i": MB_CONVENTION, "dino": MB_CONVENTION,
        "clip-t": MB_CONVENTION, "clip-dir": EMU_CONVENTION, "clip-out": EMU_CONVENTION,
        "clip-im": EMU_CONVENTION, "l1-src": EMU_CONVENTION, "dino-src": EMU_CONVENTION,
    }
    option_help: ClassVar[dict[str, str]] = {
        "mode": "single (default: every turn edited from the ground-truth previous image, all turns scored) or "
                "multi (each session chained on the model's own outputs, final turns scored)",
        "split": "hub layout: which split's shards to read (default dev)",
        "local_captions": "local_descriptions.json for clip-t (default: found next to the data)",
        "global_captions": "global_descriptions.json for clip-dir / clip-out (default: found next to the data)",
        "embedding_cache": "folder keeping reference embeddings between runs "
                           "(default $UNIEDIT_HOME/cache/metric-embeddings; off disables)",
        "metric_dtype": "CLIP / DINO precision: fp32 (default, comparable with published numbers), bf16 or fp16",
        "metric_batch_size": "images per CLIP / DINO forward (default 64 on CUDA, 8 on CPU)",
        "workers": "image decoding threads while scoring (default min(8, CPUs))",
    }
    data_help: ClassVar[str] = (
        "MagicBrush needs --data: either the hub dev split (on a machine with network: "
        "`hf download osunlp/MagicBrush --repo-type dataset --include \"data/dev-*\" --local-dir DIR`, copy DIR here "
        "and pass --data DIR; add local_descriptions.json / global_descriptions.json to DIR for the caption metrics), "
        "or the official test set (the password-protected zip linked from github.com/OSU-NLP-Group/MagicBrush, "
        "unzipped: pass the folder holding edit_sessions.json and images/)."
    )

    def __init__(self, data: Path | None, **options: Any):
        super().__init__(data, **options)
        mode = str(options.get("mode") or "single").lower()
        aliases = {"single": "single", "single-turn": "single", "all-turn": "single", "multi": "multi",
                   "multi-turn": "multi", "final-turn": "multi"}
        if mode not in aliases:
            raise UsageError(f"MagicBrush mode {mode!r}: expected single (single-turn) or multi (multi-turn).")
        self.mode = aliases[mode]
        self.split = str(options.get("split") or "dev")
        self.cache_dir = Path(options["cache_dir"]).expanduser() if options.get("cache_dir") else None
        self.local_captions_path = options.get("local_captions")
        self.global_captions_path = options.get("global_captions")
        self._scorer = options.get("scorer")
        self._samples: list[Sample] | None = None
        self.layout: str | None = None
        self._where: Any = None
        self._hub_root: Path | None = None
        if self.data is not None:
            try:
                self._locate()
            except UsageError:
                pass  # samples() raises it with the full message
        if (self.data is None or self.layout is not None) and not self._caption_files()[0]:
            # no target captions (the hub split ships none): default to the metrics it can give
            self.default_metrics = ("l1", "l2", "clip-i", "dino")

    # --- data ---------------------------------------------------------------------------

    def hub_data(self) -> tuple[str, tuple[str, ...]]:
        """The hub dataset read when no --data is given (from the hub cache, or downloaded)."""
        return "osunlp/MagicBrush", (f"data/{self.split}-*",)

    def _data_root(self) -> Path:
        if self.data is not None:
            return Path(os.path.expanduser(str(self.data)))
        if self._hub_root is None:
            from uniedit_cli.eval.suites.loading import hub_snapshot

            repo, patterns = self.hub_data()
            snapshot = hub_snapshot(repo, patterns)
            if snapshot is None:
                raise UsageError(f"MagicBrush: no --data given, and the hub dataset {repo} is neither in the hub cache "
                                 f"nor downloadable here (offline?).", hint=self.data_help)
            self._hub_root = snapshot
        return self._hub_root

    def _locate(self) -> None:
        root = self._data_root()
        if not root.exists():
            raise UsageError(f"MagicBrush data {str(root)!r}: no such file or folder.", hint=self.data_help)
        if root.is_file():
            if root.suffix == ".parquet":
                self.layout, self._where = "parquet", [root]
                return
            if root.name in ("edit_sessions.json", "edit_turns.json"):
                root = root.parent
            else:
                raise UsageError(f"MagicBrush data {str(root)!r} is neither a parquet file nor a folder.",
                                 hint=self.data_help)
        for candidate in (root, root / "test", root.parent if root.name == "images" else None):
            if candidate is not None and any((candidate / n).is_file() for n in ("edit_sessions.json", "edit_turns.json")):
                self.layout, self._where = "zip", candidate
                return
        shards = sorted(root.rglob("*.parquet"))
        if shards:
            self.layout, self._where = "parquet", self._pick_split(shards, root)
            return
        if (root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file():
            self.layout, self._where = "arrow", root
            return
        raise UsageError(
            f"MagicBrush data {str(root)!r} holds neither edit_sessions.json (the test-set layout) nor parquet shards "
            f"(the hub layout).", hint=self.data_help)

    def _pick_split(self, shards: list[Path], root: Path) -> list[Path]:
        def split_of(p: Path) -> str | None:
            for part in (p.name, *[q.name for q in p.relative_to(root).parents if q.name]):
                for s in _SPLITS:
                    if part == s or part.startswith(s + "-") or part.startswith(s + "_") or part.startswith(s + "."):
                        return s
            return None

        named = {p: split_of(p) for p in shards}
        wanted = [p for p, s in named.items() if s == self.split]
        if wanted:
            return wanted
        if any(s is not None for s in named.values()):
            found = sorted({s for s in named.values() if s})
            raise UsageError(f"MagicBrush data {str(root)!r} has no {self.split!r} shards (found: {', '.join(found)}).",
                             hint="Pick one with the split option, or download the dev split (data/dev-*).")
        return shards

    def _caption_files(self) -> tuple[Path | None, Path | None]:
        def find(option, names):
            if option:
                p = Path(os.path.expanduser(str(option)))
                if not p.is_file():
                    raise UsageError(f"MagicBrush caption file {str(p)!r}: no such file.")
                return p
            roots = []
            if self.layout == "zip":
                roots = [self._where]
            elif self.data is not None or self._hub_root is not None:
                d = self._data_root()
                roots = [d if d.is_dir() else d.parent]
                roots.append(roots[0].parent)
            for r in roots:
                for n in names:
                    if (r / n).is_file():
                        return r / n
            return None

        return find(self.local_captions_path, _LOCAL_CAPTION_FILES), find(self.global_captions_path, _GLOBAL_CAPTION_FILES)

    def _turns_from_zip(self, root: Path) -> list[list[_Turn]]:
        if (root / "edit_sessions.json").is_file():
            raw = _read_json(root / "edit_sessions.json", "edit_sessions.json")
            if not isinstance(raw, dict):
                raise UsageError(f"MagicBrush {str(root / 'edit_sessions.json')!r}: expected {{img_id: [turns]}}.")
            sessions = list(raw.items())
        else:
            raw = _read_json(root / "edit_turns.json", "edit_turns.json")
            grouped: dict[str, list] = {}
            for turn in raw if isinstance(raw, list) else []:
                grouped.setdefault(str(turn.get("input", "")).split("-")[0], []).append(turn)
            sessions = [(k, sorted(v, key=lambda t: _turn_number(t.get("output", "")))) for k, v in grouped.items()]
        images = root / "images" if (root / "images").is_dir() else root
        out: list[list[_Turn]] = []
        for sid, turns in sessions:
            sid = str(sid)
            if not isinstance(turns, list) or not turns:
                continue
            folder = images / (str(turns[0].get("input", sid)).split("-")[0] or sid)
            if not folder.is_dir():
                folder = images / sid
            session: list[_Turn] = []
            for t, turn in enumerate(turns, start=1):
                try:
                    src, tgt, instr = turn["input"], turn["output"], turn["instruction"]
                except (KeyError, TypeError):
                    raise UsageError(f"MagicBrush session {sid!r} turn {t}: expected input, output and instruction "
                                     f"keys, got {turn!r:.200}.") from None
                mask = turn.get("mask")
                session.append(_Turn(sid, t, str(instr), str(folder / src), str(folder / tgt),
                                     str(folder / mask) if mask else None, str(src), str(tgt)))
            out.append(session)
        if not out:
            raise UsageError(f"MagicBrush data {str(root)!r}: no edit sessions found.", hint=self.data_help)
        first = out[0][0]
        if not Path(first.source).is_file():
            raise UsageError(f"MagicBrush data {str(root)!r}: image {first.source!r} is missing (expected "
                             f"images/<img_id>/<img_id>-input.png next to edit_sessions.json).", hint=self.data_help)
        return out

    def _fingerprint(self) -> str:
        files = self._where if self.layout == "parquet" else sorted(Path(self._where).rglob("*.arrow"))
        h = hashlib.sha1(f"v{_MANIFEST_VERSION}|{self.layout}|{self.split}".encode())
        for f in files:
            st = Path(f).stat()
            h.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        home = os.environ.get("UNIEDIT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "uniedit")
        return Path(home) / "cache" / "magicbrush" / self._fingerprint()[:16]

    def _iter_rows(self):
        """Rows of the hub layout, images left as bytes (never decoded here)."""
        columns = ["img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img"]
        if self.layout == "parquet":
            import pyarrow.parquet as pq

            for shard in self._where:
                pf = pq.ParquetFile(shard)
                names = set(pf.schema_arrow.names)
                missing = [c for c in columns if c not in names and c != "mask_img"]
                if missing:
                    raise UsageError(f"MagicBrush shard {str(shard)!r} lacks columns {missing} (has {sorted(names)}).",
                                     hint=self.data_help)
                for batch in pf.iter_batches(batch_size=16, columns=[c for c in columns if c in names]):
                    yield from batch.to_pylist()
        else:
            import datasets

            ds = datasets.load_from_disk(str(self._where))
            if isinstance(ds, datasets.DatasetDict):
                if self.split not in ds:
                    raise UsageError(f"MagicBrush data {str(self._where)!r} has no {self.split!r} split "
                                     f"(has {', '.join(ds)}).")
                ds = ds[self.split]
            for batch in ds.data.to_batches(max_chunksize=16):
                yield from batch.to_pylist()

    def _turns_from_hub(self) -> list[list[_Turn]]:
        cache = self.resolved_cache_dir()
        fingerprint = self._fingerprint()
        manifest_path = cache / MANIFEST
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                manifest = {}
            if manifest.get("fingerprint") == fingerprint and manifest.get("version") == _MANIFEST_VERSION:
                sessions = [[_Turn(**{**t, "source": str(cache / t["source"]), "target": str(cache / t["target"]),
                                      "mask": str(cache / t["mask"]) if t["mask"] else None}) for t in s]
                            for s in manifest["sessions"]]
                if all(Path(t.source).is_file() and Path(t.target).is_file() for s in sessions for t in s):
                    return sessions  # else some cached image was deleted: extract again
        base = Path(self._where[0]).parent if self.layout == "parquet" else Path(self._where)
        rows: dict[str, dict[int, _Turn]] = {}
        target_hash: dict[tuple[str, int], tuple[str, str]] = {}  # (session, turn) -> (sha1, relpath)
        pending_sources: list[tuple[str, int, bytes]] = []
        for row in self._iter_rows():
            sid = str(row["img_id"])
            t = int(row["turn_index"])
            folder = Path("images") / sid
            tgt = _image_bytes(row.get("target_img"), base)
            src = _image_bytes(row.get("source_img"), base)
            if tgt is None or src is None:
                raise UsageError(f"MagicBrush row {sid}-{t}: source or target image has no bytes.", hint=self.data_help)
            tgt_rel = folder / f"{sid}-output{t}{_image_ext(tgt)}"
            _write_once(cache / tgt_rel, tgt)
            target_hash[(sid, t)] = (hashlib.sha1(tgt).hexdigest(), str(tgt_rel))
            mask = _image_bytes(row.get("mask_img"), base)
            mask_rel = None
            if mask is not None:
                mask_rel = folder / f"{sid}-mask{t}{_image_ext(mask)}"
                _write_once(cache / mask_rel, mask)
            rows.setdefault(sid, {})[t] = _Turn(sid, t, str(row.get("instruction") or ""), "", str(tgt_rel),
                                                str(mask_rel) if mask_rel else None,
                                                f"{sid}-input.png" if t == 1 else f"{sid}-output{t - 1}.png",
                                                f"{sid}-output{t}.png")
            pending_sources.append((sid, t, src))
            if len(pending_sources) > 64:
                self._place_sources(pending_sources, rows, target_hash, cache, final=False)
        self._place_sources(pending_sources, rows, target_hash, cache, final=True)
        sessions = [[turns[k] for k in sorted(turns)] for turns in rows.values()]
        if not sessions:
            raise UsageError(f"MagicBrush data {str(self.data)!r}: no rows.", hint=self.data_help)
        manifest = {"version": _MANIFEST_VERSION, "fingerprint": fingerprint, "data": str(self._data_root()),
                    "split": self.split,
                    "sessions": [[{**vars(t)} for t in s] for s in sessions]}
        _atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
        return [[_Turn(**{**vars(t), "source": str(cache / t.source), "target": str(cache / t.target),
                          "mask": str(cache / t.mask) if t.mask else None}) for t in s] for s in sessions]

    @staticmethod
    def _place_sources(pending, rows, target_hash, cache: Path, *, final: bool) -> None:
        """A turn's source is usually the previous turn's target: point at that file instead of
        writing the same image twice (kept pending until the previous target is known)."""
        keep = []
        for sid, t, data in pending:
            digest = hashlib.sha1(data).hexdigest()
            prev = target_hash.get((sid, t - 1)) if t > 1 else None
            if prev is not None and prev[0] == digest:
                rows[sid][t].source = prev[1]
            elif t > 1 and prev is None and not final:
                keep.append((sid, t, data))
                continue
            else:
                name = f"{sid}-input{_image_ext(data)}" if t == 1 else f"{sid}-input{t}{_image_ext(data)}"
                rel = Path("images") / sid / name
                _write_once(cache / rel, data)
                rows[sid][t].source = str(rel)
        pending[:] = keep

    def sessions(self) -> list[list[_Turn]]:
        self._locate()
        if self.layout == "zip":
            return self._turns_from_zip(Path(self._where))
        return self._turns_from_hub()

    def samples(self) -> list[Sample]:
        if self._samples is not None:
            return self._samples
        sessions = self.sessions()
        local_path, global_path = self._caption_files()
        local = _read_json(local_path, "caption file") if local_path else None
        global_ = _read_json(global_path, "caption file") if global_path else None
        out: list[Sample] = []
        for session in sessions:
            n = len(session)
            first = session[0]
            for turn in session:
                sid = f"{turn.session}-{turn.turn}"
                chained = self.mode == "multi" and turn.turn > 1
                ref: dict[str, Any] = {
                    "target": turn.target,
                    "source": turn.source,
                    "session_source": first.source,
                    "mask": turn.mask,
                    "caption": _caption_lookup(local, turn.session, turn.target_name),
                    "target_global_caption": _caption_lookup(global_, turn.session, turn.target_name),
                    "source_global_caption": _caption_lookup(global_, turn.session, turn.source_name),
                    "session_source_global_caption": _caption_lookup(global_, turn.session, first.source_name),
                }
                meta = {"session": turn.session, "turn": turn.turn, "turns": n, "final": turn.turn == n,
                        "mode": self.mode, "previous": f"{turn.session}-{turn.turn - 1}" if chained else None,
                        "target_name": turn.target_name}
                out.append(Sample(id=sid, task="edit",
                                  inputs={"image": None if chained else turn.source, "instruction": turn.instruction},
                                  reference=ref, meta=meta))
        self._samples = out
        return out

    # --- multi-turn helpers for the runner ---------------------------------------------------

    @staticmethod
    def turn_waves(samples: list[Sample]) -> list[list[Sample]]:
        """Samples grouped by turn (wave 1 = every session's first turn, ...): in multi-turn
        mode a wave can only run once the previous wave's outputs exist."""
        waves: dict[int, list[Sample]] = {}
        for s in samples:
            waves.setdefault(int(s.meta.get("turn", 1)), []).append(s)
        return [waves[k] for k in sorted(waves)]

    @staticmethod
    def chained_inputs(sample: Sample, outputs: dict[str, Any]) -> dict[str, Any] | None:
        """The inputs to generate ``sample`` with: its own for an unchained sample; for a
        chained one (multi-turn, turn > 1) the previous turn's output image as the image; None
        when that output does not exist (the sample cannot run)."""
        previous = sample.meta.get("previous")
        if not previous:
            return dict(sample.inputs)
        path = _output_path(outputs.get(previous))
        if path is None or not Path(path).is_file():
            return None
        return {**sample.inputs, "image": path}

    # --- scoring ------------------------------------------------------------------------

    def scorer(self, device: str = "auto"):
        """The ImageScorer built from the options (``clip_weights``, ``dino_weights``, ``dtype``,
        ``batch_size``, ``workers``, ``random_weights``, ``embedding_cache``) or the one passed
        as ``scorer``. Reference embeddings (targets, sources, captions) persist between runs in
        ``embedding_cache`` (default ``$UNIEDIT_HOME/cache/metric-embeddings``; False disables),
        so a second model evaluated on the same data only embeds its own outputs."""
        if self._scorer is None:
            from uniedit_cli.eval.metrics.image import ImageScorer

            o = self.options
            cache = o.get("embedding_cache", True)
            if cache is True or cache is None or str(cache).lower() in ("1", "true", "yes", "on"):
                home = os.environ.get("UNIEDIT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "uniedit")
                cache = Path(home) / "cache" / "metric-embeddings"
            elif cache is False or str(cache).lower() in ("", "0", "false", "no", "none", "off"):
                cache = None
            self._scorer = ImageScorer(
                device=device, dtype=o.get("metric_dtype") or o.get("dtype") or "fp32",
                batch_size=_int_option(o, "metric_batch_size") or _int_option(o, "batch_size"),
                clip_weights=o.get("clip_weights"), dino_weights=o.get("dino_weights"),
                random_weights=_flag(o.get("random_weights")), workers=_int_option(o, "workers"), cache_dir=cache)
        return self._scorer

    def score(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str], *,
              device: str = "auto", judge=None) -> SuiteResult:
        from uniedit_cli.eval.metrics.image import EditPair, check_metrics, mean_metrics, score_edits

        metrics = check_metrics(metrics or self.default_metrics)
        unknown = [m for m in metrics if m not in self.all_metrics]
        if unknown:
            raise UsageError(f"MagicBrush has no metric {unknown[0]!r}.", hint=f"Choose from: {', '.join(self.all_metrics)}.")
        scored = [s for s in samples if self.mode == "single" or s.meta.get("final")]
        multi = self.mode == "multi"
        self._check_captions(scored, metrics)

        pairs = []
        for s in scored:
            ref = s.reference
            pairs.append(EditPair(
                id=s.id, output=_output_path(outputs.get(s.id)), target=ref.get("target"),
                source=ref.get("session_source") if multi else ref.get("source"),
                caption=ref.get("caption"),
                output_caption=ref.get("target_global_caption"),
                source_caption=ref.get("session_source_global_caption") if multi else ref.get("source_global_caption"),
            ))
        per = score_edits(pairs, metrics, self.scorer(device), progress=self.options.get("progress"))

        per_sample: dict[str, dict[str, Any]] = {}
        for s in samples:
            if s.id in per:
                per_sample[s.id] = per[s.id]
            else:
                per_sample[s.id] = {"not_scored": "intermediate turn: multi-turn mode scores each session's final turn"}
        means, counts = mean_metrics(per, metrics)
        n_ok = sum(1 for r in per.values() if "error" not in r)
        breakdown: dict[str, dict[str, float]] = {}
        for conv in (MB_CONVENTION, EMU_CONVENTION):
            group = {m: v for m, v in means.items() if self.metric_conventions[m] == conv}
            if group:
                breakdown[conv] = group
        if not multi:
            by_turn: dict[int, dict[str, dict[str, Any]]] = {}
            turn_of = {s.id: int(s.meta.get("turn", 1)) for s in scored}
            for sid, r in per.items():
                by_turn.setdefault(turn_of[sid], {})[sid] = r
            for t in sorted(by_turn):
                turn_means, _ = mean_metrics(by_turn[t], metrics)
                if turn_means:
                    breakdown[f"turn-{t}"] = turn_means
        breakdown["counts"] = {"samples": float(len(scored)), "scored": float(n_ok),
                               "failed": float(len(scored) - n_ok), **{f"n:{m}": float(c) for m, c in counts.items()}}
        return SuiteResult(metrics=means, per_sample=per_sample, n=n_ok, breakdown=breakdown)

    def _check_captions(self, scored: list[Sample], metrics: list[str]) -> None:
        for m in metrics:
            field = {"clip-t": "caption", "clip-out": "target_global_caption",
                     "clip-dir": "target_global_caption"}.get(m)
            if field is None or not scored:
                continue
            if not any(s.reference.get(field) for s in scored):
                which = "local_descriptions.json" if m == "clip-t" else "global_descriptions.json"
                raise UsageError(
                    f"MagicBrush metric {m} needs captions from {which}, and this data has none "
                    f"(the hub split ships no captions).",
                    hint=f"Place {which} ({{img_id: {{image file name: caption}}}}, from the MagicBrush test zip) in "
                         f"the data folder or pass it with the {'local' if m == 'clip-t' else 'global'}_captions "
                         f"option, or leave {m} out of --metrics.")

    def config(self) -> dict[str, Any]:
        """What to record in results.json: mode, layout, data, cache folder, metric models."""
        out: dict[str, Any] = {"mode": self.mode, "layout": self.layout, "data": str(self.data) if self.data else None,
                               "split": self.split if self.layout != "zip" else "test-zip layout",
                               "metric_conventions": dict(self.metric_conventions)}
        if self.layout in ("parquet", "arrow"):
            out["cache_dir"] = str(self.resolved_cache_dir())
        if self._scorer is not None:
            out["metric_models"] = self._scorer.describe()
        return out


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _int_option(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"MagicBrush option {key}={value!r}: expected a whole number.") from None
    if number < 1:
        raise UsageError(f"MagicBrush option {key}={value!r}: expected a positive number.")
    return number


def _turn_number(name: str) -> int:
    digits = "".join(ch for ch in str(name).rsplit("-", 1)[-1] if ch.isdigit())
    return int(digits) if digits else 0


def _write_once(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data):
        return
    _atomic_write_bytes(path, data)


def _output_path(value: Any) -> str | None:
    """An output as the runner hands it over: a path, or a row dict with an ``image`` key."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("image") or value.get("output") or value.get("path")
        if value is None:
            return None
    text = str(value)
    return text or None
