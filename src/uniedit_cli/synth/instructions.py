"""Step 2: write the edit instruction (a deterministic grammar over the reasoning program).

::

    from uniedit_cli.synth.instructions import write_instruction, check_leak

    result = write_instruction(record, category, random.Random(key), styles=STYLES, max_depth=2)
    # -> Instruction, or Rejection(reason, detail) for a row that cannot be written
    #    (answer_leak, no_alternative, no_referent, no_space, unsupported_category, ...).
    # Raises programs.UnknownOperationError (reason "unknown_operation") / ProgramError for a
    # record whose program cannot be read: the pipeline counts it as a bad record.
    check_leak(text, answer) -> bool      # True if ``text`` gives ``answer`` away

No LLM: every instruction is assembled from the record's program (GQA semantic steps) and scene
graph when present, else from the question's own words. Same record, category and rng state =>
same Instruction. Styles (REFERENCE.md, Uni-Edit step 3; issue 3):

- ``conditional``: an if/else on the queried property; both branches are real, distinct edits
  of the referent, so the target shows which branch was taken. The named hypothesis is the true
  answer with probability 1/2 (``rng``), so the branch cannot be guessed without looking;
  ``condition_holds`` records which one it was.
- ``synthesis``: add an object that shares the answer's attribute (colour, shape, material,
  size, kind, side) or, for counts, add as many new objects as the answer.
- ``referring``: act on the object reached by the question's relation chain (>= 1 hop), or give
  the chain's anchor the referent's queried attribute (the answer, never named).
- ``nested``: the same over >= 2 hops (up to ``max_depth``), phrased hop by hop.
- ``text-answer``: write the derived answer on a sign/board (ocr, math, caption, knowledge).

The answer never appears in ``edit_prompt`` except as a conditional's hypothesis: every prompt
is checked with the hypothesis slot blanked, after normalisation (case, punctuation, number
words <-> digits, plurals, synonyms such as grey/gray, big/large, metallic/metal); a hit rejects
the row as ``answer_leak``. ``explicit_prompt`` (the resolved edit for an editor model) may
name it. ``expected_after_edit`` is ``{"question", "answer", "program"}``: a question to re-ask
on the target, the answer it must get, and (for records with a program) its GQA program as
JSON, which the world's verifier executes on the edited scene graph ("" when there is none).
Records without a program or scene graph (VQAv2, jsonl) get conditional / synthesis /
text-answer instructions from the question's words, with ``EditOp.target`` None.

Edits (``Instruction.edit``, see ``world.edits`` for the args): on the referent recolor /
reshape / rematerial / resize / remove / move (world scenes; recolor and remove elsewhere; move
only for relation-free descriptions, which a move cannot invalidate); add for synthesis and
count branches (``{"object": {...}, "count": n, "side"/"where": placement}``); write_text for
text-answer (``{"text", "surface"}``, plus ``"font"`` and ``"discard_scene": True`` for real
images). For world records every edit is feasible by construction (free cells and wall slots
are checked), and ``expected_after_edit["program"]`` executed on ``world.apply_edit(scene,
edit)`` gives ``expected_after_edit["answer"]`` (tested).

Rejection reasons: ``answer_leak``, ``no_alternative`` (no second value or edit to branch on),
``no_referent`` (nothing to edit), ``no_space`` (the world has no free cell / wall slot),
``unsupported_program`` (e.g. and/or questions), ``unsupported_category`` (no style applies),
``too_deep``, ``empty_answer``.
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from typing import Any

from uniedit_cli.synth import programs as P
from uniedit_cli.synth.classify import extract_process_answer
from uniedit_cli.synth.records import STYLES, EditOp, Instruction, Rejection, VQARecord
from uniedit_cli.world import scene as WS

__all__ = ["ATTRIBUTE_CATEGORIES", "TEXT_CATEGORIES", "check_leak", "normalize", "write_instruction"]

ATTRIBUTE_CATEGORIES = ("color", "shape", "material", "size")
TEXT_CATEGORIES = ("ocr", "math", "caption", "knowledge")

# --- leak check ----------------------------------------------------------------------------------

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
                      "ninety": 90, "hundred": 100, "none": 0, "dozen": 12, "twice": 2, "thrice": 3})
_TENS = frozenset({20, 30, 40, 50, 60, 70, 80, 90})
# A small synonym table, applied after singularising; values are canonical forms.
_SYNONYMS = {
    "grey": "gray", "colour": "color", "colored": "color", "big": "large", "huge": "large", "little": "small",
    "tiny": "small", "metallic": "metal", "shiny": "metal", "rubber": "matte", "ball": "sphere",
    "spherical": "sphere", "block": "cube", "cubic": "cube", "cubical": "cube", "cylindrical": "cylinder",
    "conical": "cone", "wooden": "wood", "golden": "gold", "tv": "television", "cellphone": "phone",
    "bike": "bicycle", "plane": "airplane", "aeroplane": "airplane", "couch": "sofa", "auto": "car",
    "automobile": "car", "stripe": "striped", "stripy": "striped",
}
_IRREGULAR = {"men": "man", "women": "woman", "people": "person", "children": "child", "mice": "mouse",
              "teeth": "tooth", "feet": "foot", "geese": "goose", "leaves": "leaf", "knives": "knife",
              "shelves": "shelf", "wolves": "wolf"}
_NOT_PLURAL = frozenset(
    "glass grass bus gas dress class cross boss lens canvas jeans pants shorts glasses this is was has his its yes "
    "as us plus minus always perhaps series species chess kiss less process across tennis christmas campus circus "
    "cactus octopus virus status bonus atlas iris analysis basis axis physics news mathematics whereas bias "
    "thus does goes sometimes pieces".split())
_ARTICLES = frozenset({"a", "an", "the"})
_TOKEN = re.compile(r"[a-z0-9]+")


def _norm_token_uncached(tok: str) -> str:
    if tok.isdigit():
        return str(int(tok))
    n = _NUMBER_WORDS.get(tok)
    if n is not None:
        return str(n)
    tok = _SYNONYMS.get(tok, tok)
    if tok in _IRREGULAR:
        return _IRREGULAR[tok]
    if len(tok) > 3 and tok.endswith("s") and tok not in _NOT_PLURAL:
        tok = P.singularize(tok)
    return _SYNONYMS.get(tok, tok)


# word -> normalised token; a plain dict (bounded below) is several times faster than lru_cache
# here, and the vocabulary of instructions is small.
_TOKEN_CACHE: dict[str, str] = {}


def normalize(text: str) -> tuple[str, ...]:
    """Tokens for the leak check: lowercase words, punctuation dropped, number words as digits
    (``twenty-one`` -> ``21``), plurals singular, synonyms canonical."""
    cache = _TOKEN_CACHE
    out: list[str] = []
    for w in _TOKEN.findall(text.lower().replace("-", " ")):
        t = cache.get(w)
        if t is None:
            _learn({w})
            t = cache[w]
        if t[0] in "123456789" and out and len(t) == 1 and out[-1] in _TENS_STR and w in _NUMBER_WORDS:
            out[-1] = str(int(out[-1]) + int(t))  # "twenty one" -> 21
            continue
        out.append(t)
    return tuple(out)


_TENS_STR = frozenset(str(t) for t in _TENS)


@lru_cache(maxsize=65536)
def _answer_tokens(answer: str) -> tuple[str, ...]:
    toks = list(normalize(answer))
    while toks and toks[0] in _ARTICLES:
        toks.pop(0)
    return tuple(toks)


# normalised token -> every surface word seen so far that normalises to it (the inverse of
# _TOKEN_CACHE), so a one-word answer is checked with one set intersection.
_SURFACES: dict[str, set[str]] = {}


def _learn(words: set[str]) -> None:
    cache = _TOKEN_CACHE
    # difference() with the dict itself (not .keys()) only probes the dict for each word; a
    # keys view would be walked in full, making every check O(vocabulary)
    for w in words.difference(cache):
        if len(cache) > 200_000:
            cache.clear()
            _SURFACES.clear()
            return _learn(words)
        t = cache[w] = _norm_token_uncached(w)
        _SURFACES.setdefault(t, set()).add(w)


def check_leak(text: str, answer: str) -> bool:
    """True if ``text`` states ``answer`` (after normalisation: case, punctuation, number words
    and digits, plurals, synonyms). Yes/no answers never count: a yes/no answer is not a word
    an instruction could give away, and "no" is too common to test for."""
    a = _answer_tokens(str(answer))
    if not a or a == ("yes",) or a == ("no",):
        return False
    if len(a) == 1 and not (a[0].isdigit() and int(a[0]) > 20):
        # fast path (most answers): no multi-word number can produce this token
        words = set(_TOKEN.findall(text.lower().replace("-", " ")))
        _learn(words)
        return not words.isdisjoint(_SURFACES.get(a[0], ()))
    t = normalize(text)
    if len(a) == 1:
        return a[0] in t
    n = len(a)
    return any(t[i:i + n] == a for i in range(len(t) - n + 1))


def _same_value(a: str, b: str) -> bool:
    return _answer_tokens(a) == _answer_tokens(b)


# --- vocabularies --------------------------------------------------------------------------------

_COLOR_NAMES = tuple(WS.COLORS)
_GQA_COLORS = _COLOR_NAMES + ("white", "black", "tan", "silver", "gold", "beige")
_GQA_MATERIALS = ("wood", "metal", "plastic", "glass", "leather", "stone", "brick", "concrete", "cloth", "paper")
_GQA_SIZE_GROUPS = (("small", "large"), ("tall", "short"), ("long", "short"))
_GQA_SHAPES = ("round", "square", "rectangular", "triangular")
_NEW_NOUNS = ("ball", "vase", "cup", "balloon", "box", "star")
_SURFACES_NEW = ("whiteboard", "blackboard", "parchment", "neon sign")
_FONTS = ("handwritten", "bold sans-serif", "elegant serif", "chalk", "typewriter")
_OP_ATTR = {"recolor": "color", "reshape": "shape", "rematerial": "material", "resize": "size"}
_ATTR_OP = {v: k for k, v in _OP_ATTR.items()}
_QUESTION = {"color": "What color is {np}?", "shape": "What shape is {np}?", "material": "What material is {np}?",
             "size": "What size is {np}?"}


_WORLD_VALUES = {"color": _COLOR_NAMES, "shape": WS.SHAPES, "name": WS.SHAPES, "material": WS.MATERIALS,
                 "size": WS.SIZES, "hposition": ("left", "right"), "vposition": ("top", "bottom")}


def _world_values(attr: str) -> tuple[str, ...]:
    return _WORLD_VALUES.get(attr, ())


@lru_cache(maxsize=256)
def _world_alternatives(attr: str, answer: str) -> tuple[str, ...]:
    return tuple(v for v in _world_values(attr) if not _same_value(v, answer))


def _gqa_values(attr: str, answer: str) -> tuple[str, ...]:
    if attr == "color":
        return _GQA_COLORS
    if attr == "material":
        return _GQA_MATERIALS
    if attr == "size":
        for group in _GQA_SIZE_GROUPS:
            if answer in group:
                return group
        return ()
    if attr == "shape":
        return _GQA_SHAPES if answer in _GQA_SHAPES else WS.SHAPES
    if attr == "hposition":
        return ("left", "right")
    if attr == "vposition":
        return ("top", "bottom")
    return ()


class _TokenTable(dict):
    """value -> _answer_tokens(value), filled on first use."""

    def __missing__(self, value: str) -> tuple[str, ...]:
        tokens = self[value] = _answer_tokens(value)
        return tokens


_VALUE_TOKENS = _TokenTable()


def _article(text: str) -> str:
    return ("an " if text[:1] in "aeiou" else "a ") + text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- randomness ----------------------------------------------------------------------------------
# random.Random.choice/randrange/shuffle go through Python-level _randbelow (~0.7 us a draw);
# these use the C-level random() (~0.05 us). Still fully determined by the rng's state.

def _choice(rng: random.Random, seq):
    return seq[int(rng.random() * len(seq))]


def _randrange(rng: random.Random, n: int) -> int:
    return int(rng.random() * n)


def _shuffle(rng: random.Random, items: list) -> list:
    """Fisher-Yates in place (returns the list)."""
    rand = rng.random
    for i in range(len(items) - 1, 0, -1):
        j = int(rand() * (i + 1))
        items[i], items[j] = items[j], items[i]
    return items


# --- record analysis -----------------------------------------------------------------------------

class _Ctx:
    """What the grammar needs to know about one record (computed once per call)."""

    __slots__ = ("record", "category", "rng", "answer", "program", "steps", "graph", "world", "final", "query",
                 "ref", "ref_id", "ref_obj", "np", "own", "n_hops", "max_depth", "members", "prefix", "_used")

    def __init__(self, record: VQARecord, category: str, rng: random.Random, max_depth: int):
        self.record, self.category, self.rng, self.max_depth = record, category, rng, max_depth
        program = self.program = record.program or None
        steps = P.parse_program(program) if program else None  # UnknownOperationError propagates
        raw = record.answer
        if steps is not None and type(raw) is str and raw and len(raw) <= 32 and " " not in raw:
            # already short (the world, GQA): the same result as extract_process_answer, cheaper
            last = steps[-1]
            self.answer = raw if last.op == "query" and last.attr == "text" else raw.lower()
        else:
            self.answer = extract_process_answer(record)
        graph = self.graph = record.scene_graph if type(record.scene_graph) is dict else None
        self.world = graph is not None and type(graph.get("world")) is dict
        self.query = self.np = self.ref = self.ref_id = self.ref_obj = self.members = None
        self.own = frozenset()
        self.n_hops = 0
        self.prefix: list[dict] | None = None  # a referent program when no step denotes it alone
        self._used: dict[str, frozenset[str]] | None = None
        if not program:
            self.steps = self.final = None
            self.query, self.np = _text_query(record.question, category, self.answer)
            return
        self.steps = steps
        final = self.final = steps[-1]
        op = final.op
        self.query = (final.attr if op in ("query", "verify", "choose") else
                      "math" if op in ("add", "subtract") else op)
        ref = self.ref = P.referent_index(steps)
        if ref is None:
            return
        _, self.n_hops, self.own = P.referent_summary(steps, ref)
        if op != "count":
            try:
                self.np = P.describe(steps, ref)
            except P.ProgramError:  # a referent built by set operations (CLEVR union): no phrase
                self.ref = None
                return
        if graph is not None:
            try:
                ids = P.resolve(steps, graph, ref, trust_ids=True)
            except P.ProgramError:
                ids = None
            self.members = ids
            if ids and len(ids) == 1 and op != "count":
                self.ref_id = ids[0]
                self.ref_obj = graph["objects"].get(ids[0])

    def used(self, attr: str) -> frozenset[str]:
        """Values of ``attr`` the program's descriptions use (names count as shapes). An edit
        must not give an object such a value: it could then match another object's
        description, and the chain would no longer pick out one object."""
        if self._used is None:
            used: dict[str, set[str]] = {}
            for st in self.steps or ():
                if st.op == "filter" and not st.negated:
                    used.setdefault(st.attr or P._attr_type(st.value), set()).add(st.value)
                elif st.op in ("select", "relate") and st.name not in P.GENERIC_NAMES:
                    used.setdefault("shape", set()).add(st.name)
            self._used = {k: frozenset(v) for k, v in used.items()}
        return self._used.get(attr, frozenset())

    def current(self, attr: str) -> str | None:
        if self.ref_obj is None:
            return None
        return P.attribute_value(self.ref_obj, attr, self.graph)


# Question patterns for records without a program: (category, regex with a ``np`` group).
_TEXT_PATTERNS = [
    ("color", re.compile(r"^(?:what|which) colou?r (?:is|are) (?P<np>.+?)\??$")),
    ("color", re.compile(r"^what is the colou?r of (?P<np>.+?)\??$")),
    ("color", re.compile(r"^what colou?r does (?P<np>.+?) have\??$")),
    ("shape", re.compile(r"^what shape (?:is|are|does) (?P<np>.+?)(?: have)?\??$")),
    ("shape", re.compile(r"^what is the shape of (?P<np>.+?)\??$")),
    ("material", re.compile(r"^what (?:material )?(?:is|are) (?P<np>.+?) made of\??$")),
    ("material", re.compile(r"^what material (?:is|are) (?P<np>.+?)\??$")),
    ("size", re.compile(r"^(?:what size|how big) (?:is|are) (?P<np>.+?)\??$")),
    ("count", re.compile(r"^how many (?P<np>.+?)(?: are there| are visible| can you see| do you see| are in the "
                         r"(?:image|picture|photo))?\??$")),
    ("location", re.compile(r"^(?:on which side|which side) (?:of the (?:image|picture|photo) )?(?:is|are) "
                            r"(?P<np>.+?)(?: on)?\??$")),
]
_LOCATION_ANSWERS = {"left": "hposition", "right": "hposition", "top": "vposition", "bottom": "vposition"}
_WHERE = re.compile(r"^where (?:is|are) (?P<np>.+?)(?: located)?\??$")
_REL_WORDS = ("to the left of", "to the right of", "in front of", "on top of", "next to", "behind", "under", "below",
              "above", "beside", "near", "inside", "on", "in")
_WHAT_REL = re.compile(r"^what(?: is|'s| are) (?P<rel>" + "|".join(_REL_WORDS) + r") (?P<obj>.+?)\??$")
_WHAT_VERB = re.compile(r"^what (?:is|are) (?P<subj>.+?) (?P<verb>holding|wearing|carrying|riding|eating|using|"
                        r"sitting on|standing on|looking at|playing with|drinking)\??$")


def _text_query(question: str, category: str, answer: str = "") -> tuple[str | None, str | None]:
    """(queried attribute, referent noun phrase) read from a question without a program."""
    q = question.strip().lower()
    if category == "location":
        m = _WHERE.match(q)
        side = _LOCATION_ANSWERS.get(answer.strip().lower())
        if m and side:
            return side, _definite(m.group("np"))
    if category == "relation":
        m = _WHAT_REL.match(q)
        if m:
            return "name", f"the object {m.group('rel')} {_definite(m.group('obj'))}"
        m = _WHAT_VERB.match(q)
        if m:
            return "name", f"the object that {_definite(m.group('subj'))} is {m.group('verb')}"
    for cat, pattern in _TEXT_PATTERNS:
        if cat != category:
            continue
        m = pattern.match(q)
        if m:
            np_ = m.group("np").strip()
            if cat == "count":
                np_ = re.sub(r"^(?:the|are)\s+", "", np_)
                return "count", np_
            return ({"location": "hposition"}.get(cat, cat)), _definite(np_)
    return None, None


def _definite(np_: str) -> str:
    np_ = re.sub(r"^(?:this|that|these|those)\b", "the", np_.strip())
    if not np_.startswith(("the ", "a ", "an ", "his ", "her ", "their ", "its ", "my ", "your ")):
        np_ = "the " + np_
    return np_


# --- edits on the referent -----------------------------------------------------------------------

def _ops_menu(ctx: _Ctx, exclude) -> list[str]:
    if ctx.world and ctx.ref_obj is not None and "shape" in ctx.ref_obj:
        ops = ["recolor", "reshape", "rematerial", "resize", "remove"]
        if ctx.n_hops == 0:
            # moving changes relations, so only a relation-free description survives a move
            ops.append("move")
    else:
        ops = ["recolor", "remove"]
    return [op for op in ops if _OP_ATTR.get(op) not in exclude]


def _value_pool(ctx: _Ctx, op: str) -> tuple[str, ...]:
    attr = _OP_ATTR[op]
    if ctx.world:
        return _world_values(attr)
    return _gqa_values(attr, "") if attr != "color" else _COLOR_NAMES


def _pick_value(ctx: _Ctx, op: str, forbidden: list[str], taken: list[str] = ()) -> str | None:
    if op == "remove":
        return ""
    if op == "move":  # to the other half of the picture, if it has a free cell
        side = P.attribute_value(ctx.ref_obj, "hposition", ctx.graph)
        other = "right" if side == "left" else "left"
        half = WS.GRID_COLS // 2  # cells of the left half have col < half (the object itself is not there)
        return other if any((col < half) == (other == "left") for col, _ in _free_cells(ctx.graph)) else None
    attr = _OP_ATTR[op]
    current = ctx.current(attr)
    used = ctx.used(attr)
    if op == "resize":
        if current not in WS.SIZES:
            return None
        value = "small" if current == "large" else "large"
        if value in used or any(_answer_tokens(value) == _answer_tokens(f) for f in forbidden):
            return None
        return value
    # vocabulary values are single canonical words, so their normalised form is a dict lookup
    banned = {_answer_tokens(f) for f in forbidden}
    pool = [v for v in _value_pool(ctx, op)
            if v != current and v not in taken and v not in used and _VALUE_TOKENS[v] not in banned]
    return _choice(ctx.rng, pool) if pool else None


_PRONOUN_TEXT = {
    "recolor": ("paint it {v}", "make it {v}", "color it {v}"),
    "reshape": ("turn it into a {v}", "reshape it into a {v}", "make it a {v}"),
    "rematerial": ("make it {v}", "give it a {v} finish", "change its material to {v}"),
    "remove": ("remove it", "take it out of the scene", "delete it"),
    "move": ("move it to the other side of the picture", "move it across to the opposite half of the picture",
             "carry it over to the other side"),
}
_RESIZE_TEXT = {"large": ("make it bigger", "enlarge it", "scale it up"),
                "small": ("make it smaller", "shrink it", "scale it down")}
_NP_TEXT = {
    "recolor": ("Paint {np} {v}.", "Change the color of {np} to {v}.", "Make {np} {v}."),
    "reshape": ("Turn {np} into a {v}.", "Reshape {np} into a {v}.", "Replace {np} with a {v} of the same color."),
    "rematerial": ("Make {np} {v}.", "Give {np} a {v} finish.", "Change the material of {np} to {v}."),
    "remove": ("Remove {np}.", "Take {np} out of the scene.", "Delete {np} from the picture."),
    "move": ("Move {np} to the other side of the picture.", "Carry {np} over to the opposite half of the picture.",
             "Put {np} on the other side of the picture."),
}
_RESIZE_NP_TEXT = {"large": ("Make {np} bigger.", "Enlarge {np}.", "Scale {np} up."),
                   "small": ("Make {np} smaller.", "Shrink {np}.", "Scale {np} down.")}


def _pronoun_text(ctx: _Ctx, op: str, value: str) -> str:
    options = _RESIZE_TEXT[value] if op == "resize" else _PRONOUN_TEXT[op]
    return _choice(ctx.rng, options).format(v=_material_word(ctx, value) if op == "rematerial" else value)


def _np_text(ctx: _Ctx, op: str, value: str, np_: str) -> str:
    options = _RESIZE_NP_TEXT[value] if op == "resize" else _NP_TEXT[op]
    return _choice(ctx.rng, options).format(np=np_, v=_material_word(ctx, value) if op == "rematerial" else value)


def _material_word(ctx: _Ctx, value: str) -> str:
    return value if ctx.world else f"made of {value}"


def _explicit(op: str, value: str, np_: str) -> str:
    if op == "recolor":
        return f"Change the color of {np_} to {value}"
    if op == "reshape":
        return f"Turn {np_} into a {value}, keeping its color, size and material"
    if op == "rematerial":
        return f"Change the material of {np_} to {value}"
    if op == "resize":
        return f"Make {np_} {value}"
    if op == "remove":
        return f"Remove {np_}"
    if op == "move":
        return f"Move {np_} to the {value} side of the picture"
    raise ValueError(op)  # pragma: no cover


def _expected_for(ctx: _Ctx, op: str, value: str, index: int | None, np_: str, target: str | None = None) -> dict:
    """The question re-asked on the target after ``op`` on the object of step ``index``."""
    if op == "remove":
        question, answer, final = f"Is there {_article(_strip_det(np_))}?", "no", ("exist", "?")
    elif op == "move":
        question, answer, final = f"On which side of the picture is {np_}?", value, ("query", "hposition")
    else:
        attr = _OP_ATTR[op]
        question, answer, final = _QUESTION[attr].format(np=np_), value, ("query", attr)
    return {"question": question, "answer": answer, "program": _expected_program(ctx, index, *final)}


def _strip_det(np_: str) -> str:
    for det in ("the ", "a ", "an "):
        if np_.startswith(det):
            return np_[len(det):]
    return np_


def _expected_program(ctx: _Ctx, index: int | None, operation: str, argument: str) -> str:
    """JSON of the referent's description (the steps ``index`` depends on) + a final step."""
    if ctx.program is None or (index is None and ctx.prefix is None):
        return ""
    if index is None:
        parts = [_step_json(d["operation"], d["argument"], tuple(d["dependencies"])) for d in ctx.prefix]
    else:
        steps = ctx.steps
        parts = []
        for k in range(index + 1):  # the common case: a linear chain 0..index, copied as is
            st = steps[k]
            if st.deps != ((k - 1,) if k else ()):
                parts = [_step_json(d["operation"], d["argument"], tuple(d["dependencies"]))
                         for d in P.subprogram(steps, index)]
                break
            parts.append(_step_json(st.operation, st.argument, st.deps))
    parts.append(_step_json(operation, argument, (len(parts) - 1,)))
    return "[" + ", ".join(parts) + "]"


