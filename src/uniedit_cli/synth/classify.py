"""Step 1: classify a VQA record into a task category and extract its short core answer.

::

    from uniedit_cli.synth.classify import classify, extract_process_answer

    classify(record) -> str                 # one of records.CATEGORIES
    extract_process_answer(record) -> str   # "red", "3", "pipe" ... (the short core answer)

Evidence, strongest first (REFERENCE.md, Uni-Edit step 2, plus relation, material and size):

1. ``record.choices`` -> ``multi_choice``.
2. The program's last operation (GQA semantic steps; CLEVR's are converted by its source):
   query color/shape/material/size -> that; query name -> ``relation`` when the referent is
   reached through a relation, ``shape`` when the answer is a shape word, else ``other``;
   query/choose hposition|vposition|place -> ``location``; query text -> ``ocr``; count ->
   ``count``; add/subtract -> ``math``; exist/verify/same/different/and/or -> ``yes_no``; choose
   attr -> that attribute's category; choose rel -> ``relation``; compare/choose name ->
   ``multi_choice``; common -> ``other``.
3. ``record.question_type``: CLEVR functions (query_color, count, equal_integer, ...), GQA
   detailed types (queryAttr, relS, positionQuery, verifyAttr, ...), VQAv2 answer types
   (yes/no, number, other).
4. Rules on the question and answer text: yes/no answers, numbers (count vs math), colour /
   shape / material / size words, OCR cues (written, sign, say, read, brand ...), caption cues,
   position words (location), relation phrases (relation), person and knowledge cues.

A program with an unknown operation is not classified from the program (the rules decide);
the instruction step then raises ``unknown_operation`` for it, so the record is counted once.
"""

from __future__ import annotations

import re
from collections import Counter

from uniedit_cli.synth import programs as P
from uniedit_cli.synth.records import CATEGORIES, VQARecord

__all__ = ["CATEGORIES", "classify", "extract_process_answer"]

COLOR_WORDS = frozenset({"red", "green", "blue", "yellow", "purple", "cyan", "brown", "gray", "grey", "orange", "pink",
                         "white", "black", "tan", "silver", "gold", "beige", "maroon", "teal", "navy", "violet"})
SHAPE_WORDS = frozenset({"cube", "sphere", "cylinder", "cone", "pyramid", "round", "square", "rectangular",
                         "triangular", "circle", "circular", "oval", "rectangle", "triangle", "star", "heart",
                         "hexagon", "ball", "block"})
MATERIAL_WORDS = frozenset({"metal", "metallic", "rubber", "matte", "wood", "wooden", "plastic", "glass", "leather",
                            "stone", "brick", "concrete", "cloth", "paper", "ceramic", "steel", "striped", "shiny"})
SIZE_WORDS = frozenset({"small", "large", "big", "little", "tiny", "huge", "medium", "giant"})
POSITION_WORDS = frozenset({"left", "right", "top", "bottom", "middle", "center", "centre", "front", "back",
                            "behind", "above", "below", "under", "corner", "foreground", "background"})
NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                           "thirteen fourteen fifteen sixteen seventeen eighteen nineteen "
                                           "twenty".split())}
_RELATION_PHRASES = ("to the left of", "to the right of", "in front of", "behind", "next to", "on top of", "under",
                     "below", "above", "beside", "near", "holding", "wearing", "sitting on", "standing on",
                     "on the", "in the", "inside", "attached to", "hanging on", "riding", "carrying")
_OCR_CUES = re.compile(r"\b(written|writing|say|says|said|read|reads|text|word|words|letter|letters|sign|label|"
                       r"brand|logo|title|number on|numbers on|jersey|license|plate|headline|caption says|printed|"
                       r"spell|spelled)\b")
_MATH_CUES = re.compile(r"(\bsum\b|\btotal\b|\bplus\b|\bminus\b|\bdifference\b|\bproduct\b|\bcalculate\b|\bcompute\b|"
                        r"\bsolve\b|\bequation\b|\bequals?\b|\bhow much\b|\bhow many more\b|\bhow many fewer\b|"
                        r"\bresult\b|\bvalue of\b|\bperimeter\b|\barea\b|\bangle\b|\bpercent|[0-9]\s*[-+*/x=]\s*[0-9])")
