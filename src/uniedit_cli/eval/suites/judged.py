"""Judge-scored editing suites: GEdit-Bench, ImgEdit-Bench, KRIS-Bench and RISEBench.

Their published numbers come from GPT-4-class judges with each benchmark's own prompts. We
judge with an open model from the registry (``--judge``, default qwen2.5-vl-7b) and our own
prompts, so every number here is labelled approximate and its judge is recorded: comparable
across models judged the same way, not with the papers' tables.

How each suite turns judge scores into its numbers (REFERENCE.md, "Evaluation protocols"):

- GEdit (VIEScore): semantic consistency SC = min(editing success, over-editing), perceptual
  quality PQ = min(naturalness, artifacts), each sub-score 0-10; overall O = sqrt(SC * PQ)
  per sample; means over samples, and per task group.
- ImgEdit: three 1-5 criteria (instruction adherence, edit quality, preservation of the rest);
  a sample's score is their mean; means over samples and per edit type.
- KRIS: four 1-5 criteria (visual consistency, visual quality, instruction following,
  knowledge plausibility); ``overall`` maps their mean linearly to 0-100 (1 -> 0, 5 -> 100).
- RISE: three 1-5 criteria (instruction reasoning, appearance consistency, visual
  plausibility); a sample is accurate only if every judged score is full (5); accuracy in %.

The judge sees the source and the edit side by side in one image (left: original, right:
edited) because registry judges answer about one image per question.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from uniedit_cli.errors import InputError, UsageError
from uniedit_cli.eval.suites import loading
from uniedit_cli.eval.suites.base import Sample, Suite, SuiteResult

JUDGE_LABEL = "judged by an open model from the registry with uniedit's own prompts, not the benchmark's GPT-4 judge"
PAIR_HEIGHT = 512  # the side-by-side image the judge sees is at most this tall
PAIR_GAP = 16


# --- judge questions -------------------------------------------------------------------------

@dataclass
class JudgeQuery:
    """One question to the judge. ``images`` holds one path, or two shown side by side."""

    id: str  # "<sample id>|<aspect>"
    sample_id: str
    aspect: str
    images: list[str]
    prompt: str


@dataclass
class Aspect:
    """One judged aspect: which images the judge sees, what it is asked, and the named
    scores its reply must carry (all on ``scale``)."""

    name: str
    keys: tuple[str, ...]
    scale: tuple[float, float]
    pair: bool  # True: source | output side by side; False: the output alone
    prompt: str  # str.format fields: instruction, keys_json, lo, hi, extra


def compose_pair(left, right, *, height: int = PAIR_HEIGHT, gap: int = PAIR_GAP):
    """Source and edit side by side at one height, with a white gap between them."""
    from PIL import Image

    h = min(height, max(left.height, right.height))
    scaled = [img.resize((max(1, round(img.width * h / img.height)), h), Image.Resampling.BICUBIC) for img in (left, right)]
    canvas = Image.new("RGB", (scaled[0].width + gap + scaled[1].width, h), (255, 255, 255))
    canvas.paste(scaled[0], (0, 0))
    canvas.paste(scaled[1], (scaled[0].width + gap, 0))
    return canvas


def prepare_judge_item(item) -> dict:
    """The runner's prepare step for judge questions: load the image(s); two are composed."""
    from uniedit_cli.io import load_image

    prepared = dict(item.inputs)
    first = load_image(item.inputs["image"], what="image shown to the judge")
    if item.inputs.get("image2"):
        second = load_image(item.inputs["image2"], what="output image")
        prepared["image"] = compose_pair(first, second)
    else:
        prepared["image"] = first
    return prepared


def ask_judge(queries: list[JudgeQuery], judge, *, batch_size: int = 4) -> dict[str, str]:
    """Replies from ``judge``: a mapping of query id -> reply (what ``eval.run`` passes, made
    through the batch runner), or an adapter with ``ask`` (library use), called in batches."""
    if judge is None:
        raise UsageError("this suite needs a judge.", hint="Pass --judge qwen2.5-vl-7b (or another model that can ask).")
    if hasattr(judge, "ask"):
        from types import SimpleNamespace

        replies: dict[str, str] = {}
        for start in range(0, len(queries), batch_size):
            batch, images = [], []
            for query in queries[start:start + batch_size]:
                inputs = {"image": query.images[0], "image2": query.images[1] if len(query.images) > 1 else None}
                try:
                    images.append(prepare_judge_item(SimpleNamespace(inputs=inputs))["image"])
                    batch.append(query)
                except InputError:
                    continue  # reported per sample by the suite
            if batch:
                for query, reply in zip(batch, judge.ask(images, [q.prompt for q in batch])):
                    replies[query.id] = reply
        return replies
    return dict(judge)