_js = json.encoder.encode_basestring  # the C string escaper json.dumps uses
_STEP_HEADS: dict[tuple[str, str], str] = {}
_DEPS_JSON: dict[tuple[int, ...], str] = {}


def _step_json(operation: str, argument: str, deps: tuple[int, ...]) -> str:
    """One step as json.dumps writes it; the (operation, argument) part is cached, since steps
    repeat across records ("select: cube (o1)")."""
    head = _STEP_HEADS.get((operation, argument))
    if head is None:
        if len(_STEP_HEADS) > 100_000:
            _STEP_HEADS.clear()
        head = _STEP_HEADS[operation, argument] = (
            f'{{"operation": {_js(str(operation))}, "argument": {_js(str(argument))}, "dependencies": ')
    tail = _DEPS_JSON.get(deps)
    if tail is None:
        tail = _DEPS_JSON[deps] = repr([int(d) for d in deps]) + "}"  # a list of ints' repr is its JSON
    return head + tail


def _program_json(program: list[dict]) -> str:
    """json.dumps(program) for GQA step lists, several times faster (runs once per instruction)."""
    return "[" + ", ".join(_step_json(st["operation"], st["argument"], tuple(st["dependencies"]))
                           for st in program) + "]"


def _edit(ctx: _Ctx, op: str, value: str, target: str | None) -> EditOp:
    if op == "remove":
        return EditOp("remove", target, {})
    if op == "move":
        return EditOp("move", target, {"side": value})
    return EditOp(op, target, {_OP_ATTR[op]: value})


