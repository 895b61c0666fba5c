"""Image-editing metrics, batched: MagicBrush's L1 / L2 / CLIP-I / DINO / CLIP-T and the Emu
Edit convention's CLIP_dir / CLIP_out / CLIP_im / L1 / DINO against the source.

Definitions (MagicBrush evaluation/image_eval.py, Emu Edit as used by UniVG):

- ``l1`` / ``l2``: the output resized to the target's size with PIL's default filter
  (``gen_img.resize(gt_img.size)``), both as [0, 1] tensors, mean absolute / mean squared error
  over C x H x W; averaged over samples. Computed here exactly in integer arithmetic.
- ``clip-i``: cosine of the CLIP image embeddings of output and target.
- ``dino``: cosine of the DINO ViT-S/16 CLS features of output and target.
- ``clip-t``: cosine of the output's CLIP image embedding and the CLIP text embedding of the
  target's caption (MagicBrush: the local description of the target), raw (~0.27).
- ``clip-out`` (Emu Edit CLIP_out): cosine of output image and output caption.
- ``clip-dir`` (Emu Edit CLIP_dir, InstructPix2Pix's directional similarity): cosine of
  ``E(output) - E(source)`` and ``T(output caption) - T(source caption)`` on L2-normalised
  embeddings (InstructPix2Pix metrics/clip_similarity.py normalises before differencing).
- ``clip-im``, ``l1-src``, ``dino-src`` (Emu Edit CLIP_im / L1 / DINO): as clip-i, l1 and dino
  but against the source image (how much of the input survived the edit).

Speed: every image is decoded once, each distinct image is embedded once per model (CLIP-I
and CLIP-T share the output's embedding; a target that is the next turn's source is not
encoded twice), decoding/resizing runs in worker threads one chunk ahead of the model,
models run batched, captions are de-duplicated and encoded only up to their end-of-text token.
The official script decodes each image once per metric and encodes every image with CLIP
twice, one at a time: ``benchmarks/magicbrush_metrics.py`` compares both on the same images.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from uniedit_cli.errors import UsageError

MAGICBRUSH = "magicbrush"
EMU_EDIT = "emu-edit"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    convention: str  # "magicbrush" (official image_eval.py) or "emu-edit"
    model: str  # "pixel" | "clip" | "dino"
    reference: str  # what the output is compared with: "target", "source", "caption", ...
    higher_is_better: bool
    description: str


IMAGE_METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("l1", MAGICBRUSH, "pixel", "target", False, "mean |output - target| in [0,1] (output resized to target)"),
    MetricSpec("l2", MAGICBRUSH, "pixel", "target", False, "mean (output - target)^2 in [0,1] (output resized to target)"),
    MetricSpec("clip-i", MAGICBRUSH, "clip", "target", True, "CLIP ViT-B/32 image cosine, output vs target"),
    MetricSpec("dino", MAGICBRUSH, "dino", "target", True, "DINO ViT-S/16 CLS cosine, output vs target"),
    MetricSpec("clip-t", MAGICBRUSH, "clip", "caption", True, "CLIP cosine, output image vs the target's (local) caption"),
    MetricSpec("clip-dir", EMU_EDIT, "clip", "source+captions", True,
               "CLIP directional similarity: cos(E(out)-E(src), T(out caption)-T(src caption))"),
    MetricSpec("clip-out", EMU_EDIT, "clip", "output_caption", True, "CLIP cosine, output image vs output caption"),
    MetricSpec("clip-im", EMU_EDIT, "clip", "source", True, "CLIP image cosine, output vs source"),
    MetricSpec("l1-src", EMU_EDIT, "pixel", "source", False, "mean |output - source| in [0,1] (output resized to source)"),
    MetricSpec("dino-src", EMU_EDIT, "dino", "source", True, "DINO ViT-S/16 CLS cosine, output vs source"),
)}

# what each metric needs from a pair besides the output image
_NEEDS: dict[str, tuple[str, ...]] = {
    "l1": ("target",), "l2": ("target",), "clip-i": ("target",), "dino": ("target",), "clip-t": ("caption",),
    "clip-dir": ("source", "output_caption", "source_caption"), "clip-out": ("output_caption",),
    "clip-im": ("source",), "l1-src": ("source",), "dino-src": ("source",),
}


@dataclass
class EditPair:
    """One edited image to score and what it is compared with (None where not available)."""

    id: str
    output: str | os.PathLike | None
    target: str | os.PathLike | None = None  # ground-truth edited image (MagicBrush convention)
    source: str | os.PathLike | None = None  # the image that was edited (Emu Edit convention)
    caption: str | None = None  # MagicBrush clip-t: caption of the target (local description)
    output_caption: str | None = None  # Emu Edit clip-out / clip-dir: caption of the wanted output
    source_caption: str | None = None  # Emu Edit clip-dir: caption of the source


def check_metrics(metrics: Iterable[str]) -> list[str]:
    """Validate metric names (case-insensitive), keep order, drop duplicates."""
    out: list[str] = []
    for m in metrics:
        key = str(m).strip().lower()
        if not key:
            continue
        if key not in IMAGE_METRICS:
            raise UsageError(f"unknown image metric {m!r}.", hint=f"Choose from: {', '.join(IMAGE_METRICS)}.")
        if key not in out:
            out.append(key)
    return out


# --- pixels ---------------------------------------------------------------------------------

def open_rgb(path: str | os.PathLike):
    """Decode an image as image_eval.py does (``Image.open(p).convert('RGB')``)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def pixel_distances(output, reference) -> tuple[float, float]:
    """(L1, L2) of two RGB PIL images as image_eval.py's ``eval_distance``: the output resized
    to the reference's size with PIL's default filter, values in [0, 1], means over C x H x W.
    Computed exactly (integer sums) rather than in float32."""
    if output.size != reference.size:
        output = output.resize(reference.size)  # PIL's default filter, as the official script
    a = np.asarray(output, dtype=np.int32)
    b = np.asarray(reference, dtype=np.int32)
    d = a - b
    n = d.size
    l1 = float(np.abs(d).sum(dtype=np.int64)) / (255.0 * n)
    l2 = float((d * d).sum(dtype=np.int64)) / (65025.0 * n)
    return l1, l2


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity in float64 (as scipy's 1 - cosine distance)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(-1)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def directional_similarity(out_img, src_img, out_txt, src_txt) -> np.ndarray:
    """InstructPix2Pix / Emu Edit CLIP_dir on L2-normalised embeddings (row-wise)."""
    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    return cosine(unit(out_img) - unit(src_img), unit(out_txt) - unit(src_txt))


# --- the scorer -----------------------------------------------------------------------------

class ImageScorer:
    """Holds the CLIP and DINO encoders (loaded on first use) and the batching settings.

    ``device``: "auto" (CUDA when present), "cpu", "cuda", "cuda:1"...; ``dtype``: "fp32"
    (default: numbers comparable with published ones), "bf16" or "fp16"; ``batch_size``: images
    per forward (default 64 on CUDA, 8 on CPU); ``workers``: decoding threads;
    ``clip_weights`` / ``dino_weights``: checkpoint files (None: hub / torch hub caches);
    ``random_weights``: the real architectures with random weights (tests and benchmarks only:
    the numbers mean nothing); ``cache_dir``: where to keep the embeddings of reference images
    (targets, sources) and captions between runs, keyed by file content and by model / weights /
    dtype / device type (None: no persistence). Outputs are never cached.
    """

    def __init__(self, *, device: str | Any = "auto", dtype: str | Any = "fp32", batch_size: int | None = None,
                 clip_weights: str | os.PathLike | None = None, dino_weights: str | os.PathLike | None = None,
                 random_weights: bool = False, seed: int = 0, workers: int | None = None,
                 cache_dir: str | os.PathLike | None = None):
        self._device_arg = device
        self._device = None
        self.dtype = dtype
        self._batch_size = batch_size
        self.clip_weights = clip_weights
        self.dino_weights = dino_weights
        self.random_weights = random_weights
        self.seed = seed
        self.workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
        self._clip = None
        self._dino = None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._stores: dict[str, _EmbeddingStore] = {}

    def store(self, encoder) -> "_EmbeddingStore | None":
        """The persistent embedding store of ``encoder`` (None without ``cache_dir``)."""
        if self.cache_dir is None:
            return None
        key = encoder.cache_key()
        if key not in self._stores:
            self._stores[key] = _EmbeddingStore(self.cache_dir / f"{key}.safetensors")
        return self._stores[key]

    @property
    def device(self):
        if self._device is None:
            from uniedit_cli.eval.metrics.encoders import resolve_metric_device

            self._device = resolve_metric_device(self._device_arg)
        return self._device

    @property
    def batch_size(self) -> int:
        if self._batch_size:
            return int(self._batch_size)
        return 64 if self.device.type == "cuda" else 8

    @property
    def clip(self):
        if self._clip is None:
            from uniedit_cli.eval.metrics.encoders import load_clip

            self._clip = load_clip(self.clip_weights, device=self.device, dtype=self.dtype,
                                   random_weights=self.random_weights, seed=self.seed)
        return self._clip

    @property
    def dino(self):
        if self._dino is None:
            from uniedit_cli.eval.metrics.encoders import load_dino

            self._dino = load_dino(self.dino_weights, device=self.device, dtype=self.dtype,
                                   random_weights=self.random_weights, seed=self.seed)
        return self._dino

    def preload(self, metrics: Iterable[str]) -> None:
        """Load the models the metrics need now (fail early on missing weights)."""
        models = {IMAGE_METRICS[m].model for m in check_metrics(metrics)}
        if "clip" in models:
            _ = self.clip
        if "dino" in models:
            _ = self.dino

    def describe(self) -> dict[str, Any]:
        """What produced the numbers (for results.json): models, weights, dtype, device."""
        out: dict[str, Any] = {"dtype": str(self.dtype), "batch_size": self._batch_size,
                               "embedding_cache": str(self.cache_dir) if self.cache_dir else None}
        if self._clip is not None:
            out["clip"] = self._clip.describe()
        if self._dino is not None:
            out["dino"] = self._dino.describe()
        return out


class _EmbeddingStore:
    """A safetensors file of embeddings keyed by content digest; read once, merged and replaced
    atomically on save (concurrent writers at worst lose each other's additions)."""

    def __init__(self, path: Path):
        self.path = path
        self._data: dict[str, Any] | None = None
        self._new: dict[str, Any] = {}

    def _load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(self.path)))
        except Exception:  # a damaged cache is rebuilt, never fatal
            return {}

    def get(self, key: str):
        if self._data is None:
            self._data = self._load()
        return self._new.get(key, self._data.get(key))

    def put(self, key: str, value) -> None:
        self._new[key] = value.detach().to("cpu").contiguous().clone()

    def save(self) -> None:
        if not self._new:
            return
        import tempfile

        from safetensors.torch import save_file

        merged = {**self._load(), **(self._data or {}), **self._new}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            save_file(merged, tmp)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache folder only costs speed
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._data, self._new = merged, {}