# --- reading the judge's numbers ------------------------------------------------------------

_NUMBER = r"[-+]?\d+(?:\.\d+)?"


def _norm_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


def _to_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.search(_NUMBER, value)
        return float(match.group(0)) if match else None
    return None


def _json_objects(text: str) -> list[dict]:
    """JSON objects embedded anywhere in a reply (inside code fences, after prose, with single
    quotes or trailing commas, which judges produce)."""
    found = []
    for match in re.finditer(r"\{[^{}]*\}", text, flags=re.S):
        chunk = match.group(0)
        for candidate in (chunk, re.sub(r",\s*}", "}", chunk.replace("'", '"'))):
            try:
                value = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found.append(value)
                break
    return found


def parse_scores(text: str | None, keys: tuple[str, ...], scale: tuple[float, float]) -> dict[str, float] | None:
    """The scores named ``keys`` from a judge reply, each within ``scale``, or None.

    Tried in order: a JSON object with those keys (or VIEScore's ``{"score": [a, b]}`` list, in
    key order); ``key: number`` lines; and, for a reply that is nothing but numbers, the numbers
    in key order. "7/10" reads as 7; a value outside the scale makes the reply unusable rather
    than being clipped into range.
    """
    if not text:
        return None
    lo, hi = scale
    wanted = {_norm_key(k): k for k in keys}

    def valid(values: dict[str, float | None]) -> dict[str, float] | None:
        if any(values.get(k) is None for k in keys):
            return None
        if any(not (lo <= float(values[k]) <= hi) or not math.isfinite(float(values[k])) for k in keys):
            return None
        return {k: float(values[k]) for k in keys}

    for obj in _json_objects(text):
        values: dict[str, float | None] = {}
        lowered = {_norm_key(k): v for k, v in obj.items()}
        for norm, key in wanted.items():
            if norm in lowered:
                values[key] = _to_number(lowered[norm])
        if len(values) < len(keys):
            scores = lowered.get("score", lowered.get("scores"))
            if isinstance(scores, list) and len(scores) >= len(keys):
                values = {key: _to_number(v) for key, v in zip(keys, scores)}
        got = valid(values)
        if got is not None:
            return got

    values = {}
    for norm, key in wanted.items():
        pattern = norm.replace("_", r"[\s_\-]*")
        match = re.search(rf"{pattern}\W{{0,4}}\s*({_NUMBER})", text, flags=re.I)
        if match:
            values[key] = float(match.group(1))
    got = valid(values)
    if got is not None:
        return got

    # a bare "7, 9" or "Scores: 7 and 9" (ranges such as "0-10" and denominators "/10" removed)
    stripped = re.sub(rf"{_NUMBER}\s*(?:-|to)\s*{_NUMBER}", " ", text)
    stripped = re.sub(rf"/\s*{_NUMBER}", " ", stripped)
    if re.search(r"[A-Za-z]{4,}", re.sub(r"(?i)scores?|and|out|of", " ", stripped)):
        return None  # prose with numbers in it: too risky to guess which number is which
    numbers = [float(n) for n in re.findall(_NUMBER, stripped)]
    if len(numbers) == len(keys):
        return valid(dict(zip(keys, numbers)))
    return None


# --- the suites --------------------------------------------------------------------------------

