"""GQA-style questions with semantic programs for world scenes.

``generate_questions(scene, rng, n=8, max_depth=2, families=None) -> list[WorldQuestion]``

Each question carries a GQA semantic program (``uniedit_cli.synth.programs`` format, object
ids in arguments as GQA writes them: ``"cube (o3)"``, ``"_,to the left of,s (o1)"``), GQA-style
``types`` and ``annotations`` (question token spans -> object ids), and an answer obtained by
*executing* the program on the scene graph, so question, program and answer cannot disagree.
The question text is realised from the program by ``programs.describe``, so it says exactly
what the program does.

Referring expressions are unique by construction: an object is described by the fewest
attributes (size, colour, material, shape-as-name) that single it out among the candidates,
either among all objects (0 hops) or among the objects standing in a relation to an anchor
that is itself described the same way, recursively, up to ``max_depth`` hops. The queried
attribute is never used to describe the object it is asked about, and a question whose text
contains its own answer (after the leak normalisation of the instruction grammar) is not
generated.

Families (and the category ``synth.classify`` gives them): query_color/shape/material/size
(same name), query_name (relation when the referent is reached through a relation, else
shape), count, math (count + add/subtract), location (query/choose hposition), ocr (query text
of the sign), choose_attr (the attribute's category), choose_rel (relation), and yes/no or
multiple-choice families dropped by default downstream: exist, verify, verify_rel, same,
and_or, compare.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from uniedit_cli.synth import programs as P
from uniedit_cli.world import scene as S

ATTRS = ("shape", "size", "color", "material")
_VALUES = {"shape": S.SHAPES, "size": S.SIZES, "color": tuple(S.COLORS), "material": S.MATERIALS}

FAMILY_WEIGHTS: dict[str, float] = {
    "query_color": 3.0, "query_shape": 2.0, "query_material": 2.0, "query_size": 1.5, "query_name": 2.0,
    "count": 2.0, "math": 1.0, "location": 1.5, "ocr": 2.5, "choose_attr": 1.0, "choose_rel": 1.0,
    "exist": 0.7, "verify": 0.7, "verify_rel": 0.4, "same": 0.4, "and_or": 0.3, "compare": 0.4,
}
# How deep referring chains go, as weights for 0, 1, 2, ... hops (capped by max_depth).
DEPTH_WEIGHTS = (0.4, 0.35, 0.25)

TEMPLATES = {
    "color": ("What color is {np}?", "What is the color of {np}?", "Which color does {np} have?"),
    "shape": ("What shape is {np}?", "What is the shape of {np}?", "What shape does {np} have?"),
    "material": ("What material is {np}?", "What is {np} made of?", "What is the material of {np}?"),
    "size": ("What size is {np}?", "How big is {np}?", "What is the size of {np}?"),
    "name": ("What is {np}?", "What kind of object is {np}?", "Which object is {np}?"),
    "hposition": ("On which side of the picture is {np}?", "On which side is {np}?",
                  "Which side of the image is {np} on?"),
    "count": ("How many {np} are there?", "What number of {np} are there?", "How many {np} can you see?"),
    "sum": ("How many {a} and {b} are there in total?", "What is the total number of {a} and {b}?"),
    "difference": ("How many more {a} than {b} are there?", "How many more {a} are there than {b}?"),
    "text": ("What is written on the sign?", "What word is on the sign?", "What does the sign say?"),
}


@dataclass
class WorldQuestion:
    question: str
    answer: str
    program: list[dict]
    family: str
    types: dict[str, str]
    annotations: dict[str, dict[str, str]] = field(default_factory=dict)


class _Ctx:
    """Per-scene lookups for describing objects (floor objects only; the sign is read, not referred)."""

    def __init__(self, scene: dict):
        self.scene = scene
        self.objs = S.floor_objects(scene)
        self.ids = sorted(self.objs, key=lambda k: (len(k), k))
        # subjects of each relation towards an object: rel_in[o][rel] = {x : x rel o}
        self.rel_in: dict[str, dict[str, list[str]]] = {o: {} for o in self.ids}
        for x in self.ids:
            for r in self.objs[x]["relations"]:
                if r["object"] in self.rel_in:
                    self.rel_in[r["object"]].setdefault(r["name"], []).append(x)


# A fragment is a linear referring chain: [(operation, argument)], each step depending on the
# previous one; it always denotes the objects it was built for.
Fragment = list[tuple[str, str]]


def _matches(ctx: _Ctx, oid: str, combo: tuple[str, ...], like: str) -> bool:
    a, b = ctx.objs[oid], ctx.objs[like]
    return all(a[k] == b[k] for k in combo)


def _attr_desc(ctx: _Ctx, t: str, cands: list[str], rng: random.Random, exclude: frozenset, avoid: frozenset,
               allow_empty: bool) -> tuple[str, ...] | None:
    """The smallest attribute combination that singles ``t`` out among ``cands``."""
    keys = [k for k in ATTRS if k not in exclude and ctx.objs[t][k] not in avoid]
    for size in range(0 if allow_empty else 1, len(keys) + 1):
        combos = list(itertools.combinations(keys, size))
        rng.shuffle(combos)
        for combo in combos:
            if all(c == t or not _matches(ctx, c, combo, t) for c in cands):
                return combo
    return None


def _combo_steps(ctx: _Ctx, t: str, combo: tuple[str, ...]) -> tuple[str, list[tuple[str, str]]]:
    obj = ctx.objs[t]
    name = obj["shape"] if "shape" in combo else "_"
    filters = [(f"filter {k}", obj[k]) for k in ("size", "color", "material") if k in combo]
    return name, filters


def refer(ctx: _Ctx, t: str, depth: int, rng: random.Random, *, exclude=frozenset(), avoid=frozenset(),
          used=frozenset()) -> Fragment | None:
    """A fragment that denotes exactly object ``t`` with ``depth`` relation hops, or None."""
    if depth == 0:
        combo = _attr_desc(ctx, t, ctx.ids, rng, exclude, avoid, allow_empty=False)
        if combo is None:
            return None
        name, filters = _combo_steps(ctx, t, combo)
        return [("select", f"{'object' if name == '_' else name} ({t})")] + filters
    options = [(r["name"], r["object"]) for r in ctx.objs[t]["relations"]
               if r["object"] not in used and r["name"] not in avoid]
    rng.shuffle(options)
    for rel, anchor in options[:4]:
        anchor_frag = refer(ctx, anchor, depth - 1, rng, avoid=avoid, used=used | {t})
        if anchor_frag is None:
            continue
        cands = ctx.rel_in[anchor].get(rel, [])
        combo = _attr_desc(ctx, t, cands, rng, exclude, avoid, allow_empty=True)
        if combo is None:
            continue
        name, filters = _combo_steps(ctx, t, combo)
        return anchor_frag + [("relate", f"{name},{rel},s ({t})")] + filters
    return None


def _append(program: list[dict], frag: Fragment) -> int:
    """Append a fragment to a program; returns the index of its last step."""
    for k, (op, arg) in enumerate(frag):
        deps = [] if k == 0 else [len(program) - 1]
        program.append({"operation": op, "argument": arg, "dependencies": deps})
    return len(program) - 1


def _set_fragment(ctx: _Ctx, rng: random.Random, *, max_depth: int) -> tuple[Fragment, list[str]] | None:
    """A description of a *set* of objects for counting: 1-2 attributes, optionally related to a
    uniquely described anchor. Returns (fragment, ids)."""
    keys = list(ATTRS)
    combo = tuple(sorted(rng.sample(keys, rng.choice((1, 1, 2))), key=ATTRS.index))
    like = rng.choice(ctx.ids)
    use_rel = max_depth >= 1 and rng.random() < 0.35
    if use_rel:
        anchor = rng.choice(ctx.ids)
        rels = sorted({r["name"] for x in ctx.ids for r in ctx.objs[x]["relations"] if r["object"] == anchor})
        if not rels:
            return None
        rel = rng.choice(rels)
        anchor_frag = refer(ctx, anchor, 0, rng)
        if anchor_frag is None:
            return None
        pool = ctx.rel_in[anchor].get(rel, [])
        like_pool = [x for x in ctx.ids if x != anchor]
        if not like_pool:
            return None
        like = rng.choice(like_pool)
        members = [x for x in pool if _matches(ctx, x, combo, like)]
        name, filters = _combo_steps(ctx, like, combo)
        ids = ",".join(members) or "-"
        return anchor_frag + [("relate", f"{name},{rel},s ({ids})")] + filters, members
    members = [x for x in ctx.ids if _matches(ctx, x, combo, like)]
    name, filters = _combo_steps(ctx, like, combo)
    ids = ",".join(members) or "-"
    return [("select", f"{'object' if name == '_' else name} ({ids})")] + filters, members


def _article(np_text: str) -> str:
    return ("an " if np_text[:1] in "aeiou" else "a ") + np_text


def _pick_depth(rng: random.Random, max_depth: int, minimum: int = 0) -> int:
    depths = list(range(minimum, max_depth + 1))
    weights = [DEPTH_WEIGHTS[min(d, len(DEPTH_WEIGHTS) - 1)] for d in depths]
    return rng.choices(depths, weights)[0]


def _tokens(text: str) -> list[str]:
    return [w.strip("?,.!").lower() for w in text.split()]


def _annotate(question: str, program: list[dict]) -> dict[str, dict[str, str]]:
    """GQA-style annotations: token span "i:j" of each referenced object's own noun phrase (its
    filters and name) -> object id; found left to right in the question's words."""
    steps = P.parse_program(program)
    toks = _tokens(question)
    spans: dict[str, str] = {}
    for i, st in enumerate(steps):
        if st.op not in ("select", "relate") or not st.ids or len(st.ids) != 1:
            continue
        # the step's own words: the name plus the filters that follow it directly
        j = i + 1
        words: list[str] = []
        while j < len(steps) and steps[j].op == "filter" and steps[j].deps == (j - 1,):
            words.append(steps[j].value)
            j += 1
        head = "object" if st.name in P.GENERIC_NAMES else st.name
        target = [w for w in words] + [head]
        for start in range(len(toks)):
            window = toks[start:start + len(target)]
            if sorted(window) == sorted(target):
                key = f"{start}:{start + len(target)}" if len(target) > 1 else str(start)
                if key not in spans:
                    spans[key] = st.ids[0]
                    break
    return {"question": spans, "answer": {}, "fullAnswer": {}}