def _finish(ctx: _Ctx, *, style: str, prompt: str, hypothesis: str | None, edit: EditOp, explicit: str,
            expected: dict, template: str, holds: bool | None = None,
            mask: tuple[str, ...] = ()) -> Instruction | Rejection:
    """Leak-check the prompt (hypothesis slot blanked) and build the Instruction."""
    checked = prompt.replace("{hyp}", " ")
    for m in mask:  # option texts a two-sided question names on purpose (compare)
        checked = checked.replace(m, " ")
    if check_leak(checked, ctx.answer):
        return Rejection("answer_leak", f"{style}: {checked!r} gives away {ctx.answer!r}")
    text = prompt.replace("{hyp}", hypothesis or "")
    return Instruction(edit_prompt=text, style=style, category=ctx.category, process_answer=ctx.answer,
                       expected_after_edit=expected, edit=edit, explicit_prompt=explicit, template=template,
                       condition_holds=holds)


# --- conditional ---------------------------------------------------------------------------------

_COND_TEMPLATES = (
    "If {subj} {is_} {{hyp}}, {a}; otherwise, {b}.",
    "Look at {np}. If it {is_} {{hyp}}, {a}; if not, {b}.",
    "Check whether {np} {is_} {{hyp}}: if so, {a}; if not, {b}.",
    "Find {np}. Should it be {{hyp}}, {a}. Otherwise {b}.",
)