class JudgedEditSuite(Suite):
    """An editing benchmark scored by a judge; subclasses give the data layout, the aspects
    and how aspect scores become the benchmark's numbers."""

    task = "edit"
    output_kind = "image"
    needs_judge = True
    approximate = True
    approximate_reason = JUDGE_LABEL
    aspects: ClassVar[tuple[Aspect, ...]] = ()
    metric_aspects: ClassVar[dict[str, tuple[str, ...]]] = {}  # metric -> aspects it needs
    group_label: ClassVar[str] = "task_type"
    option_help: ClassVar[dict[str, str]] = {}

    # data layout: where rows are and what their fields are called (benchmarks differ across releases)
    data_patterns: ClassVar[tuple[str, ...]] = ("**/*.parquet", "**/*.jsonl", "**/*.json")
    id_fields: ClassVar[tuple[str, ...]] = ("key", "id", "index", "_key")
    image_fields: ClassVar[tuple[str, ...]] = ("input_image", "image", "source_image", "src_img", "image_path")
    instruction_fields: ClassVar[tuple[str, ...]] = ("instruction", "edit_prompt", "prompt", "ins_en", "edit_instruction")
    group_fields: ClassVar[tuple[str, ...]] = ("task_type", "edit_type", "category", "type")
    image_dirs: ClassVar[tuple[str, ...]] = ("images", "image", "imgs", "data")

    # -- data --

    def samples(self) -> list[Sample]:
        root = loading.require_data(self)
        limit = int(self.options["limit"]) if self.options.get("limit") else None
        files = loading.find(root, self.data_patterns)
        if not files:
            raise loading.missing_data(self, f"no benchmark rows ({', '.join(self.data_patterns)}) under {str(root)!r}.")
        out: list[Sample] = []
        for path in files:
            rows = loading.iter_parquet([path]) if path.suffix == ".parquet" else iter(self._json_rows(path))
            for row in rows:
                sample = self.make_sample(row, path)
                if sample is None:
                    continue
                out.append(sample)
                if limit and len(out) >= limit:
                    return out
        if not out:
            raise loading.missing_data(self, f"{len(files)} data file(s) under {str(root)!r} but no usable rows "
                                             f"(expected fields like {self.instruction_fields[0]!r} and "
                                             f"{self.image_fields[0]!r}).")
        return out

    def _json_rows(self, path: Path) -> list[dict]:
        try:
            return loading.records(path)
        except UsageError:
            return []  # a stray JSON file that is not a row list (e.g. a manifest) is not data

    def resolve_image(self, value: Any, base: Path, key: str) -> str | None:
        if isinstance(value, str):
            candidates = [base / value] + [base / d / value for d in self.image_dirs] + [base.parent / value]
            found = next((c for c in candidates if c.is_file()), None)
            return str(found if found is not None else base / value)
        return loading.materialize(value, loading.cache_dir_of(self) / "sources", key)

    def make_sample(self, row: dict, path: Path) -> Sample | None:
        instruction = loading.first(row, self.instruction_fields)
        image = loading.first(row, self.image_fields)
        key = loading.first(row, self.id_fields)
        if instruction is None or image is None or key is None:
            return None
        sample_id = str(key)
        return Sample(
            id=sample_id, task="edit",
            inputs={"image": self.resolve_image(image, path.parent, sample_id), "instruction": str(instruction)},
            reference={k: v for k, v in (("explanation", loading.first(row, ("explain_en", "explanation", "reasoning"))),
                                         ("reference", loading.first(row, ("reference", "answer", "gt_answer"))))
                       if v is not None and isinstance(v, str)},
            meta={self.group_label: loading.first(row, self.group_fields)},
        )

    # -- judging --

    def aspects_for(self, metrics: list[str]) -> list[Aspect]:
        needed = {a for m in metrics for a in self.metric_aspects.get(m, ())}
        return [a for a in self.aspects if a.name in needed]

    def prompt_fields(self, sample: Sample) -> dict[str, str]:
        extra = ""
        if sample.reference.get("explanation"):
            extra += f"\nWhat a correct edit shows: {sample.reference['explanation']}"
        if sample.reference.get("reference"):
            extra += f"\nReference answer: {sample.reference['reference']}"
        return {"instruction": sample.inputs.get("instruction", ""), "extra": extra}

    def judge_queries(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str]) -> list[JudgeQuery]:
        queries = []
        for sample in samples:
            output = outputs.get(sample.id)
            if not output:
                continue
            for aspect in self.aspects_for(metrics):
                lo, hi = aspect.scale
                # placeholders, not numbers: a judge that echoes the example must not score
                keys_json = "{" + ", ".join(f'"{k}": N' for k in aspect.keys) + "}"
                prompt = aspect.prompt.format(lo=int(lo), hi=int(hi), keys_json=keys_json, **self.prompt_fields(sample))
                images = [sample.inputs["image"], output] if aspect.pair else [output]
                queries.append(JudgeQuery(f"{sample.id}|{aspect.name}", sample.id, aspect.name, [str(i) for i in images], prompt))
        return queries

    def combine(self, scores: dict[str, float]) -> dict[str, float]:
        """Aspect sub-scores (key -> value) -> this sample's metric values."""
        raise NotImplementedError

    def aggregate(self, values: dict[str, list[float]]) -> dict[str, float]:
        """Per-sample metric values -> the headline numbers (default: means)."""
        return {metric: sum(v) / len(v) for metric, v in values.items() if v}

    def score(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str], *,
              device: str = "auto", judge=None) -> SuiteResult:
        queries = self.judge_queries(samples, outputs, metrics)
        replies = ask_judge(queries, judge)
        by_sample: dict[str, list[JudgeQuery]] = defaultdict(list)
        for query in queries:
            by_sample[query.sample_id].append(query)
        per_sample: dict[str, dict] = {}
        values: dict[str, list[float]] = defaultdict(list)
        groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for sample in samples:
            row: dict[str, Any] = {}
            per_sample[sample.id] = row
            output = outputs.get(sample.id)
            if not output:
                row["error"] = "no output"
                continue
            subs: dict[str, float] = {}
            for query in by_sample.get(sample.id, []):
                aspect = next(a for a in self.aspects if a.name == query.aspect)
                reply = replies.get(query.id)
                row[f"judge_{aspect.name}"] = reply
                if reply is None:  # say why: an unreadable output or source, else the judge itself
                    _, problem = loading.open_output_image(output)
                    if problem is None and aspect.pair:
                        _, problem = loading.open_output_image(sample.inputs.get("image"), what="source image")
                    row["error"] = problem or f"the judge gave no reply for {aspect.name}"
                    break
                parsed = parse_scores(reply, aspect.keys, aspect.scale)
                if parsed is None:
                    row["error"] = f"judge reply for {aspect.name} has no usable {'/'.join(aspect.keys)} scores"
                    break
                subs.update(parsed)
            if row.get("error"):
                continue
            row.update(subs)
            sample_metrics = {k: v for k, v in self.combine(subs).items() if k in metrics}
            row.update(sample_metrics)
            group = str(sample.meta.get(self.group_label) or "all")
            for metric, value in sample_metrics.items():
                values[metric].append(value)
                groups[metric][group].append(value)
        headline = self.aggregate(values)
        breakdown = {
            f"{metric} by {self.group_label}": {g: self.aggregate({metric: v})[metric] for g, v in sorted(by_group.items())}
            for metric, by_group in groups.items() if len(by_group) > 1
        }
        scored = sum(1 for row in per_sample.values() if not row.get("error"))
        return SuiteResult(metrics={m: headline[m] for m in metrics if m in headline}, per_sample=per_sample,
                           n=scored, breakdown=breakdown)