def _leaks(question: str, answer: str) -> bool:
    from uniedit_cli.synth.instructions import check_leak

    return check_leak(question, answer)


def _types(structural: str, semantic: str, detailed: str) -> dict[str, str]:
    return {"structural": structural, "semantic": semantic, "detailed": detailed}


def _query(ctx, rng, attr: str, max_depth: int):
    t = rng.choice(ctx.ids)
    min_depth = 1 if attr == "name" and rng.random() < 0.75 else 0
    depth = _pick_depth(rng, max_depth, min(min_depth, max_depth))
    obj = ctx.objs[t]
    answer = S.hposition(obj, ctx.scene["width"]) if attr == "hposition" else obj["shape" if attr == "name" else attr]
    exclude = frozenset({"shape" if attr == "name" else attr})
    # left/right in the description would give a side away; the value itself is avoided too
    avoid = frozenset({answer} | ({S.LEFT_OF, S.RIGHT_OF} if attr == "hposition" else set()))
    frag = refer(ctx, t, depth, rng, exclude=exclude if attr != "hposition" else frozenset(), avoid=avoid)
    if frag is None:
        return None
    program: list[dict] = []
    end = _append(program, frag)
    program.append({"operation": "query", "argument": attr, "dependencies": [end]})
    np_text = P.describe(program, end)
    text = rng.choice(TEMPLATES[attr]).format(np=np_text)
    n_hops = P.hops(program, end)
    if attr == "name":
        family = "query_name"
        types = _types("query", "rel" if n_hops else "obj", "relS" if n_hops else "queryObject")
    elif attr == "hposition":
        family = "location"
        types = _types("query", "attr", "positionQuery")
    else:
        family = f"query_{attr}"
        types = _types("query", "attr", "queryAttr")
    return text, program, family, types


