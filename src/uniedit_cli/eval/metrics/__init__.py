"""Metric implementations shared by the eval suites.

Text metrics (torch-free, imported eagerly):
    vqa_accuracy, vqa_normalize_answer, gqa_exact_match, gqa_normalize, mme_parse_answer,
    mme_scores, MME_PERCEPTION, MME_COGNITION
Image metrics (numpy at import; torch, open_clip and timm only when a model is needed):
    EditPair, ImageScorer, score_edits, mean_metrics, pixel_distances, cosine,
    directional_similarity, IMAGE_METRICS, check_metrics, load_clip, load_dino

See ``text.py``, ``image.py`` and ``encoders.py`` for the protocol each follows.
"""

from __future__ import annotations

from uniedit_cli.eval.metrics.text import (
    MME_COGNITION,
    MME_PERCEPTION,
    gqa_exact_match,
    gqa_normalize,
    mme_parse_answer,
    mme_scores,
    vqa_accuracy,
    vqa_normalize_answer,
    vqa_process_digit_article,
    vqa_process_punctuation,
)

_IMAGE = {"EditPair", "ImageScorer", "score_edits", "mean_metrics", "pixel_distances", "cosine",
          "directional_similarity", "IMAGE_METRICS", "MetricSpec", "check_metrics", "open_rgb"}
_ENCODERS = {"load_clip", "load_dino", "ClipEncoder", "DinoEncoder", "clip_pixels", "dino_pixels",
             "read_state_dict"}


def __getattr__(name: str):
    if name in _IMAGE:
        from uniedit_cli.eval.metrics import image

        return getattr(image, name)
    if name in _ENCODERS:
        from uniedit_cli.eval.metrics import encoders

        return getattr(encoders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted({"MME_COGNITION", "MME_PERCEPTION", "gqa_exact_match", "gqa_normalize", "mme_parse_answer",
                  "mme_scores", "vqa_accuracy", "vqa_normalize_answer", "vqa_process_digit_article",
                  "vqa_process_punctuation"} | _IMAGE | _ENCODERS)
