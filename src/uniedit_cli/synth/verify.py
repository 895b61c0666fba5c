"""Step 5: verify each target.

- The judge (a registry model that can ask) re-asks the embedded question
  (``expected_after_edit``) on the target; ``judge_ok`` compares its answer with the expected
  one after VQA-style normalisation (the same normalisation as the VQAv2 metric). This is the
  check the released pipeline defined but never used (REFERENCE.md).
- The judge also rates visual quality 1-5 (the release keeps >= 3).
- CLIP (open_clip, optional): ``clip_img`` = cos(source, target) image embeddings;
  ``clip_dir`` = cos(E_img(target) - E_img(source), E_txt(after) - E_txt(before)), where, lacking
  captions, "before" is the original question with its answer and "after" the explicit edit.
All scores are stored as columns; ``--min-*`` thresholds decide what is kept.
"""

from __future__ import annotations

import re

QUALITY_QUESTION = ("Rate the visual quality of this image from 1 (broken, garbled) to 5 (clean and natural). "
                    "Answer with a single digit.")


def answers_match(predicted: str | None, expected: str) -> bool:
    from uniedit_cli.eval.metrics import vqa_normalize_answer

    if predicted is None:
        return False
    got, want = vqa_normalize_answer(predicted.lower()), vqa_normalize_answer(str(expected).lower())
    if not got:
        return False
    # a judge that answers in a sentence ("The cube is green.") still counts if the expected
    # short answer is one of its normalised words
    return got == want or (len(want.split()) == 1 and want in got.split())


def parse_rating(text: str | None) -> float | None:
    match = re.search(r"\b([1-5])\b", text or "")
    return float(match.group(1)) if match else None


def score_rows(rows: list[dict], planned_rows, *, judge, clip, config) -> None:
    """Fill judge_answer, judge_ok, quality, clip_dir and clip_img in place (rows with a target)."""
    with_target = [i for i, row in enumerate(rows) if row["edited_image"] is not None]
    if not with_target:
        return
    targets = [rows[i]["edited_image"] for i in with_target]
    if judge is not None:
        adapter, resolved = judge
        options = resolved.options()
        questions = [rows[i]["expected_after_edit"]["question"] for i in with_target]
        answers = _batched(adapter.ask, targets, questions, config.batch_size, options)
        ratings = _batched(adapter.ask, targets, [QUALITY_QUESTION] * len(targets), config.batch_size,
                           {**options, "max_new_tokens": 4})
        for i, answer, rating in zip(with_target, answers, ratings):
            rows[i]["judge_answer"] = answer
            rows[i]["judge_ok"] = answers_match(answer, rows[i]["expected_after_edit"]["answer"])
            rows[i]["quality"] = parse_rating(rating)
    if clip is not None:
        sources = [rows[i]["input_image"] for i in with_target]
        before = [f"{rows[i]['original_question']} {rows[i]['original_answer']}" for i in with_target]
        after = [planned_rows[i].instruction.explicit_prompt for i in with_target]
        clip_img, clip_dir = clip.scores(sources, targets, before, after)
        for i, img_sim, dir_sim in zip(with_target, clip_img, clip_dir):
            rows[i]["clip_img"] = float(img_sim)
            rows[i]["clip_dir"] = float(dir_sim)


def _batched(fn, images, texts, batch_size: int, options: dict) -> list:
    out: list = []
    for start in range(0, len(images), batch_size):
        out += fn(images[start:start + batch_size], texts[start:start + batch_size], **options)
    return out


CLIP_NAMES = ("vit-b-32", "vit-b/32", "openai")  # OpenAI CLIP ViT-B/32, the only architecture the scorer builds
CLIP_HELP = ("CLIP for the clip_dir / clip_img scores: vit-b-32 (OpenAI CLIP ViT-B/32 from the local hub cache), "
             "a local ViT-B/32 checkpoint file or folder, or random (random weights: a smoke test, not a filter).")


def resolve_clip(spec: str):
    """What ``--clip`` names -> "random" or the checkpoint file to load, checked before any work.

    A name other than vit-b-32 / openai / random that is not an existing path, a folder without
    a single checkpoint, and vit-b-32 weights that are neither cached nor downloadable are usage
    errors that name ``--clip`` (synth has no --clip-weights)."""
    from pathlib import Path

    from uniedit_cli.errors import UsageError
    from uniedit_cli.eval.metrics.encoders import clip_weights_path

    text = str(spec).strip()
    if text.lower() == "random":
        return "random"
    if text.lower() in CLIP_NAMES:
        return clip_weights_path(None, option="--clip")
    if not Path(text).expanduser().exists():
        raise UsageError(f"--clip {text!r}: not a CLIP model synth knows, and no such file or folder.",
                         hint="--clip takes vit-b-32 (OpenAI CLIP ViT-B/32, the weights from the local hub cache), "
                              "a local ViT-B/32 checkpoint file or folder, or random. Other open_clip models are not "
                              "supported.")
    return clip_weights_path(text, option="--clip")


class ClipScorer:
    """CLIP ViT-B/32 through the eval metrics' loader (one home for CLIP weights and preprocessing).

    ``spec``: what ``--clip`` takes (:data:`CLIP_HELP`): "vit-b-32" / "openai" (the OpenAI
    weights from the local cache), a checkpoint file or folder, or "random" (the real
    architecture with random weights: a smoke test, not a filter).
    """

    def __init__(self, spec: str, *, device: str = "auto"):
        from uniedit_cli.eval.metrics import load_clip

        weights = resolve_clip(spec)
        if weights == "random":
            self.encoder = load_clip(random_weights=True, device=device)
        else:  # a file that is not a ViT-B/32 checkpoint is a usage error naming --clip
            self.encoder = load_clip(weights, device=device, option="--clip")

    def scores(self, sources, targets, before: list[str], after: list[str]):
        from uniedit_cli.eval.metrics import cosine, directional_similarity

        enc = self.encoder
        e_src = enc.encode_images([enc.preprocess(img) for img in sources])
        e_tgt = enc.encode_images([enc.preprocess(img) for img in targets])
        t_before, t_after = enc.encode_texts(before), enc.encode_texts(after)
        return cosine(e_src, e_tgt), directional_similarity(e_tgt, e_src, t_after, t_before)


def reject_reason(row: dict, config, *, has_judge: bool) -> str | None:
    if has_judge and config.require_judge_ok and row["judge_ok"] is False:
        return "judge_mismatch"
    if config.min_quality is not None and row["quality"] is not None and row["quality"] < config.min_quality:
        return "low_quality"
    if config.min_clip_dir is not None and row["clip_dir"] is not None and row["clip_dir"] < config.min_clip_dir:
        return "low_clip_dir"
    if config.min_clip_img is not None and row["clip_img"] is not None and row["clip_img"] < config.min_clip_img:
        return "low_clip_img"
    return None