def _is_phrase(ctx: _Ctx, attr: str, value: str) -> str:
    if attr in ("shape", "name"):
        return _article(value) if (ctx.world or value in WS.SHAPES or attr == "name") else value
    if attr == "material" and not ctx.world:
        return f"made of {value}"
    if attr == "hposition":
        return f"on the {value} side of the picture"
    if attr == "vposition":
        return f"at the {value} of the picture"
    return value


def _conditional(ctx: _Ctx) -> Instruction | Rejection:
    q = ctx.query
    if q == "count":
        return _conditional_count(ctx)
    if q == "exist":
        return _conditional_exist(ctx)
    if ctx.final is not None and ctx.final.op in ("verify", "choose") and q == "rel" \
            or ctx.final is not None and ctx.final.op in ("same", "different", "compare") and len(ctx.final.deps) == 2:
        return _conditional_claim(ctx)
    if ctx.final is not None and ctx.final.op == "verify":
        return _conditional_attribute(ctx, q, verify=True)
    if q in ("color", "shape", "material", "size", "hposition", "vposition", "name"):
        return _conditional_attribute(ctx, q)
    return Rejection("unsupported_program", f"no conditional for {q!r} questions")


def _conditional_attribute(ctx: _Ctx, attr: str, *, verify: bool = False) -> Instruction | Rejection:
    rng = ctx.rng
    if ctx.np is None:
        return Rejection("no_referent", "the question names no object to edit")
    answer = ctx.answer
    if verify:
        # "Is the cube red?": the claim is fixed; balance by negating it half the time
        value = ctx.final.value
        negated = rng.random() < 0.5
        holds = (answer == "yes") != negated
        hypothesis = _is_phrase(ctx, attr, value)
        is_ = "is not" if negated else "is"
        forbidden = [value]
    else:
        if ctx.final is not None and ctx.final.op == "choose":
            alternatives = [o for o in ctx.final.options if not _same_value(o, answer)]
        elif ctx.world:
            alternatives = _world_alternatives(attr, answer)
        elif attr == "name" and ctx.graph is not None:
            names = {str(o.get("name", "")).lower() for o in ctx.graph["objects"].values()}
            alternatives = sorted(n for n in names if n and not _same_value(n, answer))
        else:
            alternatives = [v for v in _gqa_values(attr, answer) if not _same_value(v, answer)]
        if not alternatives:
            return Rejection("no_alternative", f"no other value of {attr} to hypothesise for {answer!r}")
        holds = rng.random() < 0.5
        value = answer if holds else _choice(rng, alternatives)
        hypothesis = _is_phrase(ctx, attr, value)
        is_ = "is"
        forbidden = [answer, value]
    queried = "shape" if attr == "name" else attr
    same_op = _ATTR_OP.get(queried)
    allowed = _ops_menu(ctx, ctx.own)
    menu = [op for op in allowed if _OP_ATTR.get(op) != queried]
    branches: list[tuple[str, str]] = []
    if same_op is not None and same_op in allowed and same_op != "resize" and not verify and rng.random() < 0.5:
        v1 = _pick_value(ctx, same_op, forbidden)
        v2 = _pick_value(ctx, same_op, forbidden, [v1] if v1 else [])
        if v1 and v2:
            branches = [(same_op, v1), (same_op, v2)]
    if not branches:
        if len(menu) < 2:
            return Rejection("no_alternative", "fewer than two distinct edits possible on the referent")
        ops = _shuffle(rng, list(menu))
        for op in ops:
            if len(branches) == 2:
                break
            v = _pick_value(ctx, op, forbidden)
            if v is not None:
                branches.append((op, v))
        if len(branches) < 2:
            return Rejection("no_alternative", "fewer than two distinct edits possible on the referent")
    (op_a, v_a), (op_b, v_b) = branches
    variant = _randrange(rng, len(_COND_TEMPLATES))
    a_text, b_text = _pronoun_text(ctx, op_a, v_a), _pronoun_text(ctx, op_b, v_b)
    subj = ctx.np
    prompt = _COND_TEMPLATES[variant].format(subj=subj, np=ctx.np, is_=is_, a=a_text, b=b_text)
    if variant == 3 and is_ == "is not":
        prompt = prompt.replace("Should it be {hyp}", "Should it not be {hyp}")
    prompt = _cap(prompt)
    op, v = (op_a, v_a) if holds else (op_b, v_b)
    edit = _edit(ctx, op, v, ctx.ref_id)
    return _finish(ctx, style="conditional", prompt=prompt, hypothesis=hypothesis, edit=edit,
                   explicit=_explicit(op, v, ctx.np), expected=_expected_for(ctx, op, v, ctx.ref, ctx.np),
                   template=f"conditional.{variant}.{op_a}-{op_b}", holds=holds)


def _retarget(ctx: _Ctx, index: int | None, ids: tuple[str, ...] | None, np_: str,
              prefix: list[dict] | None = None) -> None:
    """Point the context's referent at another object (the first object of a two-sided claim)."""
    ctx.ref, ctx.np, ctx.prefix = index, np_, prefix
    if index is not None:
        _, ctx.n_hops, ctx.own = P.referent_summary(ctx.steps, index)
    else:
        ctx.n_hops, ctx.own = 0, frozenset({"shape", "name"})
    ctx.ref_id = ctx.ref_obj = None
    if ctx.graph is not None and ids and len(ids) == 1 and ids[0] in ctx.graph["objects"]:
        ctx.ref_id, ctx.ref_obj = ids[0], ctx.graph["objects"][ids[0]]


