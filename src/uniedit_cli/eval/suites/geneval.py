"""GenEval: object-focused text-to-image evaluation (Ghosh et al. 2023, djghosh13/geneval).

Data: the prompt-metadata JSONL (``prompts/evaluation_metadata.jsonl``, 553 prompts in six
tags), one JSON object per line: ``{"tag", "prompt", "include": [{"class", "count", "color"?,
"position"?: [relation, group index]}], "exclude": [{"class", "count"}]}``. Four images per
prompt (``--suite-option images=4``); sample ids are ``<prompt index:05d>-<k>``, and
``--predictions`` also takes GenEval's own folder layout (``<dir>/<index:05d>/samples/<k:04d>.png``).

Scoring follows the released ``evaluation/evaluate_images.py`` and ``summary_scores.py``:
detections above 0.3 confidence (0.9 for the counting tag), at most 16 per class, most
confident first; every ``include`` clause needs ``count`` objects of its class, of its color
(CLIP zero-shot over ten colors with the three released templates, on each object's crop),
and in its relation to the objects matched by an earlier clause (box centres, offsets
shrunk by 0.1 x the boxes' sizes, the main direction's share of the offset above 0.5); an
``exclude`` clause fails when ``count`` or more objects of its class are found. An image is
correct or not; a tag's score is the share of correct images; overall is the mean over tags.

Approximate, and labelled so: the detector is a transformers object detector (default
facebook/detr-resnet-50, a COCO detector like the official one; OWL-ViT / OWLv2 are queried
with the class names) instead of the official Mask2Former (Swin-S, mmdet), and colors are
classified on box crops, where the official script grays out everything outside the
instance mask first. A missing or unreadable image counts as incorrect.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, ClassVar

from uniedit_cli.errors import ModelNotFoundError, UsageError
from uniedit_cli.eval.suites import loading
from uniedit_cli.eval.suites.base import Sample, Suite, SuiteResult

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {color} {name}", "a photo of a {color}-colored {name}", "a photo of a {color} object")
THRESHOLD, COUNTING_THRESHOLD, MAX_OBJECTS, POSITION_THRESHOLD = 0.3, 0.9, 16, 0.1
CROP_BACKGROUND = "#999"  # the official crops' background outside the mask (unused without masks)
DEFAULT_DETECTOR = "facebook/detr-resnet-50"
DEFAULT_CLIP = "ViT-L-14"  # with OpenAI's weights, as the official script
# COCO detectors name three classes differently from GenEval's object_names.txt
COCO_TO_GENEVAL = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
                   "tvmonitor": "tv", "diningtable": "dining table", "pottedplant": "potted plant", "sofa": "couch",
                   "motorbike": "motorcycle", "aeroplane": "airplane"}

Box = tuple[float, float, float, float]
Detections = dict[str, list[tuple[Box, float]]]  # class -> [(x1, y1, x2, y2), score], most confident first


# --- the scoring logic (no models: detections and a color function are given) ----------------

def relative_position(box_a: Box, box_b: Box) -> set[str]:
    """Where A is relative to B: offsets between box centres, each axis shrunk by 0.1 x the two
    boxes' extents on that axis; a relation holds when its axis carries more than half of the
    (unshrunk) offset's length."""
    import math

    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    dims = (abs(box_a[2] - box_a[0]) + abs(box_b[2] - box_b[0]), abs(box_a[3] - box_a[1]) + abs(box_b[3] - box_b[1]))
    offset = (ca[0] - cb[0], ca[1] - cb[1])
    revised = [math.copysign(max(abs(o) - POSITION_THRESHOLD * d, 0.0), o) for o, d in zip(offset, dims)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def evaluate_detections(detected: Detections, metadata: dict,
                        colors_of: Callable[[str, list[tuple[Box, float]]], list[str]]) -> tuple[bool, str]:
    """GenEval's rule for one image: ``include`` clauses are ANDed, ``exclude`` clauses ORed;
    color and position are checked on the most confident ``count`` objects of a clause."""
    correct = True
    reasons: list[str] = []
    matched_groups: list[list | None] = []
    for clause in metadata.get("include", []):
        name, count = clause["class"], int(clause["count"])
        found = detected.get(name, [])[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in clause:
                colors = colors_of(name, found)
                if colors.count(clause["color"]) < count:
                    ok = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(f"expected {clause['color']} {name}>={count}, found {colors.count(clause['color'])} "
                                   f"{clause['color']}; and {seen}")
            if "position" in clause and ok:
                relation, group = clause["position"][0], int(clause["position"][1])
                targets = matched_groups[group] if group < len(matched_groups) else None
                if targets is None:
                    ok = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    for obj in found:
                        for target in targets:
                            actual = relative_position(obj[0], target[0])
                            if relation not in actual:
                                ok = False
                                found_relation = " and ".join(sorted(actual)) or "no relation to"
                                reasons.append(f"expected {name} {relation} target, found {found_relation} target")
                                break
                        if not ok:
                            break
        correct = correct and ok
        matched_groups.append(found if ok else None)
    for clause in metadata.get("exclude", []):
        name, count = clause["class"], int(clause["count"])
        if len(detected.get(name, [])) >= count:
            correct = False
            reasons.append(f"expected {name}<{count}, found {len(detected[name])}")
    return correct, "\n".join(reasons)


def keep_detections(raw: list[tuple[str, Box, float]], tag: str, *, threshold: float = THRESHOLD,
                    counting_threshold: float = COUNTING_THRESHOLD) -> Detections:
    """Per class: above the tag's confidence threshold, most confident first, at most 16 (the
    released script's NMS threshold is 1.0, i.e. no suppression)."""
    limit = counting_threshold if tag == "counting" else threshold
    by_class: Detections = defaultdict(list)
    for name, box, score in raw:
        if score > limit:
            by_class[name].append((box, score))
    return {name: sorted(objs, key=lambda o: -o[1])[:MAX_OBJECTS] for name, objs in by_class.items()}


def summarize(per_image: list[tuple[str, bool]]) -> dict[str, float]:
    """Per-tag share of correct images, and overall = their mean (``summary_scores.py``)."""
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for tag, correct in per_image:
        by_tag[tag].append(correct)
    scores = {tag: sum(v) / len(v) for tag, v in by_tag.items()}
    ordered = {tag: scores[tag] for tag in TAGS if tag in scores}
    ordered.update({tag: v for tag, v in scores.items() if tag not in ordered})
    if ordered:
        ordered = {"overall": sum(ordered.values()) / len(ordered), **ordered}
    return ordered


# --- models ------------------------------------------------------------------------------------

def _torch_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _offline_check(location: str, what: str, option: str) -> None:
    from uniedit_cli.models.base import hub_cached, hub_reachable

    if Path(location).expanduser().exists():
        return
    if location.startswith((".", "/", "~")) or location.count("/") != 1:
        raise ModelNotFoundError(f"--suite-option {option}={location!r}: no such folder.",
                                 hint="Pass a local folder or a hub id (org/name).")
    if location.count("/") == 1 and not hub_cached(location) and not hub_reachable():
        raise ModelNotFoundError(
            f"{what} {location!r} is not on this machine and could not be downloaded.",
            hint=f"On a machine with network run `hf download {location} --local-dir <folder>`, copy the folder here "
                 f"and pass --suite-option {option}=<folder>.")


_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_config.json")


def _clip_offline_check(spec: str) -> None:
    from uniedit_cli.models.base import hub_reachable

    arch, pretrained = ColorClassifier._parse(spec)
    hint_tail = "or pass --suite-option clip=local-dir:<open_clip folder> (open_clip_config.json + weights)."
    if arch.startswith("local-dir:"):
        if not Path(arch[len("local-dir:"):]).is_dir():
            raise ModelNotFoundError(f"--suite-option clip={spec!r}: no such folder.", hint=hint_tail.capitalize())
        return
    if pretrained and Path(pretrained).expanduser().exists():
        return
    if arch.startswith("hf-hub:"):
        repo = arch[len("hf-hub:"):]
    else:
        import open_clip

        if arch not in open_clip.list_models():
            raise UsageError(f"--suite-option clip={spec!r}: open_clip has no model {arch!r}.",
                             hint="Use an open_clip architecture name such as ViT-L-14, or local-dir:<folder>.")
        repo = str((open_clip.get_pretrained_cfg(arch, pretrained or "openai") or {}).get("hf_hub", "")).strip("/")
        if not repo:
            return  # weights from a URL open_clip knows; its own cache handles them
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = any(isinstance(try_to_load_from_cache(repo, name), str) for name in _OPEN_CLIP_FILES)
    except Exception:  # an unreadable cache or odd id: treat as not cached
        cached = False
    if not cached and not hub_reachable():
        raise ModelNotFoundError(
            f"CLIP weights for GenEval's color check ({spec}, hub repo {repo}) are not on this machine and could not be "
            "downloaded.",
            hint=f"On a machine with network run `hf download {repo}` and copy the hub cache here (HF_HOME), " + hint_tail)


class Detector:
    """A transformers object detector: a COCO-trained one (DETR, Conditional/Deformable DETR,
    RT-DETR, YOLOS: class names from its id2label) or an open-vocabulary one (OWL-ViT / OWLv2,
    asked for the prompt's class names)."""

    OPEN_VOCABULARY = ("owlvit", "owlv2")

    def __init__(self, location: str, device):
        from transformers import AutoImageProcessor, AutoModelForObjectDetection, AutoProcessor, AutoConfig

        _offline_check(location, "object detector", "detector")
        try:
            config = AutoConfig.from_pretrained(location)
            self.open_vocabulary = config.model_type in self.OPEN_VOCABULARY
            if self.open_vocabulary:
                from transformers import AutoModelForZeroShotObjectDetection

                self.processor = AutoProcessor.from_pretrained(location)
                self.model = AutoModelForZeroShotObjectDetection.from_pretrained(location)
            else:
                self.processor = AutoImageProcessor.from_pretrained(location)
                self.model = AutoModelForObjectDetection.from_pretrained(location)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"cannot load object detector {location!r}: {str(exc).splitlines()[0]}",
                hint=f"Pass --suite-option detector=<folder or hub id of a transformers object detector> "
                     f"(default {DEFAULT_DETECTOR}).") from None
        self.model.to(device).eval()
        self.device = device
        labels = getattr(self.model.config, "id2label", {}) or {}
        self.names = {int(k): COCO_TO_GENEVAL.get(str(v).lower(), str(v).lower()) for k, v in labels.items()}

    def detect(self, images: list, class_names: list[list[str]], threshold: float) -> list[list[tuple[str, Box, float]]]:
        import torch

        sizes = torch.tensor([[img.height, img.width] for img in images])
        with torch.inference_mode():
            if self.open_vocabulary:
                queries = [[f"a photo of a {name}" for name in names] or ["a photo of an object"] for names in class_names]
                inputs = self.processor(text=queries, images=images, return_tensors="pt", padding=True).to(self.device)
                outputs = self.model(**inputs)
                post = getattr(self.processor, "post_process_grounded_object_detection", None) or \
                    self.processor.post_process_object_detection
                results = post(outputs, threshold=threshold, target_sizes=sizes)
                label_names = [names or ["object"] for names in class_names]
            else:
                inputs = self.processor(images=images, return_tensors="pt").to(self.device)
                outputs = self.model(**inputs)
                results = self.processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
                label_names = None
        out = []
        for i, result in enumerate(results):
            found = []
            for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist()):
                name = label_names[i][label] if label_names is not None else self.names.get(int(label), str(label))
                found.append((name, tuple(float(v) for v in box), float(score)))
            out.append(found)
        return out