def _count(ctx, rng, max_depth):
    got = _set_fragment(ctx, rng, max_depth=max_depth)
    if got is None:
        return None
    frag, _members = got
    program: list[dict] = []
    end = _append(program, frag)
    program.append({"operation": "count", "argument": "", "dependencies": [end]})
    text = rng.choice(TEMPLATES["count"]).format(np=P.describe(program, end, plural=True, determiner=None))
    return text, program, "count", _types("query", "obj", "count")


def _math(ctx, rng):
    shapes = sorted({ctx.objs[x]["shape"] for x in ctx.ids})
    colors = sorted({ctx.objs[x]["color"] for x in ctx.ids})
    key = rng.choice(("shape", "color"))
    pool = shapes if key == "shape" else colors
    if len(pool) < 2:
        return None
    a, b = rng.sample(pool, 2)
    members = {v: [x for x in ctx.ids if ctx.objs[x][key] == v] for v in (a, b)}
    program: list[dict] = []
    ends = []
    for v in (a, b):
        ids = ",".join(members[v])
        frag = [("select", f"{v} ({ids})")] if key == "shape" else [("select", f"object ({ids})"), ("filter color", v)]
        ends.append(_append(program, frag))
        program.append({"operation": "count", "argument": "", "dependencies": [ends[-1]]})
        ends[-1] = len(program) - 1
    subtract = len(members[a]) > len(members[b]) and rng.random() < 0.4
    op = "subtract" if subtract else "add"
    program.append({"operation": op, "argument": "", "dependencies": ends})
    names = [P.describe(program, ends[k] - 1, plural=True, determiner=None) for k in range(2)]
    text = rng.choice(TEMPLATES["difference" if subtract else "sum"]).format(a=names[0], b=names[1])
    return text, program, "math", _types("compare" if subtract else "logical", "obj", "math")