def _file_digest(path: str) -> str | None:
    import hashlib

    h = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return "img-" + h.hexdigest()


def _text_digest(text: str) -> str:
    import hashlib

    return "txt-" + hashlib.sha1(text.encode("utf-8")).hexdigest()


def _image_needs(metrics: Sequence[str]) -> dict[str, dict[str, bool]]:
    """role -> {"pil": full image needed, "clip": CLIP embedding needed, "dino": ...}."""
    needs = {role: {"pil": False, "clip": False, "dino": False} for role in ("output", "target", "source")}
    for m in metrics:
        spec = IMAGE_METRICS[m]
        ref = "source" if m in ("clip-dir", "clip-im", "l1-src", "dino-src") else "target"
        if spec.model == "pixel":
            needs["output"]["pil"] = needs[ref]["pil"] = True
        elif spec.model == "dino":
            needs["output"]["dino"] = needs[ref]["dino"] = True
        else:
            needs["output"]["clip"] = True
            if m in ("clip-i", "clip-dir", "clip-im"):
                needs[ref]["clip"] = True
    return needs


def _load_for(path: str, want_pil: bool, clip_pre, dino_pre):
    """Worker: decode once, produce what is needed. Returns (pil|None, clip|None, dino|None)."""
    img = open_rgb(path)
    clip_arr = clip_pre(img) if clip_pre is not None else None
    dino_arr = dino_pre(img) if dino_pre is not None else None
    return (img if want_pil else None), clip_arr, dino_arr