_PAIR_INTRO = ("The image shows two pictures side by side: on the LEFT the original, on the RIGHT the result of "
               "editing it with this instruction:\n\"{instruction}\"{extra}\n")
_JSON_TAIL = "\nReply with JSON only, in the form {keys_json}, each N a number from {lo} to {hi}."


class GEditSuite(JudgedEditSuite):
    name = "gedit"
    convention = "gedit-viescore (SC, PQ, O = sqrt(SC*PQ)), uniedit judge"
    default_metrics = ("SC", "PQ", "O")
    all_metrics = ("SC", "PQ", "O")
    group_label = "task_type"
    id_fields = ("key", "id", "_key")
    image_fields = ("input_image_raw", "input_image", "image")
    option_help = {"language": "'en' (default: GEdit-Bench-EN), 'cn', or 'all'"}
    data_help = (
        "Without --data stepfun-ai/GEdit-Bench is read from the hub cache (downloaded when online). Offline: on a "
        "machine with network run `hf download stepfun-ai/GEdit-Bench --repo-type dataset --local-dir DIR` (parquet "
        "shards with key, task_type, instruction, instruction_language, input_image_raw, Intersection_exist), copy "
        "DIR here and pass --data DIR."
    )
    aspects = (
        Aspect("semantics", ("editing_success", "overediting"), (0, 10), True,
               "You are a strict judge of image edits. " + _PAIR_INTRO +
               "Give two scores from {lo} to {hi}:\n"
               "- editing_success: how well the RIGHT picture carries out the instruction ({lo} = not at all, {hi} = perfectly);\n"
               "- overediting: how well the RIGHT picture keeps everything the instruction did not ask to change "
               "({lo} = a different picture, {hi} = nothing else changed)." + _JSON_TAIL),
        Aspect("quality", ("naturalness", "artifacts"), (0, 10), False,
               "You are a strict judge of image quality. Give this picture two scores from {lo} to {hi}:\n"
               "- naturalness: does it look like a real, coherent picture ({lo} = unnatural, {hi} = completely natural);\n"
               "- artifacts: is it free of distortion, blur, noise, watermarks and broken parts "
               "({lo} = heavy artifacts, {hi} = none)." + _JSON_TAIL),
    )
    metric_aspects = {"SC": ("semantics",), "PQ": ("quality",), "O": ("semantics", "quality")}

    def hub_data(self) -> tuple[str, tuple[str, ...]]:
        return "stepfun-ai/GEdit-Bench", ("data/*",)

    def make_sample(self, row: dict, path: Path) -> Sample | None:
        language = str(self.options.get("language", "en"))
        if language not in ("en", "cn", "all"):
            raise UsageError(f"--suite-option language={language!r}: expected en, cn or all.")
        row_language = str(row.get("instruction_language", "en"))
        if language != "all" and row_language != language:
            return None
        sample = super().make_sample(row, path)
        if sample is not None:
            sample.meta["language"] = row_language
            sample.meta["intersection"] = bool(row.get("Intersection_exist", False))
        return sample

    def combine(self, scores: dict[str, float]) -> dict[str, float]:
        # VIEScore: each of SC and PQ is the minimum of its sub-scores; O is their geometric mean
        out = {}
        if "editing_success" in scores:
            out["SC"] = min(scores["editing_success"], scores["overediting"])
        if "naturalness" in scores:
            out["PQ"] = min(scores["naturalness"], scores["artifacts"])
        if "SC" in out and "PQ" in out:
            out["O"] = math.sqrt(out["SC"] * out["PQ"])
        return out

    def score(self, samples, outputs, metrics, *, device="auto", judge=None) -> SuiteResult:
        result = super().score(samples, outputs, metrics, device=device, judge=judge)
        # GEdit also reports the subset whose instructions exist in both languages ("Intersection")
        inter = [s.id for s in samples if s.meta.get("intersection") and not result.per_sample[s.id].get("error")]
        if inter and len(inter) < result.n:
            result.breakdown["intersection subset"] = {
                m: sum(result.per_sample[i][m] for i in inter) / len(inter) for m in metrics if m in result.metrics}
        return result

    def predictions_from_folder(self, folder: Path, samples: list[Sample]) -> dict[str, str]:
        """GEdit's own output layout: <folder>/fullset/<task_type>/<language>/<key>.png."""
        found = {}
        for sample in samples:
            task, language = sample.meta.get("task_type"), sample.meta.get("language", "en")
            for candidate in (folder / "fullset" / str(task) / str(language) / f"{sample.id}.png",
                              folder / str(task) / str(language) / f"{sample.id}.png", folder / f"{sample.id}.png"):
                if candidate.is_file():
                    found[sample.id] = str(candidate)
                    break
        if not found:
            raise UsageError(f"--predictions {str(folder)!r}: no <key>.png found in GEdit's fullset/<task_type>/<language>/ layout.")
        return found