class ColorClassifier:
    """CLIP zero-shot color of object crops (open_clip), with GenEval's ten colors and three
    templates; one classifier per object class, built on first use."""

    def __init__(self, spec: str, device):
        import open_clip

        self.device = device
        arch, pretrained = self._parse(spec)
        try:
            if arch.startswith(("local-dir:", "hf-hub:")):
                model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device)
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
            self.tokenizer = open_clip.get_tokenizer(arch)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelNotFoundError(
                f"cannot load CLIP {spec!r} for GenEval's color check: {str(exc).splitlines()[0]}",
                hint="The official script uses open_clip ViT-L-14 with OpenAI weights: on a machine with network run "
                     "`hf download timm/vit_large_patch14_clip_224.openai`, copy the hub cache here (HF_HOME), or pass "
                     "--suite-option clip=local-dir:<open_clip folder> or clip=ViT-L-14:<weights file>.") from None
        self.model = model.eval()
        self.preprocess = preprocess
        self._classifiers: dict[str, Any] = {}

    @staticmethod
    def _parse(spec: str) -> tuple[str, str | None]:
        if spec.startswith(("local-dir:", "hf-hub:")):
            return spec, None
        if Path(spec).expanduser().is_dir():
            return f"local-dir:{Path(spec).expanduser()}", None
        arch, _, pretrained = spec.partition(":")
        return arch, pretrained or "openai"

    def _classifier(self, name: str):
        import torch

        if name not in self._classifiers:
            columns = []
            with torch.inference_mode():
                for color in COLORS:
                    tokens = self.tokenizer([t.format(color=color, name=name) for t in COLOR_TEMPLATES]).to(self.device)
                    emb = self.model.encode_text(tokens)
                    emb = emb / emb.norm(dim=-1, keepdim=True)
                    mean = emb.mean(dim=0)
                    columns.append(mean / mean.norm())
            self._classifiers[name] = torch.stack(columns, dim=1)
        return self._classifiers[name]

    def __call__(self, image, name: str, objects: list[tuple[Box, float]]) -> list[str]:
        import torch

        if not objects:
            return []
        crops = [image.crop(tuple(int(round(v)) for v in box)) for box, _ in objects]
        batch = torch.stack([self.preprocess(crop) for crop in crops]).to(self.device)
        with torch.inference_mode():
            feats = self.model.encode_image(batch)
            feats = feats / feats.norm(dim=-1, keepdim=True)
            pred = (feats @ self._classifier(name)).argmax(dim=1).tolist()
        return [COLORS[i] for i in pred]