def _conditional_claim(ctx: _Ctx) -> Instruction | Rejection:
    """Conditionals on two-sided questions: relations (verify/choose rel), same/different,
    compare. The claim is drawn so that it holds about half the time (a negated relation, the
    other option, same <-> different, the two objects swapped); the edit acts on the first
    object."""
    rng, final, steps = ctx.rng, ctx.final, ctx.steps
    answer = ctx.answer
    mask: tuple[str, ...] = ()
    if final.attr == "rel":
        b_np = P.describe(steps, final.deps[0])
        a_name = final.name
        a_np = "the object" if a_name in P.GENERIC_NAMES else f"the {a_name}"
        ids = final.ids
        prefix = None
        if ids and len(ids) == 1:
            prefix = [{"operation": "select", "argument": f"{a_name if a_name not in P.GENERIC_NAMES else 'object'} "
                                                          f"({ids[0]})", "dependencies": []}]
        _retarget(ctx, None, ids, a_np, prefix)
        if final.op == "verify":
            negated = rng.random() < 0.5
            holds = (answer == "yes") != negated
            hyp = ("not " if negated else "") + final.rel
        else:
            hyp_rel = _choice(rng, final.options)
            short = P._REL_SHORT.get(hyp_rel, hyp_rel)
            holds = _same_value(short, answer)
            hyp = hyp_rel
        first, second = (a_np, b_np) if final.role == "s" else (b_np, a_np)
        claim = f"{first} is {{hyp}} {second}"
    elif final.op in ("same", "different"):
        a_i, b_i = final.deps
        a_np, b_np = P.describe(steps, a_i), P.describe(steps, b_i)
        claim_same = rng.random() < 0.5
        truth_same = (answer == "yes") == (final.op == "same")
        holds = claim_same == truth_same
        attr = final.attr
        hyp = f"are the same {attr}" if claim_same else f"have different {attr}s"
        claim = f"{a_np} and {b_np} {{hyp}}"
        _retarget(ctx, a_i, _resolve_or_none(ctx, a_i), a_np)
        ctx.own = ctx.own | {attr}
    else:  # compare: answer is the name of the larger/smaller object
        a_i, b_i = final.deps
        nps = (P.describe(steps, a_i), P.describe(steps, b_i))
        if ctx.graph is None:
            return Rejection("unsupported_program", "compare conditionals need a scene graph")
        names = [P.attribute_value(ctx.graph["objects"][i[0]], "name") if i and len(i) == 1 else None
                 for i in (_resolve_or_none(ctx, a_i), _resolve_or_none(ctx, b_i))]
        if None in names or names[0] == names[1]:
            return Rejection("unsupported_program", "compare needs two differently named objects")
        swap = rng.random() < 0.5
        first = 1 if swap else 0
        holds = names[first] == answer
        claim = f"{nps[first]} is {{hyp}} {nps[1 - first]}"
        hyp = f"{final.attr} than"
        mask = nps  # both candidates are named on purpose: naming one is not giving it away
        _retarget(ctx, a_i, _resolve_or_none(ctx, a_i), nps[0])
        ctx.own = ctx.own | {"size"}
    menu = _ops_menu(ctx, set(ctx.own))
    _shuffle(rng, menu)
    branches = []
    for op in menu:
        v = _pick_value(ctx, op, [answer])
        if v is not None:
            branches.append((op, v))
        if len(branches) == 2:
            break
    if len(branches) < 2:
        return Rejection("no_alternative", "fewer than two distinct edits possible on the first object")
    (op_a, v_a), (op_b, v_b) = branches
    target_np = ctx.np
    a_text = _np_text(ctx, op_a, v_a, target_np).rstrip(".")
    b_text = _np_text(ctx, op_b, v_b, target_np).rstrip(".")
    variant = _randrange(rng, 2)
    if variant == 0:
        prompt = f"If {claim}, {a_text[:1].lower() + a_text[1:]}; otherwise, {b_text[:1].lower() + b_text[1:]}."
    else:
        prompt = f"Check whether {claim}. If so, {a_text[:1].lower() + a_text[1:]}; if not, " \
                 f"{b_text[:1].lower() + b_text[1:]}."
    op, v = (op_a, v_a) if holds else (op_b, v_b)
    edit = _edit(ctx, op, v, ctx.ref_id)
    return _finish(ctx, style="conditional", prompt=_cap(prompt), hypothesis=hyp, edit=edit,
                   explicit=_explicit(op, v, target_np), expected=_expected_for(ctx, op, v, ctx.ref, target_np),
                   template=f"conditional.claim{variant}.{final.op}.{op_a}-{op_b}", holds=holds, mask=mask)


def _resolve_or_none(ctx: _Ctx, index: int) -> tuple[str, ...] | None:
    if ctx.graph is None:
        return None
    try:
        return P.resolve(ctx.steps, ctx.graph, index, trust_ids=True)
    except P.ProgramError:
        return None


def _count_set(ctx: _Ctx) -> tuple[str, str] | None:
    """(plural, singular-without-determiner) descriptions of the counted set."""
    if ctx.steps is not None and ctx.ref is not None:
        return (P.describe(ctx.steps, ctx.ref, plural=True, determiner=None),
                P.describe(ctx.steps, ctx.ref, determiner=None))
    if ctx.np:
        return ctx.np, _singular_np(ctx.np)
    return None


_PREPOSITIONS = frozenset({"on", "in", "at", "near", "to", "of", "with", "behind", "under", "next", "that", "which",
                           "who", "beside", "above", "below", "inside", "by", "from"})


def _singular_np(plural: str) -> str:
    """"red cars on the street" -> "red car on the street" (the head is the word before the
    first preposition, or the last word)."""
    words = plural.split()
    head = len(words) - 1
    for i, w in enumerate(words):
        if i > 0 and w in _PREPOSITIONS:
            head = i - 1
            break
    words[head] = _IRREGULAR.get(words[head]) or P.singularize(words[head])
    return " ".join(words)


def _count_add_spec(ctx: _Ctx) -> dict | None:
    """The add-EditOp args for one more member of the counted set (world), or None."""
    if not (ctx.world and ctx.steps is not None and ctx.ref is not None):
        return None
    start, _ = P.own_constraints(ctx.steps, ctx.ref)
    spec: dict[str, str] = {}
    i = ctx.ref
    while ctx.steps[i].op == "filter":
        st = ctx.steps[i]
        if st.negated or st.attr not in ("color", "size", "material"):
            return None
        spec[st.attr] = st.value
        i = st.deps[0]
    head = ctx.steps[start]
    if head.name not in P.GENERIC_NAMES:
        if head.name not in WS.SHAPES:
            return None
        spec["shape"] = head.name
    args: dict[str, Any] = {}
    if head.op == "relate":
        if head.role != "s" or head.rel not in WS.SPATIAL_RELATIONS:
            return None
        try:
            anchors = P.resolve(ctx.steps, ctx.graph, head.deps[0], trust_ids=True)
        except P.ProgramError:
            return None
        if len(anchors) != 1 or P.hops(ctx.steps, head.deps[0]) > 0:
            return None
        args["where"] = [[head.rel, anchors[0]]]
    rng = ctx.rng
    for key in ("shape", "color", "size", "material"):
        if key not in spec:
            # values the chain's other descriptions use would let the newcomer match them
            pool = [v for v in _WORLD_VALUES[key] if v not in ctx.used(key)]
            if not pool:
                return None
            spec[key] = _choice(rng, pool)
    args["object"] = spec
    return args


def _conditional_count(ctx: _Ctx) -> Instruction | Rejection:
    rng = ctx.rng
    if not ctx.answer.isdigit():
        return Rejection("unsupported_program", f"count answer {ctx.answer!r} is not a number")
    n = int(ctx.answer)
    described = _count_set(ctx)
    if described is None:
        return Rejection("no_referent", "the question names nothing to count")
    plural, single = described
    holds = rng.random() < 0.5
    if holds:
        h = n
    else:
        options = [n + d for d in (-2, -1, 1, 2) if n + d >= 0]
        h = _choice(rng, options)
    # "remove" needs a member, "add" needs room: with h >= 1 the true branch removes (n = h >= 1)
    # and the false branch adds; with h = 0 the true branch adds and the false branch removes
    # (then n != 0, so there is something to remove).
    first, second = ("remove", "add") if h >= 1 else ("add", "remove")
    op = first if holds else second
    add_args = None
    edit_target = None
    if ctx.graph is not None and ctx.world:
        if op == "add":
            add_args = _count_add_spec(ctx)
            if add_args is None:
                return Rejection("unsupported_program", "cannot place a new member of this set")
            from uniedit_cli.world.edits import placement_cells

            if not placement_cells(ctx.graph, add_args):
                return Rejection("no_space", "no free cell for one more object")
        else:
            members = ctx.members or ()
            if not members:
                return Rejection("unsupported_program", "no member to remove")
            edit_target = _choice(rng, sorted(members))
    if op == "add" and add_args is None:
        add_args = {"object": {"name": _strip_det(single).split(" ")[0]}, "count": 1}
    hyp = "zero" if h == 0 else f"exactly {h}"  # "zero", not "no": the hypothesis must read as a number
    verb = "are" if h != 1 else "is"
    subject = plural if h != 1 else single
    if first == "add":  # "if there are none, add a cube"
        add_text = _choice(rng, ("add {a}", "put {a} in the scene")).format(a=_article(single))
    else:  # no number words ("one more") next to a count
        add_text = _choice(rng, ("add another {s}", "put in another {s}")).format(s=single)
    remove_text = _choice(rng, ("remove {a}", "take away {a}")).format(a=_article(single))
    a_text, b_text = (remove_text, add_text) if first == "remove" else (add_text, remove_text)
    variant = _randrange(rng, 3)
    if variant == 0:
        prompt = f"If there {verb} {{hyp}} {subject}, {a_text}; otherwise, {b_text}."
    elif variant == 1:
        prompt = f"Count the {plural}. If there {verb} {{hyp}} of them, {a_text}; if not, {b_text}."
    else:
        prompt = f"Should the picture show {{hyp}} {subject}, {a_text}. Otherwise {b_text}."
    if variant == 1 and h == 0:
        prompt = f"Count the {plural}. If there are {{hyp}}, {a_text}; if there are some, {b_text}."
        hyp = "none"
    edit = EditOp("add", None, add_args) if op == "add" else EditOp("remove", edit_target, {})
    after = n + 1 if op == "add" else n - 1
    explicit = (f"Add another {single}" if op == "add" else f"Remove {_article(single)}")
    expected = {"question": f"How many {plural} are there?", "answer": str(after),
                "program": _expected_program(ctx, ctx.ref, "count", "")}
    return _finish(ctx, style="conditional", prompt=prompt, hypothesis=hyp, edit=edit, explicit=explicit,
                   expected=expected, template=f"conditional.count{variant}.{first}-{second}", holds=holds)


