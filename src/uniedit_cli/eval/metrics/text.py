"""Text-answer metrics with the benchmarks' own definitions: VQAv2 accuracy, GQA exact match,
MME acc / acc+. Pure Python (no torch), so text suites import nothing heavy.

Sources (facts, re-implemented here):

- VQAv2: the VQA evaluation script ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
  (GT-Vision-Lab/VQA, also the EvalAI server's answer processor). An answer is normalised by
  ``processPunctuation`` then ``processDigitArticle``; the accuracy of a prediction is the
  average, over the 10 human answers, of ``min(1, #matches among the other 9 / 3)``.
- GQA: exact match after lowercasing and stripping punctuation (the testdev-balanced
  protocol as harnesses such as lmms-eval apply it).
- MME: the benchmark's ``eval_tool/calculation.py``: a reply is "yes" / "no" when it is exactly
  that or its first four characters contain it, otherwise "other"; per category
  ``acc * 100 + acc+ * 100`` where acc+ counts images whose questions (two per image) are all
  right; perception (10 categories, max 2000) and cognition (4 categories, max 800) totals.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

# --- VQAv2 ----------------------------------------------------------------------------------
# The tables below are the evaluation script's own (vqaEval.py). Quirks are kept on purpose so
# that numbers match the official ones: keys with capitals ("Im", "Ive", ...) can never match
# because words are lowercased first, and "somebody'd" maps to "somebodyd".

VQA_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
VQA_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
VQA_ARTICLES = frozenset({"a", "an", "the"})
VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                   ",", "?", "!")
# vqaEval.py: periodStrip = "(?!<=\d)(\.)(?!\d)" (the "(?!<=" is the script's own typo for a
# look-behind, so in effect: a period not followed by a digit), commaStrip = "(\d)(\,)(\d)".
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The script calls periodStrip.sub("", text, re.UNICODE): re.UNICODE (== 32) lands in sub's
# ``count`` argument, so at most 32 periods are removed. Kept for identical numbers.
_PERIOD_STRIP_COUNT = 32


def vqa_process_punctuation(text: str) -> str:
    """vqaEval.py ``processPunctuation``: a punctuation mark next to a space (or anywhere, when
    the text has a digit-comma-digit group) is deleted, otherwise replaced by a space; then
    periods not followed by a digit are deleted."""
    out = text
    has_number_comma = _COMMA_STRIP.search(text) is not None
    for p in VQA_PUNCTUATION:
        if (p + " " in text or " " + p in text) or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def vqa_process_digit_article(text: str) -> str:
    """vqaEval.py ``processDigitArticle``: lowercase, number words to digits, drop articles,
    restore contractions ("dont" -> "don't"), single spaces."""
    words = []
    for word in text.lower().split():
        word = VQA_NUMBER_WORDS.get(word, word)
        if word not in VQA_ARTICLES:
            words.append(word)
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def _vqa_clean(text: str) -> str:
    return str(text).replace("\n", " ").replace("\t", " ").strip()


def vqa_normalize_answer(answer: str) -> str:
    """The normalisation the evaluation applies to a model's answer (newlines and tabs to
    spaces, strip, punctuation, then digits / articles / contractions)."""
    return vqa_process_digit_article(vqa_process_punctuation(_vqa_clean(answer)))


def vqa_accuracy(prediction: str | None, answers: Sequence[str | Mapping[str, Any]]) -> float:
    """VQAv2 accuracy of one prediction, in [0, 1] (the script reports 100 x the mean).

    ``answers`` are the human answers (10 in VQAv2), as strings or as the annotation dicts
    ``{"answer": ...}``. As in vqaEval.py: the prediction is always normalised; the human
    answers are normalised the same way only when they are not all identical (the annotations
    are already normalised); then for each human answer, ``min(1, matches among the other
    answers / 3)``, averaged over the humans. A missing prediction scores 0.
    """
    gts = [_vqa_clean(a["answer"] if isinstance(a, Mapping) else a) for a in answers]
    if not gts:
        raise ValueError("vqa_accuracy needs at least one human answer")
    if prediction is None:
        return 0.0
    pred = vqa_normalize_answer(prediction)
    if len(set(gts)) > 1:
        gts = [vqa_process_digit_article(vqa_process_punctuation(a)) for a in gts]
    total = 0.0
    for i in range(len(gts)):
        matches = sum(1 for j, other in enumerate(gts) if j != i and other == pred)
        total += min(1.0, matches / 3.0)
    return total / len(gts)


# --- GQA ------------------------------------------------------------------------------------

_GQA_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def gqa_normalize(text: str | None) -> str:
    """Lowercase, delete ASCII punctuation, collapse whitespace."""
    if text is None:
        return ""
    return " ".join(str(text).lower().translate(_GQA_PUNCT_TABLE).split())


def gqa_exact_match(prediction: str | None, answer: str) -> float:
    """1.0 when the normalised prediction equals the normalised answer, else 0.0."""
    if prediction is None:
        return 0.0
    return 1.0 if gqa_normalize(prediction) == gqa_normalize(answer) else 0.0


# --- MME ------------------------------------------------------------------------------------

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_MME_CATEGORY_KEYS = {c.lower(): c for c in MME_PERCEPTION + MME_COGNITION}


def mme_parse_answer(reply: str | None) -> str:
    """MME calculation.py ``parse_pred_ans``: "yes" / "no" when the (lowercased) reply is exactly
    that or its first four characters contain "yes" (checked first) or "no"; else "other".
    Surrounding whitespace is stripped first (decoders often emit a leading space/newline)."""
    if reply is None:
        return "other"
    text = str(reply).strip().lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_category(name: str) -> str:
    """The canonical spelling of a category ("ocr" -> "OCR", "Count" -> "count")."""
    return _MME_CATEGORY_KEYS.get(str(name).strip().lower(), str(name).strip())


def mme_scores(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Score MME replies.

    Each row: ``category``, ``image`` (the image the question is about: its two questions are
    grouped by it), ``answer`` (ground truth "Yes"/"No") and ``prediction`` (the model's reply,
    None when missing: counted wrong). Returns::

        {"perception": float, "cognition": float, "total": float,
         "categories": {cat: {"acc", "acc_plus", "score", "questions", "images", "other"}},
         "missing_categories": [...]}

    ``acc`` and ``acc_plus`` are fractions, ``score = 100*acc + 100*acc_plus`` (0..200).
    Perception / cognition totals sum the scores of their listed categories that are present;
    categories outside both lists are scored but not totalled.
    """
    grouped: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    others: dict[str, int] = defaultdict(int)
    for row in rows:
        cat = mme_category(row["category"])
        gt = str(row["answer"]).strip().lower()
        if gt not in ("yes", "no"):
            raise ValueError(f"MME ground truth must be yes or no, got {row['answer']!r} (category {cat})")
        pred = mme_parse_answer(row.get("prediction"))
        if pred == "other":
            others[cat] += 1
        grouped[cat][str(row["image"])].append(pred == gt)

    categories: dict[str, dict[str, float]] = {}
    for cat, images in grouped.items():
        answers = [ok for oks in images.values() for ok in oks]
        acc = sum(answers) / len(answers)
        acc_plus = sum(1 for oks in images.values() if all(oks)) / len(images)
        categories[cat] = {"acc": acc, "acc_plus": acc_plus, "score": 100.0 * acc + 100.0 * acc_plus,
                           "questions": len(answers), "images": len(images), "other": others[cat]}
    perception = sum(categories[c]["score"] for c in MME_PERCEPTION if c in categories)
    cognition = sum(categories[c]["score"] for c in MME_COGNITION if c in categories)
    missing = [c for c in MME_PERCEPTION + MME_COGNITION if c not in categories]
    return {"perception": perception, "cognition": cognition, "total": perception + cognition,
            "categories": categories, "missing_categories": missing}