# --- the suite -----------------------------------------------------------------------------------

class GenEvalSuite(Suite):
    name = "geneval"
    task = "generate"
    output_kind = "image"
    convention = "geneval (overall = mean of six task accuracies)"
    approximate = True
    default_metrics = ("overall", *TAGS)
    all_metrics = ("overall", *TAGS)
    option_help: ClassVar[dict[str, str]] = {
        "images": "images per prompt (default 4, as published)",
        "detector": f"transformers object detector, folder or hub id (default {DEFAULT_DETECTOR})",
        "clip": f"open_clip model for colors: ARCH[:PRETRAINED], local-dir:FOLDER or hf-hub:ID (default {DEFAULT_CLIP} openai)",
        "threshold": f"detection confidence (default {THRESHOLD})",
        "counting_threshold": f"detection confidence for the counting tag (default {COUNTING_THRESHOLD})",
    }
    data_help = (
        "Place GenEval's prompts/evaluation_metadata.jsonl (github.com/djghosh13/geneval) in a folder and pass "
        "--data FOLDER (or the file)."
    )

    def __init__(self, data, **options):
        super().__init__(data, **options)
        self.detector_name = str(options.get("detector") or DEFAULT_DETECTOR)
        self.clip_name = str(options.get("clip") or DEFAULT_CLIP)
        try:
            self.images_per_prompt = int(options.get("images", 4))
            self.threshold = float(options.get("threshold", THRESHOLD))
            self.counting_threshold = float(options.get("counting_threshold", COUNTING_THRESHOLD))
        except ValueError as exc:
            raise UsageError(f"--suite-option: {exc}.", hint="images is an integer; thresholds are numbers.") from None
        if self.images_per_prompt < 1:
            raise UsageError("--suite-option images must be at least 1.")
        self.approximate_reason = (
            f"detector {self.detector_name} (transformers, boxes) instead of the official Mask2Former Swin-S (mmdet, "
            f"masks); colors from CLIP {self.clip_name} on box crops, not mask crops")

    def preflight(self, samples: list[Sample], metrics: list[str]) -> None:
        """Before any image is generated: the detector and (when a prompt asks for a color) the
        CLIP weights must be loadable offline, or the error says what to place where."""
        _offline_check(self.detector_name, "object detector", "detector")
        if any("color" in clause for s in samples for clause in s.reference["metadata"].get("include", [])):
            _clip_offline_check(self.clip_name)

    def samples(self) -> list[Sample]:
        root = loading.require_data(self)
        files = [root] if root.is_file() else (loading.find(root, ["**/evaluation_metadata.jsonl"])
                                               or loading.find(root, ["*.jsonl"]))
        if not files:
            raise loading.missing_data(self, f"no evaluation_metadata.jsonl under {str(root)!r}.")
        rows = loading.read_jsonl(files[0])
        limit = int(self.options["limit"]) if self.options.get("limit") else None
        out = []
        for index, row in enumerate(rows):
            if "prompt" not in row or "tag" not in row:
                raise loading.missing_data(self, f"{files[0].name} line {index + 1} has no 'prompt' and 'tag': not "
                                                 "GenEval prompt metadata.")
            for k in range(self.images_per_prompt):
                out.append(Sample(id=f"{index:05d}-{k}", task="generate", inputs={"prompt": str(row["prompt"])},
                                  reference={"metadata": row}, meta={"tag": row["tag"], "prompt_index": index}))
                if limit and len(out) >= limit:
                    return out
        return out

    def predictions_from_folder(self, folder: Path, samples: list[Sample]) -> dict[str, str]:
        """GenEval's own layout: <folder>/<index:05d>/samples/<k:04d>.png."""
        found = {}
        for sample in samples:
            index, k = sample.id.split("-")
            path = folder / index / "samples" / f"{int(k):04d}.png"
            if path.is_file():
                found[sample.id] = str(path)
        if not found:
            raise UsageError(f"--predictions {str(folder)!r}: no <index>/samples/<k>.png images (GenEval's layout).")
        return found

    def score(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str], *,
              device: str = "auto", judge=None, detector=None, colors=None) -> SuiteResult:
        """``detector`` / ``colors`` may be given (tests, reuse); otherwise they load from the options."""
        torch_device = _torch_device(device)
        per_sample: dict[str, dict] = {}
        readable: list[tuple[Sample, Any]] = []
        for sample in samples:
            image, problem = loading.open_output_image(outputs.get(sample.id))
            if image is None:
                per_sample[sample.id] = {"correct": False, "error": problem, "tag": sample.meta["tag"]}
            else:
                readable.append((sample, image))
        color_model = colors

        def colors_of(image, name, objects):
            # CLIP loads on the first color clause that reaches classification, not before
            nonlocal color_model
            if color_model is None:
                color_model = ColorClassifier(self.clip_name, torch_device)
            return color_model(image, name, objects)

        if readable:
            detector = detector or Detector(self.detector_name, torch_device)
            batch = max(1, int(self.options.get("batch_size", 8)))
            for start in range(0, len(readable), batch):
                chunk = readable[start:start + batch]
                names = [self._class_names(s.reference["metadata"]) for s, _ in chunk]
                raw = detector.detect([img for _, img in chunk], names, min(self.threshold, self.counting_threshold))
                for (sample, image), found in zip(chunk, raw):
                    metadata = sample.reference["metadata"]
                    kept = keep_detections(found, metadata["tag"], threshold=self.threshold,
                                           counting_threshold=self.counting_threshold)
                    correct, reason = evaluate_detections(kept, metadata,
                                                          lambda name, objs, image=image: colors_of(image, name, objs))
                    per_sample[sample.id] = {"correct": correct, "reason": reason, "tag": metadata["tag"],
                                             "detected": {k: len(v) for k, v in kept.items()}}
        scores = summarize([(per_sample[s.id]["tag"], bool(per_sample[s.id]["correct"])) for s in samples])
        # the per-tag scores are also each sample's primary value in report.html
        for row in per_sample.values():
            row["overall"] = float(row["correct"])
        prompts: dict[int, list[bool]] = defaultdict(list)
        for sample in samples:
            prompts[sample.meta["prompt_index"]].append(bool(per_sample[sample.id]["correct"]))
        breakdown = {"summary": {"correct_images": sum(r["correct"] for r in per_sample.values()) / len(samples),
                                 "correct_prompts": sum(any(v) for v in prompts.values()) / len(prompts)}}
        return SuiteResult(metrics={k: v for k, v in scores.items() if k in metrics}, per_sample=per_sample,
                           n=len(samples), breakdown=breakdown)

    @staticmethod
    def _class_names(metadata: dict) -> list[str]:
        names = [c["class"] for c in metadata.get("include", [])] + [c["class"] for c in metadata.get("exclude", [])]
        return list(dict.fromkeys(re.sub(r"\s+", " ", n.strip()) for n in names))