class ImgEditSuite(JudgedEditSuite):
    name = "imgedit"
    convention = "imgedit-basic (1-5 judge), uniedit judge"
    default_metrics = ("score",)
    all_metrics = ("score", "adherence", "quality", "preservation")
    group_label = "edit_type"
    # ImgEdit's benchmark JSON maps a case key to {"id": <image path>, "prompt", "edit_type"}
    id_fields = ("_key", "key", "index")
    image_fields = ("id", "image", "image_path", "input_image", "src_img")
    instruction_fields = ("prompt", "instruction", "edit_prompt")
    group_fields = ("edit_type", "type", "task_type", "category")
    image_dirs = ("images", "singleturn", "Basic", "basic")
    data_help = (
        "Place ImgEdit-Bench's basic benchmark (the JSON of {key: {id: image path, prompt, edit_type}} and its images, "
        "from the PKU-YuanGroup/ImgEdit release) in a folder and pass --data FOLDER."
    )
    aspects = (
        Aspect("edit", ("adherence", "quality", "preservation"), (1, 5), True,
               "You are a strict judge of image edits. " + _PAIR_INTRO +
               "Give three scores from {lo} to {hi}:\n"
               "- adherence: does the RIGHT picture do exactly what the instruction asks;\n"
               "- quality: is the edited part clean, seamless and realistic;\n"
               "- preservation: is everything the instruction did not mention left unchanged." + _JSON_TAIL),
    )
    metric_aspects = {m: ("edit",) for m in all_metrics}

    def combine(self, scores: dict[str, float]) -> dict[str, float]:
        return {**scores, "score": (scores["adherence"] + scores["quality"] + scores["preservation"]) / 3.0}