def _conditional_exist(ctx: _Ctx) -> Instruction | Rejection:
    """"Is there a red cube?": if there is one, remove it; otherwise add one (or the negated
    claim, drawn half the time, so condition_holds is balanced whatever the yes/no ratio)."""
    rng = ctx.rng
    if ctx.ref is None or ctx.steps is None:
        return Rejection("no_referent", "the question names nothing to look for")
    single = P.describe(ctx.steps, ctx.ref, determiner=None)
    exists = ctx.answer == "yes"
    negated = rng.random() < 0.5
    holds = exists != negated
    op = "remove" if exists else "add"
    edit_target, add_args = None, None
    if ctx.world and ctx.graph is not None:
        if exists:
            if len(ctx.members or ()) != 1:
                return Rejection("unsupported_program", "more than one object fits: 'remove it' would be ambiguous")
            edit_target = ctx.members[0]
        else:
            add_args = _count_add_spec(ctx)
            if add_args is None:
                return Rejection("unsupported_program", "cannot place the described object")
            from uniedit_cli.world.edits import placement_cells

            if not placement_cells(ctx.graph, add_args):
                return Rejection("no_space", "no free cell for the described object")
    elif not exists:
        add_args = {"object": {"name": _strip_det(single).split(" ")[0]}}
    remove_text = _choice(rng, ("remove it", "take it out of the scene"))
    add_text = _choice(rng, ("add one", "put one in the scene"))
    if negated:
        prompt = f"If there is {{hyp}}, {add_text}; otherwise, {remove_text}."
        hyp = f"no {single}"
    else:
        prompt = f"If there is {{hyp}}, {remove_text}; otherwise, {add_text}."
        hyp = _article(single)
    edit = EditOp("remove", edit_target, {}) if op == "remove" else EditOp("add", None, add_args)
    expected = {"question": f"Is there {_article(single)}?", "answer": "no" if exists else "yes",
                "program": _expected_program(ctx, ctx.ref, "exist", "?")}
    explicit = f"Remove the {single}" if exists else f"Add {_article(single)}"
    return _finish(ctx, style="conditional", prompt=_cap(prompt), hypothesis=hyp, edit=edit, explicit=explicit,
                   expected=expected, template=f"conditional.exist{int(negated)}", holds=holds)


# --- synthesis -----------------------------------------------------------------------------------

_SYNTH_TEXT = {
    "color": ("Add a {desc} painted the same color as {np}.", "Put a new {desc} in an empty spot, in the same color "
              "as {np}.", "Add a {desc} whose color matches {np}."),
    "shape": ("Add a {desc} object with the same shape as {np}.", "Add a new {desc} object shaped like {np}.",
              "Put a {desc} object of the same shape as {np} into an empty spot."),
    "material": ("Add a {desc} made of the same material as {np}.", "Put a new {desc} with the same finish as {np} "
                 "into the scene.", "Add a {desc} that shares the material of {np}."),
    "size": ("Add a {desc} of the same size as {np}.", "Put a new {desc} exactly as big as {np} into the scene.",
             "Add a {desc} matching the size of {np}."),
    "name": ("Add another object of the same kind as {np}, {desc}.", "Put a second object like {np} into an empty "
             "spot, {desc}.", "Add a new object of the same type as {np}, {desc}."),
    "hposition": ("Add a {desc} on the same side of the picture as {np}.", "Put a {desc} on whichever side of the "
                  "picture {np} is on.", "Place a new {desc} in the same half of the picture as {np}."),
}


def _world_new_object(ctx: _Ctx, fixed: dict[str, str], mention: tuple[str, ...]) -> tuple[dict, str, dict] | None:
    """A new world object with ``fixed`` attributes whose (mentioned attributes) combination is
    absent from the scene, so a count question about it is exact. Returns (spec, desc, query)."""
    rng = ctx.rng
    present = _present_combos(ctx.graph, mention)
    free = [k for k in mention if k not in fixed]
    for _ in range(12):
        spec = dict(fixed)
        for k in free:  # draw the mentioned attributes until the combination is new
            spec[k] = _choice(rng, _WORLD_VALUES[k])
        if tuple(spec[k] for k in mention) not in present:
            break
    else:
        return None
    for k in ("shape", "color", "size", "material"):
        if k not in spec:
            spec[k] = _choice(rng, _WORLD_VALUES[k])
    return spec, " ".join(spec[k] for k in ("size", "color", "material") if k in mention), {k: spec[k] for k in mention}


def _count_question(key: dict[str, str]) -> tuple[str, list[dict]]:
    shape = key.get("shape")
    words = " ".join(key[k] for k in ("size", "color", "material") if k in key)
    noun = P.pluralize(shape) if shape else "objects"
    question = f"How many {(words + ' ') if words else ''}{noun} are there?"
    program: list[dict] = [{"operation": "select", "argument": shape or "object", "dependencies": []}]
    for k in ("size", "color", "material"):
        if k in key:
            program.append({"operation": f"filter {k}", "argument": key[k], "dependencies": [len(program) - 1]})
    program.append({"operation": "count", "argument": "", "dependencies": [len(program) - 1]})
    return question, program


def _synthesis(ctx: _Ctx) -> Instruction | Rejection:
    q = ctx.query
    rng = ctx.rng
    if ctx.category == "knowledge":
        return _synthesis_knowledge(ctx)
    if q == "count":
        return _synthesis_count(ctx)
    if q not in ("color", "shape", "material", "size", "name", "hposition"):
        return Rejection("unsupported_program", f"no synthesis for {q!r} questions")
    if ctx.np is None:
        return Rejection("no_referent", "the question names no object")
    answer = ctx.answer
    variant = _randrange(rng, 3)
    if ctx.world and ctx.graph is not None:
        if not _free_cells(ctx.graph):
            return Rejection("no_space", "no free cell for a new object")
        attr = "shape" if q == "name" else q
        if attr == "hposition":
            if answer not in ("left", "right"):
                return Rejection("unsupported_program", f"side {answer!r}")
            made = _world_new_object(ctx, {}, ("color", "shape"))
        else:
            if answer not in _world_values(attr):
                return Rejection("unsupported_program", f"{answer!r} is not a {attr} of the world")
            # mention one other attribute (two for colour-less descriptions) so the object is concrete
            mention = ("shape",) if attr != "shape" else ("color",)
            made = _world_new_object(ctx, {attr: answer}, tuple(sorted({attr, *mention})))
        if made is None:
            return Rejection("no_alternative", "no new object combination is absent from the scene")
        spec, _, key = made
        if attr == "hposition":
            desc = f"{spec['color']} {spec['shape']}"
            args = {"object": spec, "side": answer}
            from uniedit_cli.world.edits import placement_cells

            if not placement_cells(ctx.graph, args):
                return Rejection("no_space", f"no free cell on the {answer} side")
            question = f"On which side of the picture is the {desc}?"
            program = [{"operation": "select", "argument": spec["shape"], "dependencies": []},
                       {"operation": "filter color", "argument": spec["color"], "dependencies": [0]},
                       {"operation": "query", "argument": "hposition", "dependencies": [1]}]
            expected = {"question": question, "answer": answer, "program": _program_json(program)}
        else:
            args = {"object": spec}
            shown = {k: v for k, v in key.items() if k != attr}
            if q == "name":
                desc = f"in {spec['color']}"
            elif attr == "shape":
                desc = shown["color"]
            else:
                desc = shown.get("shape", "object")
            # the (attribute, other attribute) combination is absent before the edit (by
            # construction in _world_new_object), so exactly one object has it after
            question, program = _count_question(key)
            expected = {"question": question, "answer": "1", "program": _program_json(program)}
        edit = EditOp("add", None, args)
        full = " ".join(spec[k] for k in ("size", "color", "material", "shape"))
        explicit = f"Add a {full} to an empty spot of the scene" + (f", on the {answer} side" if attr == "hposition"
                                                                     else "")
        prompt = _SYNTH_TEXT[q][variant].format(desc=desc, np=ctx.np)
        return _finish(ctx, style="synthesis", prompt=prompt, hypothesis=None, edit=edit, explicit=explicit,
                       expected=expected, template=f"synthesis.{q}{variant}")
    # real images: a generic new object next to the referent
    noun = _choice(rng, _NEW_NOUNS)
    if q == "color":
        prompt = _SYNTH_TEXT["color"][variant].format(desc=noun, np=ctx.np)
        spec = {"name": noun, "color": answer}
        expected = {"question": f"What color is the {noun}?", "answer": answer, "program": ""}
        explicit = f"Add {_article(answer)} {noun} next to {ctx.np}"
    elif q == "hposition" and answer in ("left", "right"):
        prompt = _SYNTH_TEXT["hposition"][variant].format(desc=noun, np=ctx.np)
        spec = {"name": noun}
        expected = {"question": f"On which side of the picture is the {noun}?", "answer": answer, "program": ""}
        explicit = f"Add {_article(noun)} on the {answer} side of the picture"
    elif q == "name":
        prompt = _choice(rng, ("Add another object of the same kind as {np} next to it.",
                             "Put a second copy of {np} beside it.")).format(np=ctx.np)
        spec = {"name": answer}
        expected = {"question": f"Is there more than one {answer}?", "answer": "yes", "program": ""}
        explicit = f"Add another {answer} next to {ctx.np}"
    else:
        return Rejection("unsupported_program", f"no synthesis for {q!r} without a scene graph")
    args: dict[str, Any] = {"object": spec}
    if q == "hposition":
        args["side"] = answer
    elif ctx.ref_id:
        args["near"] = ctx.ref_id
    edit = EditOp("add", None, args)
    return _finish(ctx, style="synthesis", prompt=prompt, hypothesis=None, edit=edit, explicit=explicit,
                   expected=expected, template=f"synthesis.{q}{variant}.generic")