def score_edits(pairs: Sequence[EditPair], metrics: Iterable[str], scorer: ImageScorer | None = None, *,
                progress: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
    """Score edited images. Returns ``{pair.id: {metric: value, ...}}``; a pair that cannot be
    scored gets ``{"error": reason}`` (missing or unreadable output, unreadable reference) and a
    metric a pair lacks inputs for (no caption, no source) is listed under ``"skipped"``
    (``{metric: reason}``). Never raises for a bad sample; raises UsageError for an unknown
    metric or missing model weights. ``progress(n)`` is called as pairs finish."""
    metrics = check_metrics(metrics)
    scorer = scorer or ImageScorer()
    results: dict[str, dict[str, Any]] = {}
    todo: list[tuple[EditPair, list[str]]] = []
    for pair in pairs:
        res: dict[str, Any] = {}
        results[pair.id] = res
        if pair.output is None or str(pair.output) == "":
            res["error"] = "no output image"
            continue
        if not Path(pair.output).is_file():
            res["error"] = f"output image not found: {pair.output}"
            continue
        runnable, skipped = [], {}
        for m in metrics:
            lacking = [field for field in _NEEDS[m] if not getattr(pair, field)]
            if lacking:
                skipped[m] = "no " + " / ".join(lacking).replace("_", " ")
            else:
                runnable.append(m)
        if skipped:
            res["skipped"] = skipped
        todo.append((pair, runnable))
    if not todo:
        return results

    used = sorted({m for _, ms in todo for m in ms}, key=metrics.index)
    scorer.preload(used)
    clip = scorer.clip if any(IMAGE_METRICS[m].model == "clip" for m in used) else None
    dino = scorer.dino if any(IMAGE_METRICS[m].model == "dino" for m in used) else None

    clip_emb: dict[str, Any] = {}
    dino_emb: dict[str, Any] = {}
    pixel: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}

    bs = scorer.batch_size
    chunk_pairs = max(1, bs)
    chunks = [todo[i:i + chunk_pairs] for i in range(0, len(todo), chunk_pairs)]

    def plan(chunk):
        """Which files to decode for this chunk and what to make from each."""
        jobs: dict[str, list[bool]] = {}  # path -> [pil, clip, dino]
        for pair, ms in chunk:
            needs = _image_needs(ms)
            for role in ("output", "target", "source"):
                path = getattr(pair, role)
                if path is None:
                    continue
                key = str(path)
                job = jobs.setdefault(key, [False, False, False])
                job[0] |= needs[role]["pil"]
                job[1] |= needs[role]["clip"] and key not in clip_emb
                job[2] |= needs[role]["dino"] and key not in dino_emb
        return {k: v for k, v in jobs.items() if any(v)}

    def submit(pool, chunk):
        jobs = plan(chunk)
        return {path: pool.submit(_load_for, path, want[0], clip.preprocess if want[1] else None,
                                  dino.preprocess if want[2] else None)
                for path, want in jobs.items()}

    # reference images (targets, sources) embedded in an earlier run: taken from the store
    stores = {"clip": scorer.store(clip) if clip is not None else None,
              "dino": scorer.store(dino) if dino is not None else None}
    ref_digest: dict[str, str] = {}
    from_store: set[tuple[str, str]] = set()

    with ThreadPoolExecutor(max_workers=scorer.workers, thread_name_prefix="uniedit-metrics") as pool:
        if any(stores.values()):
            refs = sorted({str(getattr(pair, role)) for pair, _ in todo for role in ("target", "source")
                           if getattr(pair, role) is not None})
            ref_digest = {p: d for p, d in zip(refs, pool.map(_file_digest, refs)) if d}
            for kind, emb in (("clip", clip_emb), ("dino", dino_emb)):
                if stores[kind] is None:
                    continue
                for path, digest in ref_digest.items():
                    hit = stores[kind].get(digest)
                    if hit is not None:
                        emb[path] = hit
                        from_store.add((kind, path))
        pending = submit(pool, chunks[0])
        for ci, chunk in enumerate(chunks):
            loaded: dict[str, tuple] = {}
            for path, fut in pending.items():
                try:
                    loaded[path] = fut.result()
                except Exception as exc:  # unreadable / corrupt file: reported per pair
                    loaded[path] = exc
            # start decoding the next chunk while this one is embedded
            pending = submit(pool, chunks[ci + 1]) if ci + 1 < len(chunks) else {}

            # pixel metrics (threads: PIL resize and numpy release the GIL)
            pixel_jobs = {}
            for pair, ms in chunk:
                bad = _first_failure(pair, loaded)
                if bad:
                    failed[pair.id] = bad
                    continue
                for m, ref in (("l1", "target"), ("l2", "target"), ("l1-src", "source")):
                    if m in ms:
                        key = (pair.id, ref)
                        if key not in pixel_jobs:
                            pixel_jobs[key] = pool.submit(pixel_distances, loaded[str(pair.output)][0],
                                                          loaded[str(getattr(pair, ref))][0])
            for (pid, ref), fut in pixel_jobs.items():
                l1, l2 = fut.result()
                pixel.setdefault(pid, {})[ref] = (l1, l2)

            # embeddings of the images not seen before, batched
            for enc, store, slot in ((clip, clip_emb, 1), (dino, dino_emb, 2)):
                if enc is None:
                    continue
                new = [(p, v[slot]) for p, v in loaded.items()
                       if not isinstance(v, Exception) and v[slot] is not None and p not in store]
                for start in range(0, len(new), bs):
                    part = new[start:start + bs]
                    emb = enc.encode_images([arr for _, arr in part])
                    for (p, _), row in zip(part, emb):
                        store[p] = row
            del loaded
            if progress is not None:
                progress(len(chunk))

    text_emb: dict[str, Any] = {}
    if clip is not None:
        texts = sorted({t for pair, ms in todo if pair.id not in failed for m in ms
                        for t in _texts_for(pair, m)})
        store = stores["clip"]
        if store is not None:
            for t in texts:
                hit = store.get(_text_digest(t))
                if hit is not None:
                    text_emb[t] = hit
        missing = [t for t in texts if t not in text_emb]
        if missing:
            for t, row in zip(missing, clip.encode_texts(missing, batch_size=max(bs, 32))):
                text_emb[t] = row
                if store is not None:
                    store.put(_text_digest(t), row)
    for kind, emb in (("clip", clip_emb), ("dino", dino_emb)):
        store = stores[kind]
        if store is None:
            continue
        for path, digest in ref_digest.items():
            if path in emb and (kind, path) not in from_store:
                store.put(digest, emb[path])
        store.save()

    for pair, ms in todo:
        res = results[pair.id]
        if pair.id in failed:
            res["error"] = failed[pair.id]
            continue
        out = str(pair.output)
        for m in ms:
            if m in ("l1", "l2"):
                res[m] = pixel[pair.id]["target"][0 if m == "l1" else 1]
            elif m == "l1-src":
                res[m] = pixel[pair.id]["source"][0]
            elif m == "clip-i":
                res[m] = float(cosine(clip_emb[out], clip_emb[str(pair.target)]))
            elif m == "clip-im":
                res[m] = float(cosine(clip_emb[out], clip_emb[str(pair.source)]))
            elif m == "dino":
                res[m] = float(cosine(dino_emb[out], dino_emb[str(pair.target)]))
            elif m == "dino-src":
                res[m] = float(cosine(dino_emb[out], dino_emb[str(pair.source)]))
            elif m == "clip-t":
                res[m] = float(cosine(clip_emb[out], text_emb[pair.caption]))
            elif m == "clip-out":
                res[m] = float(cosine(clip_emb[out], text_emb[pair.output_caption]))
            elif m == "clip-dir":
                value = float(directional_similarity(clip_emb[out], clip_emb[str(pair.source)],
                                                     text_emb[pair.output_caption], text_emb[pair.source_caption]))
                if math.isnan(value):
                    res.setdefault("skipped", {})[m] = "no direction (identical images or captions)"
                else:
                    res[m] = value
    return results


def _texts_for(pair: EditPair, metric: str) -> tuple[str, ...]:
    if metric == "clip-t":
        return (pair.caption,)
    if metric == "clip-out":
        return (pair.output_caption,)
    if metric == "clip-dir":
        return (pair.output_caption, pair.source_caption)
    return ()


def _first_failure(pair: EditPair, loaded: dict[str, Any]) -> str | None:
    for role in ("output", "target", "source"):
        path = getattr(pair, role)
        if path is None:
            continue
        value = loaded.get(str(path))
        if isinstance(value, Exception):
            what = "output image" if role == "output" else f"{role} image"
            reason = (str(value).strip().splitlines() or [type(value).__name__])[0]
            return f"unreadable {what} {path}: {reason}"
    return None


def mean_metrics(per_sample: dict[str, dict[str, Any]], metrics: Iterable[str]) -> tuple[dict[str, float], dict[str, int]]:
    """Average each metric over the samples that have a value; also the count per metric."""
    means: dict[str, float] = {}
    counts: dict[str, int] = {}
    for m in metrics:
        values = [r[m] for r in per_sample.values() if isinstance(r.get(m), (int, float))]
        counts[m] = len(values)
        if values:
            means[m] = float(sum(values) / len(values))
    return means, counts