def _ocr(ctx, rng):
    signs = [(oid, o) for oid, o in ctx.scene["objects"].items() if o.get("surface") == "sign"]
    if not signs:
        return None
    oid, _ = signs[0]
    program = [{"operation": "select", "argument": f"sign ({oid})", "dependencies": []},
               {"operation": "query", "argument": "text", "dependencies": [0]}]
    return rng.choice(TEMPLATES["text"]), program, "ocr", _types("query", "attr", "readText")


def _unique_name(ctx, rng) -> str | None:
    by_shape: dict[str, list[str]] = {}
    for x in ctx.ids:
        by_shape.setdefault(ctx.objs[x]["shape"], []).append(x)
    singles = [v[0] for v in by_shape.values() if len(v) == 1]
    return rng.choice(sorted(singles)) if singles else None


def _yes_no_and_choice(ctx, rng, family: str, max_depth: int):
    if family in ("verify", "choose_attr", "exist"):
        attr = rng.choice(("color", "material", "size", "shape"))
        t = rng.choice(ctx.ids)
        if family == "exist":
            # half the time describe something that is not there
            frag_obj = refer(ctx, t, 0, rng)
            if frag_obj is None:
                return None
            program: list[dict] = []
            if rng.random() < 0.5:
                # swap one attribute for a value no object with the rest of the description has
                combo_attr = rng.choice(("color", "material", "shape"))
                value = rng.choice([v for v in _VALUES[combo_attr] if v != ctx.objs[t][combo_attr]])
                frag_obj = ([("select", f"{value} (-)")] if combo_attr == "shape"
                            else [("select", f"{ctx.objs[t]['shape']} (-)"), (f"filter {combo_attr}", value)])
            end = _append(program, frag_obj)
            program.append({"operation": "exist", "argument": "?", "dependencies": [end]})
            np_text = P.describe(program, end, determiner=None)
            return f"Is there {_article(np_text)}?", program, "exist", _types("verify", "obj", "exist")
        truth = ctx.objs[t][attr]
        frag = refer(ctx, t, _pick_depth(rng, max_depth), rng, exclude=frozenset({attr}), avoid=frozenset({truth}))
        if frag is None:
            return None
        program = []
        end = _append(program, frag)
        other = rng.choice([v for v in _VALUES[attr] if v != truth])
        np_text = P.describe(program, end)
        art = (lambda v: _article(v)) if attr == "shape" else (lambda v: v)
        if family == "verify":
            value = truth if rng.random() < 0.5 else other
            program.append({"operation": f"verify {attr}", "argument": value, "dependencies": [end]})
            return (f"Is {np_text} {art(value)}?", program, "verify", _types("verify", "attr", "verifyAttr"))
        options = [truth, other]
        rng.shuffle(options)
        program.append({"operation": f"choose {attr}", "argument": "|".join(options), "dependencies": [end]})
        return (f"Is {np_text} {art(options[0])} or {art(options[1])}?", program, "choose_attr",
                _types("choose", "attr", "chooseAttr"))
    if family in ("verify_rel", "choose_rel"):
        a = _unique_name(ctx, rng)
        if a is None:
            return None
        rels = ctx.objs[a]["relations"]
        if not rels:
            return None
        r = rng.choice(rels)
        b_frag = refer(ctx, r["object"], 0, rng, used=frozenset({a}))
        if b_frag is None:
            return None
        program = []
        end = _append(program, b_frag)
        a_name = ctx.objs[a]["shape"]
        b_text = P.describe(program, end)
        pairs = {S.LEFT_OF: S.RIGHT_OF, S.RIGHT_OF: S.LEFT_OF, S.IN_FRONT_OF: S.BEHIND, S.BEHIND: S.IN_FRONT_OF}
        if family == "verify_rel":
            rel = r["name"] if rng.random() < 0.5 else pairs[r["name"]]
            program.append({"operation": "verify rel", "argument": f"{a_name},{rel},s ({a})", "dependencies": [end]})
            return (f"Is the {a_name} {rel} {b_text}?", program, "verify_rel", _types("verify", "rel", "verifyRelS"))
        options = [r["name"], pairs[r["name"]]]
        options.sort(key=lambda x: (x not in (S.LEFT_OF, S.IN_FRONT_OF)))
        program.append({"operation": "choose rel", "argument": f"{a_name},{'|'.join(options)},s ({a})",
                        "dependencies": [end]})
        if options[0] == S.LEFT_OF:
            text = f"Is the {a_name} to the left or to the right of {b_text}?"
        else:
            text = f"Is the {a_name} in front of or behind {b_text}?"
        return text, program, "choose_rel", _types("choose", "rel", "chooseRel")
    if family in ("same", "compare", "and_or"):
        if len(ctx.ids) < 2:
            return None
        a, b = rng.sample(ctx.ids, 2)
        if family == "compare" and (ctx.objs[a]["size"] == ctx.objs[b]["size"]
                                    or ctx.objs[a]["shape"] == ctx.objs[b]["shape"]):
            return None
        attr = rng.choice(("color", "material", "size", "shape"))
        exclude = frozenset({attr}) if family == "same" else frozenset({"size"})
        fa = refer(ctx, a, 0, rng, exclude=exclude)
        fb = refer(ctx, b, 0, rng, exclude=exclude)
        if fa is None or fb is None:
            return None
        program = []
        ea = _append(program, fa)
        eb = _append(program, fb)
        ta, tb = P.describe(program, ea), P.describe(program, eb)
        if family == "same":
            op = rng.choice(("same", "different"))
            program.append({"operation": f"{op} {attr}", "argument": "", "dependencies": [ea, eb]})
            text = (f"Are {ta} and {tb} the same {attr}?" if op == "same"
                    else f"Do {ta} and {tb} have different {attr}s?")
            return text, program, "same", _types("compare", "attr", "twoSame" if op == "same" else "twoDifferent")
        if family == "compare":
            word = rng.choice(("larger", "smaller"))
            program.append({"operation": "compare", "argument": word, "dependencies": [ea, eb]})
            return f"Which is {word}, {ta} or {tb}?", program, "compare", _types("compare", "attr", "compare")
        for e in (ea, eb):
            program.append({"operation": "exist", "argument": "?", "dependencies": [e]})
        op = rng.choice(("and", "or"))
        program.append({"operation": op, "argument": "", "dependencies": [len(program) - 2, len(program) - 1]})
        sa = P.describe(program, ea, determiner=None)
        sb = P.describe(program, eb, determiner=None)
        text = (f"Is there both {_article(sa)} and {_article(sb)}?" if op == "and"
                else f"Is there {_article(sa)} or {_article(sb)}?")
        return text, program, "and_or", _types("logical", "obj", "logicAnd" if op == "and" else "logicOr")
    return None