def _synthesis_count(ctx: _Ctx) -> Instruction | Rejection:
    rng = ctx.rng
    if not ctx.answer.isdigit() or int(ctx.answer) < 1:
        return Rejection("unsupported_program", "synthesis needs a count of at least 1")
    n = int(ctx.answer)
    described = _count_set(ctx)
    if described is None:
        return Rejection("no_referent", "the question names nothing to count")
    plural, single = described
    variant = _randrange(rng, 3)
    if ctx.world and ctx.graph is not None:
        if len(_free_cells(ctx.graph)) < n:
            return Rejection("no_space", f"no room for {n} new objects")
        made = _world_new_object(ctx, {}, ("color", "shape"))
        if made is None:
            return Rejection("no_alternative", "no new object combination is absent from the scene")
        spec, _, key = made
        new_single = f"{spec['color']} {spec['shape']}"
        new_plural = f"{spec['color']} {P.pluralize(spec['shape'])}"
        edit = EditOp("add", None, {"object": spec, "count": n})
        question, program = _count_question(key)
        expected = {"question": question, "answer": str(n), "program": _program_json(program)}
    else:
        noun, color = _choice(rng, _NEW_NOUNS), _choice(rng, _COLOR_NAMES)
        new_single, new_plural = f"{color} {noun}", f"{color} {P.pluralize(noun)}"
        spec = {"name": noun, "color": color}
        edit = EditOp("add", None, {"object": spec, "count": n})
        expected = {"question": f"How many {new_plural} are there?", "answer": str(n), "program": ""}
    prompt = ("Add as many {np_} as there are {p}.", "For every {s} in the scene, add a {n1}.",
              "Place {np_} in the picture, exactly as many as there are {p}.")[variant].format(
        np_=new_plural, p=plural, s=single, n1=new_single)
    explicit = f"Add {n} {new_plural}" if n != 1 else f"Add {_article(new_single)}"
    return _finish(ctx, style="synthesis", prompt=prompt, hypothesis=None, edit=edit, explicit=explicit,
                   expected=expected, template=f"synthesis.count{variant}")


def _synthesis_knowledge(ctx: _Ctx) -> Instruction | Rejection:
    if _is_person(ctx):
        return Rejection("unsupported_program", "a person is written, not drawn (text-answer)")
    q = ctx.record.question.strip()
    variant = _randrange(ctx.rng, 2)
    prompt = ('Draw into the scene the thing that answers the question "{q}"',
              'Add to the picture a clear depiction of the answer to "{q}"')[variant].format(q=q.rstrip("?") + "?")
    edit = EditOp("add", None, {"object": {"name": ctx.answer}})
    expected = {"question": f"Is there {_article(ctx.answer)} in the picture?", "answer": "yes", "program": ""}
    return _finish(ctx, style="synthesis", prompt=prompt + ".", hypothesis=None, edit=edit,
                   explicit=f"Draw {_article(ctx.answer)} into the scene", expected=expected,
                   template=f"synthesis.knowledge{variant}")


def _display_text(ctx: _Ctx) -> str:
    """The answer as it should be written: the source's own casing where the short answer is
    just a lowercased form of it (names, signs), else the short answer."""
    raw = re.sub(r"[.!]+$", "", str(ctx.record.answer or "").strip())
    return raw if raw.lower() == ctx.answer.lower() else ctx.answer.strip()


def _is_person(ctx: _Ctx) -> bool:
    q = ctx.record.question.strip().lower()
    words = str(ctx.record.answer).strip().split()
    return q.startswith(("who ", "whose ")) or (1 < len(words) <= 4 and all(w[:1].isupper() for w in words))


# --- referring and nested ------------------------------------------------------------------------

_COPY_TEXT = {
    "color": ("Make {anchor} the same color as {np}.", "Paint {anchor} in the color of {np}.",
              "Give {anchor} the color of {np}."),
    "shape": ("Turn {anchor} into an object of the same shape as {np}.", "Reshape {anchor} to match the shape of "
              "{np}.", "Give {anchor} the shape of {np}."),
    "material": ("Make {anchor} out of the same material as {np}.", "Give {anchor} the finish of {np}.",
                 "Change the material of {anchor} to match {np}."),
    "size": ("Make {anchor} the same size as {np}.", "Resize {anchor} to match {np}.",
             "Give {anchor} the size of {np}."),
}


def _copy_variant(ctx: _Ctx) -> tuple[str, str, str, str, dict] | None:
    """Give the chain's anchor the referent's queried attribute: (op, value, anchor id, anchor
    text, expected). Needs a scene graph, an attribute query and an anchor whose own
    description does not use that attribute and whose value differs (a visible edit)."""
    attr = ctx.query
    if attr not in ATTRIBUTE_CATEGORIES or ctx.graph is None or ctx.ref is None:
        return None
    if not ctx.world and attr != "color":
        return None
    anchor = P.anchor_index(ctx.steps, ctx.ref)
    if anchor is None or attr in P.own_constraints(ctx.steps, anchor)[1] or P.hops(ctx.steps, anchor) > 0:
        return None
    try:
        ids = P.resolve(ctx.steps, ctx.graph, anchor, trust_ids=True)
    except P.ProgramError:
        return None
    if len(ids) != 1 or ids[0] == ctx.ref_id:
        return None
    obj = ctx.graph["objects"][ids[0]]
    if ctx.world and "shape" not in obj:
        return None
    if P.attribute_value(obj, attr, ctx.graph) == ctx.answer:
        return None
    if ctx.world and ctx.answer not in _world_values(attr):
        return None
    anchor_np = P.describe(ctx.steps, anchor)
    op = _ATTR_OP[attr]
    expected = _expected_for(ctx, op, ctx.answer, anchor, anchor_np)
    return op, ctx.answer, ids[0], anchor_np, expected


def _referent_action(ctx: _Ctx) -> tuple[str, str] | None:
    exclude = set(ctx.own) | ({"shape" if ctx.query == "name" else ctx.query} if ctx.query else set())
    menu = _ops_menu(ctx, exclude)
    _shuffle(ctx.rng, menu)
    for op in menu:
        v = _pick_value(ctx, op, [ctx.answer])
        if v is not None:
            return op, v
    return None


def _referring(ctx: _Ctx, *, nested: bool) -> Instruction | Rejection:
    style = "nested" if nested else "referring"
    if ctx.steps is None or ctx.ref is None or ctx.final.op == "count":
        return Rejection("no_referent", f"{style} needs a program with a single referent")
    if ctx.n_hops < (2 if nested else 1):
        return Rejection("unsupported_program", f"{style} needs {'two' if nested else 'one'} or more hops")
    if nested and ctx.n_hops > ctx.max_depth:
        return Rejection("too_deep", f"{ctx.n_hops} hops > max depth {ctx.max_depth}")
    rng = ctx.rng
    copy = _copy_variant(ctx) if rng.random() < 0.5 else None
    if copy is not None:
        op, value, target, anchor_np, expected = copy
        variant = _randrange(rng, 3)
        if nested:
            prompt = _chain_text(ctx, rng) + " " + _cap(_COPY_TEXT[ctx.query][variant].format(
                anchor=anchor_np, np="that last object"))
        else:
            prompt = _COPY_TEXT[ctx.query][variant].format(anchor=anchor_np, np=ctx.np)
        edit = _edit(ctx, op, value, target)
        explicit = _explicit(op, value, anchor_np)
        return _finish(ctx, style=style, prompt=prompt, hypothesis=None, edit=edit, explicit=explicit,
                       expected=expected, template=f"{style}.copy{variant}.{op}")
    action = _referent_action(ctx)
    if action is None:
        return Rejection("no_alternative", "no edit possible on the referent")
    op, value = action
    if nested:
        variant = _randrange(rng, 2)
        prompt = _chain_text(ctx, rng) + " " + _cap(_pronoun_text(ctx, op, value)) + "."
    else:
        variant = _randrange(rng, 3)
        prompt = _np_text(ctx, op, value, ctx.np)
    edit = _edit(ctx, op, value, ctx.ref_id)
    return _finish(ctx, style=style, prompt=prompt, hypothesis=None, edit=edit, explicit=_explicit(op, value, ctx.np),
                   expected=_expected_for(ctx, op, value, ctx.ref, ctx.np), template=f"{style}.{variant}.{op}")