_CAPTION_CUES = re.compile(r"\b(describe|description|caption|what is happening|what's happening|what is going on|"
                           r"summari[sz]e|what does the (?:image|picture|photo) show|what is shown)\b")
_KNOWLEDGE_CUES = re.compile(r"^(who|whose)\b|\b(what|which) (brand|breed|species|kind of|type of|sport|country|city|"
                             r"team|company|year|famous|landmark|movie|book|language|flag|dish|cuisine|artist)\b|"
                             r"\bname of\b|\bfamous\b|\bhistor")
_CHOICE_CUE = re.compile(r"(^|\s)\(?[A-D][.):]\s|\boptions?:|\bchoices?:", re.I)
_ATTRIBUTE_QUESTIONS = (
    ("color", re.compile(r"^(?:what|which) colou?rs?\b|\bwhat is the colou?r\b")),
    ("shape", re.compile(r"^what shape\b|\bwhat is the shape\b")),
    ("material", re.compile(r"^what material\b|\bwhat is the material\b|\bmade of\??$")),
    ("size", re.compile(r"^(?:what size|how big|how large|how small)\b|\bwhat is the size\b")),
)
_CLEVR_FUNCTIONS = {
    "query_color": "color", "query_shape": "shape", "query_material": "material", "query_size": "size",
    "count": "count", "exist": "yes_no", "equal_integer": "yes_no", "less_than": "yes_no", "greater_than": "yes_no",
    "equal_color": "yes_no", "equal_shape": "yes_no", "equal_material": "yes_no", "equal_size": "yes_no",
}
_VQA_ANSWER_TYPES = {"yes/no": "yes_no"}


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _is_number(text: str) -> bool:
    t = text.strip().lower().rstrip(".")
    return t.isdigit() or t in NUMBER_WORDS or bool(re.fullmatch(r"-?\d+(?:[.,]\d+)?%?", t))


def _category_of_attr(attr: str) -> str | None:
    if attr in ("color", "shape", "material", "size"):
        return attr
    if attr in ("hposition", "vposition", "place", "room", "location", "position"):
        return "location"
    if attr == "text":
        return "ocr"
    if attr == "rel":
        return "relation"
    return None


def _from_program(record: VQARecord) -> str | None:
    try:
        steps = P.parse_program(record.program)
    except P.ProgramError:
        return None  # the instruction step reports unknown_operation / bad_program for it
    last = steps[-1]
    op = last.op
    if op == "query":
        cat = _category_of_attr(last.attr)
        if cat:
            return cat
        if last.attr == "name":
            ref = P.referent_index(steps)
            if ref is not None and P.hops(steps, ref) >= 1:
                return "relation"
            return "shape" if str(record.answer).strip().lower() in SHAPE_WORDS else "other"
        return "other"
    if op == "count":
        return "count"
    if op in ("add", "subtract"):
        return "math"
    if op in ("exist", "verify", "same", "different", "and", "or", "equal", "less", "greater"):
        return "yes_no"
    if op == "choose":
        if last.attr == "name" or not last.attr:
            return "multi_choice"
        return _category_of_attr(last.attr) or "multi_choice"
    if op == "compare":
        return "multi_choice"
    if op == "common":
        return "other"
    return None