class KrisSuite(JudgedEditSuite):
    name = "kris"
    convention = "kris-bench (VC, VQ, IF, KP 1-5; overall 0-100), uniedit judge"
    default_metrics = ("overall", "VC", "VQ", "IF", "KP")
    all_metrics = ("overall", "VC", "VQ", "IF", "KP")
    group_label = "category"
    image_fields = ("ori_img", "image", "input_image", "source_image")
    instruction_fields = ("ins_en", "instruction", "prompt")
    data_help = (
        "Download KRIS-Bench (its KRIS_Bench/<category>/annotation.json files with the images beside them) and pass "
        "--data KRIS_Bench."
    )
    data_patterns = ("**/annotation.json", "**/*.jsonl")
    aspects = (
        Aspect("kris", ("visual_consistency", "visual_quality", "instruction_following", "knowledge_plausibility"),
               (1, 5), True,
               "You are a strict judge of knowledge-based image edits. " + _PAIR_INTRO +
               "Give four scores from {lo} to {hi}:\n"
               "- visual_consistency: is everything unrelated to the instruction unchanged;\n"
               "- visual_quality: is the RIGHT picture natural and free of artifacts;\n"
               "- instruction_following: does it do what the instruction asks;\n"
               "- knowledge_plausibility: is the result correct given real-world knowledge "
               "(physics, chemistry, geography, common sense)." + _JSON_TAIL),
    )
    metric_aspects = {m: ("kris",) for m in all_metrics}
    _short = {"visual_consistency": "VC", "visual_quality": "VQ", "instruction_following": "IF",
              "knowledge_plausibility": "KP"}

    def make_sample(self, row: dict, path: Path) -> Sample | None:
        sample = super().make_sample(row, path)
        if sample is not None and path.name == "annotation.json":
            # KRIS keys restart at 1 in every category folder: the id carries the folder
            category = path.parent.name
            sample.id = f"{category}/{sample.id}"
            sample.meta["category"] = sample.meta.get("category") or category
        return sample

    def combine(self, scores: dict[str, float]) -> dict[str, float]:
        out = {short: scores[key] for key, short in self._short.items()}
        mean = sum(out.values()) / len(out)
        out["overall"] = (mean - 1.0) / 4.0 * 100.0
        return out


class RiseSuite(JudgedEditSuite):
    name = "rise"
    convention = "risebench (accurate only if every judged score is full), uniedit judge"
    default_metrics = ("accuracy",)
    all_metrics = ("accuracy", "reasoning", "consistency", "plausibility")
    group_label = "category"
    id_fields = ("index", "id", "key", "_key")
    image_fields = ("image", "input_image", "image_path", "src_img")
    data_help = (
        "Download RISEBench (its data JSON, e.g. datav2_total_w_subtask.json, with the images/ folder it refers to) "
        "and pass --data FOLDER."
    )
    aspects = (
        Aspect("rise", ("reasoning", "consistency", "plausibility"), (1, 5), True,
               "You are a strict judge of reasoning-based image edits. " + _PAIR_INTRO +
               "Give three scores from {lo} to {hi}:\n"
               "- reasoning: does the RIGHT picture show the correct outcome the instruction asks you to reason about;\n"
               "- consistency: is everything else kept as in the original;\n"
               "- plausibility: is the result physically and visually plausible." + _JSON_TAIL),
    )
    metric_aspects = {m: ("rise",) for m in all_metrics}

    def combine(self, scores: dict[str, float]) -> dict[str, float]:
        full = self.aspects[0].scale[1]
        return {**scores, "accuracy": float(all(scores[k] >= full for k in self.aspects[0].keys))}

    def aggregate(self, values: dict[str, list[float]]) -> dict[str, float]:
        # RISEBench reports accuracy in percent
        means = super().aggregate(values)
        return {k: 100.0 * v if k == "accuracy" else v for k, v in means.items()}