def _hop_phrase(hop: P.Hop) -> str:
    if hop.role == "s":
        return f"{hop.np} {hop.relation} it"
    inverse = P.INVERSE_RELATIONS.get(hop.relation or "")
    return f"{hop.np} {inverse} it" if inverse else f"{hop.np} that it is {hop.relation}"


def _chain_text(ctx: _Ctx, rng: random.Random) -> str:
    hops = P.chain(ctx.steps, ctx.ref)
    first, rest = hops[0], hops[1:]
    if rng.random() < 0.5:
        parts = [f"Find {first.np}."] + [f"Then take {_hop_phrase(h)}." for h in rest]
        return " ".join(parts)
    return f"Start at {first.np}; " + "; ".join(f"from there, go to {_hop_phrase(h)}" for h in rest) + "."


# --- text-answer ---------------------------------------------------------------------------------

def _text_answer(ctx: _Ctx) -> Instruction | Rejection:
    if ctx.category not in TEXT_CATEGORIES:
        return Rejection("unsupported_category", f"text-answer is for {', '.join(TEXT_CATEGORIES)}")
    rng = ctx.rng
    text = _display_text(ctx)
    if not text:
        return Rejection("empty_answer", "nothing to write")
    q = ctx.record.question.strip()
    q = q if q.endswith("?") else q + "?"
    person = ctx.category == "knowledge" and _is_person(ctx)
    if ctx.world and ctx.graph is not None:
        if not WS.free_slots(ctx.graph):
            return Rejection("no_space", "every wall slot holds a board")
        present = {o.get("surface") for o in ctx.graph["objects"].values()}
        surface = _choice(rng, [s for s in _SURFACES_NEW if s not in present] or ["whiteboard"])
        variant = _randrange(rng, 3)
        if ctx.category == "ocr":
            prompt = ("Hang a {s} on the wall and write on it the word shown on the sign.",
                      "Copy the text of the sign onto a new {s} on the wall.",
                      "Add a {s} to the wall that repeats what the sign says.")[variant]
        else:
            prompt = ('Work out the answer to "{q}" and write it on a {s} on the wall.',
                      "Solve this: {q} Then put the result on a {s} hanging on the wall.",
                      'Hang a {s} on the wall showing the answer to "{q}"')[variant]
        prompt = prompt.format(s=surface, q=q).rstrip(".") + "."
        edit = EditOp("write_text", None, {"text": text, "surface": surface})
        program = [{"operation": "select", "argument": surface, "dependencies": []},
                   {"operation": "query", "argument": "text", "dependencies": [0]}]
        expected = {"question": f"What is written on the {surface}?", "answer": text, "program": _program_json(program)}
        explicit = f'Hang a {surface} on the wall with "{text}" written on it'
    else:
        surface = "blackboard" if person else _choice(rng, ("whiteboard", "parchment", "neon sign", "blackboard"))
        font = _choice(rng, _FONTS)
        variant = _randrange(rng, 3)
        if person:
            prompt = ('Write the name of the person who answers "{q}" on a {s}, in {f} letters.',
                      'On a {s}, write in {f} letters the name that answers "{q}"',
                      'Replace the picture with a {s} bearing, in {f} letters, the name asked for by "{q}"')[variant]
        elif ctx.category == "caption":
            prompt = ("Discard the scene and show a {s} with a one-line caption of the original picture, in {f} "
                      "letters.", "Replace the picture with a {s} that describes the original scene in {f} letters.",
                      "Turn the image into a {s} carrying a short {f} caption of what it showed.")[variant]
        elif ctx.category == "math":
            prompt = ('Discard the scene and write the solution to "{q}" on a {s}, in {f} letters.',
                      'Solve "{q}" and show only the result, written on a {s} in {f} letters.',
                      'Replace the picture with a {s} on which the answer to "{q}" is written in {f} letters')[variant]
        else:
            prompt = ('Discard the scene and write the answer to "{q}" on a {s}, in {f} letters.',
                      'Replace the picture with a {s} showing, in {f} letters, the text that answers "{q}"',
                      'Show only a {s} on which the answer to "{q}" is written in {f} letters')[variant]
        prompt = prompt.format(s=surface, q=q, f=font).rstrip(".") + "."
        edit = EditOp("write_text", None, {"text": text, "surface": surface, "font": font, "discard_scene": True})
        expected = {"question": f"What is written on the {surface}?", "answer": text, "program": ""}
        explicit = f'Replace the picture with a {surface} on which "{text}" is written in {font} letters'
    return _finish(ctx, style="text-answer", prompt=prompt, hypothesis=None, edit=edit, explicit=explicit,
                   expected=expected, template=f"text-answer.{ctx.category}{variant}")


# --- entry point ---------------------------------------------------------------------------------

# Scene-level facts reused by the questions of one image (they arrive one after another).
_FREE_CELLS: dict[int, tuple[dict, list]] = {}


def _free_cells(graph: dict) -> list:
    hit = _FREE_CELLS.get(id(graph))
    if hit is not None and hit[0] is graph:
        return hit[1]
    cells = WS.free_cells(graph)
    if len(_FREE_CELLS) > 64:
        _FREE_CELLS.clear()
    _FREE_CELLS[id(graph)] = (graph, cells)
    return cells


_COMBOS: dict[tuple[int, tuple[str, ...]], tuple[dict, set]] = {}


def _present_combos(graph: dict, mention: tuple[str, ...]) -> set:
    """The (attribute values...) combinations present in the scene, for ``mention`` keys."""
    key = (id(graph), mention)
    hit = _COMBOS.get(key)
    if hit is not None and hit[0] is graph:
        return hit[1]
    combos = {tuple(o.get(k) for k in mention) for o in graph["objects"].values()}
    if len(_COMBOS) > 256:
        _COMBOS.clear()
    _COMBOS[key] = (graph, combos)
    return combos


_NO_CONDITIONAL = frozenset({"ocr", "math", "caption", "knowledge", "other"})
_SYNTHESIS_CATEGORIES = frozenset({"color", "shape", "material", "size", "count", "location", "relation", "knowledge"})


def _applicable(ctx: _Ctx, styles) -> list[str]:
    cat = ctx.category
    out = []
    for style in styles:
        if style == "text-answer":
            ok = cat in TEXT_CATEGORIES
        elif style == "conditional":
            ok = cat not in _NO_CONDITIONAL and ctx.query is not None
        elif style == "synthesis":
            ok = cat in _SYNTHESIS_CATEGORIES
        elif style in ("referring", "nested"):
            ok = (ctx.steps is not None and ctx.ref is not None and ctx.final.op not in ("count", "exist")
                  and ctx.n_hops >= (2 if style == "nested" else 1)
                  and (style == "referring" or ctx.n_hops <= ctx.max_depth))
        else:
            ok = False
        if ok:
            out.append(style)
    return out


_BUILDERS = {
    "conditional": _conditional,
    "synthesis": _synthesis,
    "referring": lambda ctx: _referring(ctx, nested=False),
    "nested": lambda ctx: _referring(ctx, nested=True),
    "text-answer": _text_answer,
}


def write_instruction(record: VQARecord, category: str, rng: random.Random, *, styles=STYLES,
                      max_depth: int = 2) -> Instruction | Rejection:
    """Write one edit instruction for ``record`` in one of ``styles``.

    The style is drawn with ``rng`` among those that apply (text-answer for ocr/math/caption/
    knowledge; conditional and synthesis for attribute, count, location and relation questions;
    referring with >= 1 relation hop; nested with 2..``max_depth`` hops). If the drawn style
    cannot be written for this record, the others are tried in a random order; the result is a
    Rejection only when none can (reason of the first failure, ``answer_leak`` taking priority).
    """
    ctx = _Ctx(record, category, rng, max_depth)
    candidates = _applicable(ctx, [s for s in styles if s in _BUILDERS])
    if not candidates:
        return Rejection("unsupported_category", f"no style of {list(styles)} applies to a {category} question")
    _shuffle(rng, candidates)
    first_rejection: Rejection | None = None
    for style in candidates:
        result = _BUILDERS[style](ctx)
        if isinstance(result, Instruction):
            return result
        if first_rejection is None or (result.reason == "answer_leak" and first_rejection.reason != "answer_leak"):
            first_rejection = result
    return first_rejection