def _location_choose(ctx, rng, max_depth):
    t = rng.choice(ctx.ids)
    frag = refer(ctx, t, _pick_depth(rng, max_depth), rng, avoid=frozenset({S.LEFT_OF, S.RIGHT_OF}))
    if frag is None:
        return None
    program: list[dict] = []
    end = _append(program, frag)
    program.append({"operation": "choose hposition", "argument": "left|right", "dependencies": [end]})
    text = f"Is {P.describe(program, end)} on the left or on the right of the picture?"
    return text, program, "location", _types("choose", "attr", "positionChoose")


def generate_questions(scene: dict, rng: random.Random, n: int = 8, *, max_depth: int = 2,
                       families: dict[str, float] | None = None) -> list[WorldQuestion]:
    """Up to ``n`` distinct questions about ``scene`` (fewer if the scene is too plain).

    ``rng`` drives every choice, so a seeded rng gives the same questions; ``families`` maps
    family names (see FAMILY_WEIGHTS) to sampling weights."""
    ctx = _Ctx(scene)
    if not ctx.ids:
        return []
    weights = dict(FAMILY_WEIGHTS if families is None else families)
    if not any(o.get("surface") == "sign" for o in scene["objects"].values()):
        weights.pop("ocr", None)
    names = sorted(weights)
    w = [weights[k] for k in names]
    out: list[WorldQuestion] = []
    seen: set[str] = set()
    ocr_done = False
    for _ in range(n * 8):
        if len(out) >= n:
            break
        family = rng.choices(names, w)[0]
        if family == "ocr" and ocr_done:
            continue
        made: Any
        if family.startswith("query_"):
            made = _query(ctx, rng, family[len("query_"):], max_depth)
        elif family == "location":
            made = _query(ctx, rng, "hposition", max_depth) if rng.random() < 0.7 else _location_choose(ctx, rng,
                                                                                                          max_depth)
        elif family == "count":
            made = _count(ctx, rng, max_depth)
        elif family == "math":
            made = _math(ctx, rng)
        elif family == "ocr":
            made = _ocr(ctx, rng)
        else:
            made = _yes_no_and_choice(ctx, rng, family, max_depth)
        if made is None:
            continue
        text, program, fam, types = made
        if text in seen:
            continue
        try:
            answer = P.execute(program, scene)
        except P.ProgramError:
            continue  # an ambiguous or empty reference slipped through: never emit it
        # a question that states its own answer teaches nothing; choices, yes/no and counts are
        # exempt (their options are named on purpose, or the answer is not a word of the text)
        if fam not in ("exist", "verify", "verify_rel", "same", "and_or", "compare", "choose_attr", "choose_rel",
                       "count", "math") and types["detailed"] != "positionChoose" and _leaks(text, answer):
            continue
        seen.add(text)
        ocr_done = ocr_done or fam == "ocr"
        annotations = _annotate(text, program)
        if fam in ("query_name",):
            end = P.referent_index(program)
            ids = P.parse_program(program)[end].ids if end is not None else None
            if ids and len(ids) == 1:
                annotations["answer"] = {"0": ids[0]}
        out.append(WorldQuestion(text, answer, program, fam, types, annotations))
    return out