def _from_type(record: VQARecord) -> str | None:
    t = (record.question_type or "").strip()
    if not t:
        return None
    low = t.lower()
    if low in _CLEVR_FUNCTIONS:
        return _CLEVR_FUNCTIONS[low]
    if low in _VQA_ANSWER_TYPES:
        return _VQA_ANSWER_TYPES[low]
    if low == "number":
        return _number_category(record.question)
    if low == "other":
        return None  # VQAv2's "other": the text rules decide
    # GQA detailed types (camelCase): verify*/exist*/logic*/two*/all* are yes/no questions
    if low.startswith(("verify", "exist", "logic", "two", "all", "same", "different")) or low in ("and", "or"):
        return "yes_no"
    if "position" in low:
        return "location"
    if low in ("rels", "relo", "dir", "directof", "reldir"):
        return "relation"
    if low.startswith("choose") and "rel" in low:
        return "relation"
    if low.startswith(("compare", "choose")) and not any(k in low for k in ("color", "material", "shape", "size")):
        return "multi_choice"
    for key in ("color", "material", "shape", "size"):
        if key in low:
            return key
    if low in ("readtext", "ocr", "text"):
        return "ocr"
    if low in ("count", "number"):
        return "count"
    if low == "math":
        return "math"
    if low in ("place", "placechoose", "placeverify"):
        return "location"
    return None


def _number_category(question: str) -> str:
    q = question.lower()
    if _OCR_CUES.search(q) and not q.startswith("how many"):
        return "ocr"
    if _MATH_CUES.search(q):
        return "math"
    if q.startswith("how many") or " how many " in q:
        return "count"
    return "math"


def _from_text(question: str, answer: str) -> str:
    q = question.strip().lower()
    a = answer.strip().lower().rstrip(".")
    a_tokens = _tokens(a)
    q_tokens = set(_tokens(q))
    if _CHOICE_CUE.search(question):
        return "multi_choice"
    if a in ("yes", "no") or (a_tokens[:1] in (["yes"], ["no"]) and len(a_tokens) <= 3):
        return "yes_no"
    if _CAPTION_CUES.search(q):
        return "caption"
    # the question's own attribute word wins over OCR cues ("What shape is the sign?")
    for cat, pattern in _ATTRIBUTE_QUESTIONS:
        if pattern.search(q):
            return cat
    if a_tokens and _is_number(a):
        return _number_category(q)
    if _MATH_CUES.search(q) and any(ch.isdigit() for ch in a):
        return "math"
    if _OCR_CUES.search(q):
        return "ocr"
    if ("color" in q_tokens or "colour" in q_tokens) or (a_tokens and set(a_tokens) <= COLOR_WORDS):
        return "color"
    if "shape" in q_tokens or (len(a_tokens) == 1 and a_tokens[0] in SHAPE_WORDS and q.startswith("what shape")):
        return "shape"
    if "material" in q_tokens or "made of" in q or (len(a_tokens) == 1 and a_tokens[0] in MATERIAL_WORDS):
        return "material"
    if "size" in q_tokens or q.startswith(("how big", "how large", "how small")) or \
            (len(a_tokens) == 1 and a_tokens[0] in SIZE_WORDS):
        return "size"
    if q.startswith("where") or "which side" in q or "what side" in q or (a_tokens and set(a_tokens) <= POSITION_WORDS):
        return "location"
    if _KNOWLEDGE_CUES.search(q):
        return "knowledge"
    if q.startswith(("what is", "what are", "what's", "which")) and any(p in q for p in _RELATION_PHRASES):
        return "relation"
    if a_tokens and len(a_tokens) <= 3 and a_tokens[-1] in SHAPE_WORDS:
        return "shape"
    if len(a_tokens) > 8:
        return "caption"
    return "other"


def classify(record: VQARecord) -> str:
    """The task category of ``record`` (one of CATEGORIES); never raises for odd text."""
    if record.choices:
        return "multi_choice"
    if record.program:
        cat = _from_program(record)
        if cat:
            return cat
    cat = _from_type(record)
    if cat:
        return cat
    return _from_text(record.question or "", extract_process_answer(record))


_CHOICE_PREFIX = re.compile(r"^\(?[A-Ha-h][.):]\s+|^(?:answer|the answer is|final answer)\s*[:\-]?\s*", re.I)


def extract_process_answer(record: VQARecord) -> str:
    """The short core answer: the majority of VQAv2's ten answers, a choice letter's text, the
    number/colour/shape/... word of a sentence answer, the first clause otherwise. Lowercased
    except for text answers (OCR keeps its case)."""
    answer = str(record.answer or "").strip()
    if not answer and record.answers:
        answer = Counter(a.strip().lower() for a in record.answers if a and a.strip()).most_common(1)[0][0]
    if record.program and answer and len(answer) <= 32 and " " not in answer:
        # already short (the world, GQA): only text answers keep their case
        try:
            last = P.parse_program(record.program)[-1]
        except P.ProgramError:
            last = None
        return answer if last is not None and last.op == "query" and last.attr == "text" else answer.lower()
    text = _CHOICE_PREFIX.sub("", answer).strip().strip('"').strip()
    text = re.sub(r"[.!]+$", "", text).strip()
    if record.choices and len(text) == 1 and text.upper() in "ABCDEFGH":
        k = "ABCDEFGH".index(text.upper())
        if k < len(record.choices):
            text = str(record.choices[k]).strip()
    words = text.split()
    if len(words) <= 3:
        return text if _keeps_case(record) else text.lower()
    low = text.lower()
    toks = _tokens(low)
    if toks[:1] in (["yes"], ["no"]):
        return toks[0]
    q = (record.question or "").lower()
    for vocab, cue in ((COLOR_WORDS, "colo"), (SHAPE_WORDS, "shape"), (MATERIAL_WORDS, "material"),
                       (SIZE_WORDS, "size")):
        if cue in q:
            hits = [t for t in toks if t in vocab]
            if len(set(hits)) == 1:
                return hits[0]
    if "how many" in q or _MATH_CUES.search(q):
        nums = re.findall(r"-?\d+(?:\.\d+)?", low) or [str(NUMBER_WORDS[t]) for t in toks if t in NUMBER_WORDS]
        if nums:
            return nums[-1] if _MATH_CUES.search(q) else nums[0]
    first = re.split(r"(?<=[.!?;])\s", text, maxsplit=1)[0]
    return first if _keeps_case(record) else first.lower()


def _keeps_case(record: VQARecord) -> bool:
    return bool(_OCR_CUES.search((record.question or "").lower()))


# --- an optional model-based classifier (--classifier MODEL) -----------------------------------

CLASSIFIER_SYSTEM = (
    "You sort visual questions by what their answer is about. Categories: color, shape, material, size, count, "
    "location, relation, knowledge, ocr, math, caption, yes_no, multi_choice, other. Reply with exactly one "
    "category name and nothing else."
)
_CATEGORY_ALIASES = {"yes/no": "yes_no", "yesno": "yes_no", "yes-no": "yes_no", "multiple_choice": "multi_choice",
                     "multiple-choice": "multi_choice", "multichoice": "multi_choice", "colour": "color",
                     "counting": "count", "position": "location", "text": "ocr"}


def parse_category(reply: str | None) -> str | None:
    """The category a classifier model named, or None when its reply names none."""
    words = re.findall(r"[a-z_/\-]+", (reply or "").lower())
    for word in words[:3]:
        word = _CATEGORY_ALIASES.get(word, word)
        if word in CATEGORIES:
            return word
    return None


class ModelClassifier:
    """Classifies with an LLM from the registry (greedy, so every rank plans the same rows);
    a reply that names no category falls back to the rules, and is counted."""

    def __init__(self, adapter, *, batch_size: int = 32):
        self.adapter = adapter
        self.batch_size = batch_size
        self.classified = 0
        self.fallbacks = 0

    def classify_batch(self, records: list[VQARecord]) -> list[str]:
        prompts = [f"Question: {r.question}\nAnswer: {r.answer}" for r in records]
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            replies += self.adapter.rewrite(prompts[start:start + self.batch_size], system=CLASSIFIER_SYSTEM,
                                            max_new_tokens=6, temperature=0.0)
        out = []
        self.classified += len(records)
        for record, reply in zip(records, replies):
            category = parse_category(reply)
            if category is None:
                self.fallbacks += 1
                category = classify(record)
            out.append(category)
        return out
