"""GQA-style semantic programs: parse, execute over GQA-schema scene graphs, describe in words.

Programs are GQA's ``semantic`` lists (REFERENCE.md, "VQA sources")::

    [{"operation": "select", "argument": "wall (722332)", "dependencies": []},
     {"operation": "filter color", "argument": "white", "dependencies": [0]},
     {"operation": "relate", "argument": "_,on,s (722335)", "dependencies": [1]},
     {"operation": "query", "argument": "name", "dependencies": [2]}]          # -> "pipe"

API::

    steps = parse_program(program)                  # tuple[Step]; UnknownOperationError / ProgramError
    answer = execute(program, scene_graph)          # the answer as a string ("pipe", "yes", "3")
    values = run(program, scene_graph)              # every step's value (object-id tuples, bools, ...)
    resolve(program, scene_graph, index)            # object ids of one step (GQA ids trusted)
    subprogram(program, index)                      # the steps ``index`` needs, renumbered
    describe(program, index)                        # "the pipe on the white wall"
    describe(program, index, plural=True, determiner=None)   # "pipes on the white wall"
    chain(program, index)                           # [Hop("the white wall"), Hop("the pipe", "on", "s")]
    referent_index(program)                         # the step whose objects the question is about
    attribute_value(obj, "color")                   # an object's colour (world key or GQA attribute)

Semantics (GQA's, extended where GQA has no operation; the extensions are marked *):

- ``select NAME (ids)``: objects called NAME (singular/plural, a small hypernym table: "person"
  covers man/woman/...; "object"/"thing"/"_" is any object that is not a board).
- ``filter [ATTR]: VALUE`` / ``filter [ATTR]: not(VALUE)``: keep objects that have (not) VALUE.
- ``relate NAME,REL,s|o (ids)``: "s": the result is the relation's subject (result REL input, as
  in "the pipe *on* the wall"); "o": the result is its object (input REL result, "what the man is
  holding"). Relations are read from the subjects' ``relations`` lists. ``REL`` "same ATTR"
  relates objects sharing an attribute value (GQA's sameRelate).
- ``query ATTR``: name, color, material, shape, size, hposition, vposition, text*, or any
  attribute type of :data:`ATTRIBUTE_VOCAB`; the referenced objects must agree on one value.
- ``exist``, ``verify ATTR: VALUE``, ``verify rel: NAME,REL,s|o``, ``choose ATTR: A|B``,
  ``choose rel: NAME,R1|R2,s|o``, ``same/different ATTR`` (one set: all alike; two: pairwise),
  ``and``/``or``, ``common`` (which attribute type two objects share).
- ``compare: larger|smaller`` (deps [a, b]) and GQA's ``choose larger``/``choose smaller``: the
  name of the larger/smaller object (world size, else box area).
- ``count``* (deps [set]): the number of objects, as digits. GQA has no counting operation; this
  is the natural closure of its set semantics (CLEVR's ``count``), used by the built-in world.
- ``add``*/``subtract``* (deps [count, count]): arithmetic on two counts (the world's math).
- ``equal integer``/``less than``/``greater than``* (deps [count, count], yes/no) and
  ``union``/``intersect``* (deps [set, set]): CLEVR's comparisons and set operations, as the
  ``clevr`` source converts them.

``trust_ids=True`` takes select/relate results from the ids GQA annotates in arguments (exact
for real GQA records, whose names may be hypernyms such as "appliance"); the default executes
by semantics alone, which is what re-asking a question on an edited scene graph needs.

Errors carry a ``reason`` the pipeline turns into a BadRecord/rejection reason:
``UnknownOperationError.reason == "unknown_operation"``, ``ExecutionError.reason ==
"unresolvable_program"`` (empty or ambiguous reference, missing attribute), ``ProgramError``
otherwise (``"bad_program"``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["ATTRIBUTE_VOCAB", "ExecutionError", "Hop", "ProgramError", "Step", "UnknownOperationError",
           "anchor_index", "attribute_value", "chain", "describe", "execute", "format_answer", "hops",
           "own_constraints", "parse_program", "pluralize", "referent_index", "resolve", "run", "singularize",
           "subprogram"]


class ProgramError(ValueError):
    """A malformed program (bad dependencies, missing argument)."""

    reason = "bad_program"


class UnknownOperationError(ProgramError):
    """An operation this executor does not know: the record is skipped as ``unknown_operation``."""

    reason = "unknown_operation"


class ExecutionError(ProgramError):
    """The program is well formed but does not resolve on this scene graph."""

    reason = "unresolvable_program"


# --- vocabulary ----------------------------------------------------------------------------------

# Attribute words by type, for GQA scene graphs whose attributes are an untyped list. The world's
# objects carry explicit keys instead (shape, color, size, material), which take precedence.
ATTRIBUTE_VOCAB: dict[str, frozenset[str]] = {
    "color": frozenset({"white", "black", "blue", "green", "red", "brown", "yellow", "gray", "grey", "orange",
                        "pink", "purple", "tan", "silver", "gold", "golden", "beige", "cyan", "maroon", "teal",
                        "khaki", "navy", "cream colored", "dark brown", "light brown", "dark blue", "light blue"}),
    "material": frozenset({"wood", "wooden", "metal", "metallic", "plastic", "glass", "leather", "stone", "brick",
                           "concrete", "cloth", "paper", "rubber", "matte", "striped", "porcelain", "ceramic",
                           "steel", "cement", "denim", "wicker", "marble", "cardboard"}),
    "size": frozenset({"small", "large", "big", "little", "tiny", "huge", "giant", "short", "tall", "long"}),
    "shape": frozenset({"cube", "sphere", "cylinder", "cone", "pyramid", "round", "square", "rectangular",
                        "triangular", "oval", "circular"}),
    "pattern": frozenset({"striped", "checkered", "plaid", "dotted", "floral", "spotted"}),
}
WORLD_KEYS = frozenset({"shape", "color", "size", "material", "text", "surface"})
# Words that mean "any object" in a select.
GENERIC_NAMES = frozenset({"_", "object", "objects", "thing", "things", "item", "items"})
HYPERNYMS: dict[str, frozenset[str]] = {
    "person": frozenset({"man", "woman", "boy", "girl", "child", "kid", "lady", "guy", "people", "player", "skier",
                         "surfer", "skateboarder", "person", "men", "women"}),
    "animal": frozenset({"dog", "cat", "horse", "cow", "sheep", "elephant", "giraffe", "zebra", "bird", "bear"}),
    "vehicle": frozenset({"car", "truck", "bus", "motorcycle", "bike", "bicycle", "train", "van", "airplane",
                          "boat", "taxi", "suv"}),
    "furniture": frozenset({"chair", "table", "couch", "sofa", "bed", "desk", "shelf", "cabinet", "bench",
                            "dresser", "stool"}),
    "appliance": frozenset({"microwave", "oven", "refrigerator", "fridge", "toaster", "dishwasher", "stove"}),
    "fruit": frozenset({"apple", "banana", "orange", "grapes", "lemon", "strawberry", "pear", "peach"}),
    "clothing": frozenset({"shirt", "jacket", "pants", "dress", "hat", "coat", "jeans", "shorts", "sweater",
                           "cap", "helmet", "glove", "shoe"}),
    "shape": frozenset({"cube", "sphere", "cylinder", "cone", "pyramid"}),
}
# Spatial relations with a well-defined inverse: "o" relates read better inverted.
INVERSE_RELATIONS = {"to the left of": "to the right of", "to the right of": "to the left of",
                     "in front of": "behind", "behind": "in front of", "above": "below", "below": "above",
                     "on top of": "under", "under": "on top of", "near": "near", "next to": "next to"}
# Answers of ``choose rel`` are the short forms GQA uses ("left", not "to the left of").
_REL_SHORT = {"to the left of": "left", "to the right of": "right", "in front of": "front", "on top of": "top"}
_SIZE_RANK = {"tiny": 0, "small": 1, "little": 1, "short": 1, "large": 2, "big": 2, "tall": 2, "huge": 3, "giant": 3}
_CANON = {"grey": "gray", "metallic": "metal", "rubber": "matte", "big": "large", "little": "small",
          "golden": "gold", "wooden": "wood"}
_ADJ_ORDER = {"size": 0, "color": 2, "material": 3, "pattern": 3, "shape": 4}
_COMPARATIVES = {"larger": 1, "bigger": 1, "smaller": -1}

_ATTR_OPS = ("filter", "verify", "choose", "same", "different", "query")
_SIMPLE_OPS = frozenset({"select", "relate", "exist", "count", "and", "or", "common", "add", "subtract", "compare",
                         "query", "filter", "verify", "choose", "same", "different", "union", "intersect", "equal",
                         "less", "greater"})


def singularize(word: str) -> str:
    """Naive English singular, enough for object names ("glasses" stays, "boxes" -> "box")."""
    w = word
    if len(w) > 3 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith(("ches", "shes", "xes", "sses", "zes")):
        return w[:-2]
    if len(w) > 2 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def pluralize(word: str) -> str:
    if not word:
        return word
    irregular = {"person": "people", "man": "men", "woman": "women", "child": "children", "sheep": "sheep",
                 "glasses": "glasses", "jeans": "jeans", "pants": "pants", "shorts": "shorts", "mouse": "mice"}
    if word in irregular:
        return irregular[word]
    if " " in word:  # "neon sign" -> "neon signs"
        head, _, last = word.rpartition(" ")
        return f"{head} {pluralize(last)}"
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


# --- parsing -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Step:
    """One parsed operation. ``op`` is the canonical base operation; ``attr`` its qualifier
    ("color" for "filter color", "rel" for "verify rel", "larger" for "compare: larger")."""

    op: str
    attr: str
    value: str  # the argument without its id list
    ids: tuple[str, ...] | None  # "(1,2)" -> ("1", "2"); "(-)" -> (); no list -> None
    deps: tuple[int, ...]
    negated: bool = False
    name: str = ""  # select / relate target name
    rel: str = ""  # relation (relate, verify rel); "r1|r2" for choose rel
    role: str = ""  # "s" | "o"
    options: tuple[str, ...] = ()  # choose A|B
    operation: str = ""  # the source's own operation and argument strings (for re-serialising)
    argument: str = ""


def _split_ids(argument: str) -> tuple[str, tuple[str, ...] | None]:
    arg = argument.strip()
    if arg.endswith(")"):
        start = arg.rfind("(")
        if start > 0 and not arg[:start].rstrip().endswith("not"):
            inner = arg[start + 1:-1].strip()
            ids = () if inner in ("-", "") else tuple(i.strip() for i in inner.split(",") if i.strip())
            return arg[:start].rstrip(), ids
    return arg, None


def _parse_relate_arg(value: str, what: str) -> tuple[str, str, str]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) < 3 or parts[-1] not in ("s", "o"):
        raise ProgramError(f"{what}: argument {value!r} is not 'name,relation,s|o'.")
    # relation names may themselves contain commas in principle; GQA's never do, but be lenient
    return parts[0] or "_", ",".join(parts[1:-1]).strip(), parts[-1]


# Parsed programs, keyed by the identity of the program list (the entry keeps a reference, so an
# id is never reused while cached). A record's program is parsed once however many steps read it.
_PARSE_CACHE: OrderedDict[int, tuple[Any, tuple[Step, ...], Any]] = OrderedDict()
_PARSE_CACHE_SIZE = 100_000


def parse_program(program: list[dict] | tuple[Step, ...]) -> tuple[Step, ...]:
    """Parse GQA's semantic list into Steps (cached per program object: records pass the same
    list to classify, the instruction grammar and verification; treat programs as immutable)."""
    if type(program) is tuple and (not program or type(program[0]) is Step):
        return program
    if not isinstance(program, (list, tuple)):
        raise ProgramError(f"a program is a list of steps, got {type(program).__name__}.")
    key = id(program)
    hit = _PARSE_CACHE.get(key)
    # A list may change after it was parsed (builders append steps): the entry is valid only
    # while the list holds the same step objects (compared by identity, at C speed). Programs
    # are values: a step dict edited in place after parsing is not noticed.
    fingerprint = tuple(program)
    if hit is not None and hit[0] is program and hit[2] == fingerprint:
        return hit[1]
    steps = tuple(_parse_step(i, raw, len(program)) for i, raw in enumerate(program))
    if not steps:
        raise ProgramError("empty program.")
    _PARSE_CACHE[key] = (program, steps, fingerprint)
    if len(_PARSE_CACHE) > _PARSE_CACHE_SIZE:
        _PARSE_CACHE.popitem(last=False)
    return steps


def clear_caches() -> None:
    """Forget parsed programs and scene-graph indexes (benchmarks; long-lived processes)."""
    _PARSE_CACHE.clear()
    _INDEX_CACHE.clear()


def _parse_step(index: int, raw: Any, n: int) -> Step:
    if not isinstance(raw, dict) or "operation" not in raw:
        raise ProgramError(f"step {index} is not an {{operation, argument, dependencies}} object.")
    operation = str(raw.get("operation") or "").strip().lower()
    argument = str(raw.get("argument") if raw.get("argument") is not None else "").strip()
    deps_raw = raw.get("dependencies") or []
    try:
        deps = tuple(int(d) for d in deps_raw)
    except (TypeError, ValueError):
        raise ProgramError(f"step {index}: dependencies {deps_raw!r} are not step indices.") from None
    if any(d < 0 or d >= index for d in deps):
        raise ProgramError(f"step {index}: dependencies {list(deps)} must point at earlier steps.")
    raw_operation, raw_argument = str(raw.get("operation") or ""), str(raw.get("argument") or "")

    def mk(*args, **kwargs) -> Step:
        return Step(*args, **kwargs, operation=raw_operation, argument=raw_argument)

    base, _, qualifier = operation.partition(" ")
    qualifier = qualifier.strip()
    if base not in _SIMPLE_OPS:
        raise UnknownOperationError(f"unknown operation {operation!r} at step {index}.")
    value, ids = argument, None
    if base in ("select", "relate") or (base in ("verify", "choose") and qualifier == "rel"):
        value, ids = _split_ids(argument)
    if base == "select":
        if deps:
            raise ProgramError(f"step {index}: select takes no dependencies.")
        return mk("select", "", value, ids, deps, name=value.lower() or "_")
    need = {"relate": 1, "filter": 1, "query": 1, "exist": 1, "count": 1, "verify": 1, "and": 2, "or": 2,
            "add": 2, "subtract": 2, "common": 2, "compare": 2, "union": 2, "intersect": 2, "equal": 2, "less": 2,
            "greater": 2}
    if base in need and len(deps) != need[base]:
        raise ProgramError(f"step {index}: {base} takes {need[base]} dependenc{'y' if need[base] == 1 else 'ies'}, "
                           f"got {len(deps)}.")
    if base == "relate":
        name, rel, role = _parse_relate_arg(value, f"step {index} relate")
        return mk("relate", "", value, ids, deps, name=name.lower(), rel=rel.lower(), role=role)
    if base == "filter":
        negated = value.lower().startswith("not(") and value.endswith(")")
        if negated:
            value = value[4:-1].strip()
        return mk("filter", qualifier, value.lower(), None, deps, negated=negated)
    if base == "query":
        attr = (qualifier or value).lower()
        if not attr or attr == "?":
            raise ProgramError(f"step {index}: query names no attribute.")
        return mk("query", attr, attr, None, deps)
    if base == "verify":
        if qualifier == "rel":
            name, rel, role = _parse_relate_arg(value, f"step {index} verify rel")
            return mk("verify", "rel", value, ids, deps, name=name.lower(), rel=rel.lower(), role=role)
        negated = value.lower().startswith("not(") and value.endswith(")")
        if negated:
            value = value[4:-1].strip()
        return mk("verify", qualifier, value.lower(), None, deps, negated=negated)
    if base == "choose":
        if qualifier == "rel":
            if len(deps) != 1:
                raise ProgramError(f"step {index}: choose rel takes 1 dependency, got {len(deps)}.")
            name, rel, role = _parse_relate_arg(value, f"step {index} choose rel")
            options = tuple(r.strip().lower() for r in rel.split("|") if r.strip())
            return mk("choose", "rel", value, ids, deps, name=name.lower(), rel=rel.lower(), role=role,
                        options=options)
        comparative = qualifier or (value.lower() if value.lower() in _COMPARATIVES else "")
        if len(deps) == 2:  # GQA's compare questions: "choose healthier" over two objects
            return mk("compare", comparative or value.lower(), value.lower(), None, deps)
        options = tuple(o.strip().lower() for o in value.split("|") if o.strip())
        if len(deps) != 1 or len(options) < 2:
            raise ProgramError(f"step {index}: choose needs one dependency and options 'a|b', got {value!r}.")
        return mk("choose", qualifier or "", value.lower(), None, deps, options=options)
    if base in ("same", "different"):
        attr = (qualifier or value).lower()
        if not 1 <= len(deps) <= 2:
            raise ProgramError(f"step {index}: {base} takes one or two dependencies.")
        return mk(base, attr, attr, None, deps)
    if base == "compare":
        return mk("compare", (qualifier or value).lower(), value.lower(), None, deps)
    return mk(base, qualifier, value.lower(), None, deps)


# --- scene-graph index ---------------------------------------------------------------------------

class _Index:
    """Lookup tables over one scene graph (built once per graph; graphs are never mutated)."""

    __slots__ = ("graph", "objects", "by_name", "rel_in", "rel_out", "width", "height", "generic")

    def __init__(self, graph: dict):
        self.graph = graph
        objects = graph.get("objects") or {}
        if not isinstance(objects, dict):
            raise ProgramError("scene graph 'objects' is not a mapping of id -> object.")
        self.objects = objects
        self.width = float(graph.get("width") or 1)
        self.height = float(graph.get("height") or 1)
        by_name: dict[str, list[str]] = {}
        rel_in: dict[str, list[tuple[str, str]]] = {}
        rel_out: dict[str, list[tuple[str, str]]] = {}
        generic = []
        for oid, obj in objects.items():
            name = str(obj.get("name", "")).lower()
            by_name.setdefault(name, []).append(oid)
            if "surface" not in obj:
                generic.append(oid)
            outs = rel_out.setdefault(oid, [])
            for r in obj.get("relations") or ():
                target = str(r.get("object"))
                rname = str(r.get("name", "")).lower()
                outs.append((rname, target))
                rel_in.setdefault(target, []).append((rname, oid))
        self.by_name, self.rel_in, self.rel_out, self.generic = by_name, rel_in, rel_out, tuple(generic)


class _Dims:
    """The part of an _Index that attribute tests need (cheap to build)."""

    __slots__ = ("width", "height")

    def __init__(self, graph: dict):
        self.width = float(graph.get("width") or 1)
        self.height = float(graph.get("height") or 1)


_INDEX_CACHE: OrderedDict[int, _Index] = OrderedDict()


def _index(graph: dict) -> _Index:
    key = id(graph)
    hit = _INDEX_CACHE.get(key)
    if hit is not None and hit.graph is graph:
        _INDEX_CACHE.move_to_end(key)
        return hit
    idx = _Index(graph)
    _INDEX_CACHE[key] = idx
    if len(_INDEX_CACHE) > 64:
        _INDEX_CACHE.popitem(last=False)
    return idx


# --- attributes ----------------------------------------------------------------------------------

def attribute_value(obj: dict, attr: str, graph: dict | None = None) -> str | None:
    """The value of attribute type ``attr`` of a scene-graph object, or None.

    World objects answer from their explicit keys; GQA objects from the first attribute word of
    that type (:data:`ATTRIBUTE_VOCAB`). ``name``, ``hposition`` and ``vposition`` are derived."""
    if attr == "name":
        return str(obj.get("name", "")).lower() or None
    if attr in ("hposition", "vposition"):
        width = float((graph or {}).get("width") or 0) or None
        height = float((graph or {}).get("height") or 0) or None
        return _position(obj, attr, width, height)
    value = obj.get(attr)
    if isinstance(value, str) and attr in WORLD_KEYS:
        return value
    vocab = ATTRIBUTE_VOCAB.get(attr)
    if vocab is None:
        return None
    for a in obj.get("attributes") or ():
        a = str(a).lower()
        if a in vocab:
            return _CANON.get(a, a) if attr == "color" else a
    if attr == "shape" and str(obj.get("name", "")).lower() in HYPERNYMS["shape"]:
        return str(obj["name"]).lower()
    return None


def _position(obj: dict, attr: str, width: float | None, height: float | None) -> str | None:
    try:
        if attr == "hposition":
            if not width:
                return None
            return "left" if (float(obj["x"]) + float(obj["w"]) / 2) < width / 2 else "right"
        if not height:
            return None
        return "top" if (float(obj["y"]) + float(obj["h"]) / 2) < height / 2 else "bottom"
    except (KeyError, TypeError, ValueError):
        return None


def _has(idx: _Index, obj: dict, attr: str, value: str) -> bool:
    value = _CANON.get(value, value)
    if attr in ("hposition", "vposition"):
        return _position(obj, attr, idx.width, idx.height) == value
    if attr == "name":
        return _name_matches(str(obj.get("name", "")).lower(), value)
    if attr:
        explicit = obj.get(attr)
        if isinstance(explicit, str) and attr in WORLD_KEYS:
            return _CANON.get(explicit, explicit) == value
    for a in obj.get("attributes") or ():
        if _CANON.get(a, a) == value:
            return True
    if not attr:  # untyped filter: any explicit world attribute or the name also counts
        for key in ("color", "shape", "size", "material"):
            v = obj.get(key)
            if isinstance(v, str) and v == value:
                return True
        return _name_matches(str(obj.get("name", "")).lower(), value)
    return False


def _name_matches(name: str, wanted: str) -> bool:
    if wanted in GENERIC_NAMES or name == wanted:
        return True
    single = singularize(wanted)
    if name == single or singularize(name) == single:
        return True
    members = HYPERNYMS.get(wanted) or HYPERNYMS.get(single)
    return bool(members) and name in members


# --- execution -----------------------------------------------------------------------------------

def _select(idx: _Index, name: str) -> tuple[str, ...]:
    if name in GENERIC_NAMES:
        return idx.generic
    single = singularize(name)
    found = list(idx.by_name.get(name, ()))
    if single != name:
        found += idx.by_name.get(single, ())
    members = HYPERNYMS.get(name) or HYPERNYMS.get(single)
    if members:
        for member in sorted(members):
            found += idx.by_name.get(member, ())
    return tuple(dict.fromkeys(found))


def _relate(idx: _Index, sources: tuple[str, ...], name: str, rel: str, role: str) -> tuple[str, ...]:
    objects = idx.objects
    out: list[str] = []
    if rel.startswith("same "):
        attr = rel[5:].strip()
        values = {attribute_value(objects[s], attr, idx.graph) for s in sources} - {None}
        for oid, obj in objects.items():
            if oid not in sources and _name_matches(str(obj.get("name", "")).lower(), name) \
                    and attribute_value(obj, attr, idx.graph) in values:
                out.append(oid)
        return tuple(out)
    table = idx.rel_in if role == "s" else idx.rel_out
    for s in sources:
        for r, other in table.get(s, ()):
            if r == rel and other in objects and _name_matches(str(objects[other].get("name", "")).lower(), name):
                out.append(other)
    return tuple(dict.fromkeys(out))


def _single_value(idx: _Index, ids: tuple[str, ...], attr: str) -> str:
    if not ids:
        raise ExecutionError(f"query {attr}: the reference matches no object.")
    values = []
    for oid in ids:
        obj = idx.objects[oid]
        v = str(obj["text"]) if attr == "text" and "text" in obj else attribute_value(obj, attr, idx.graph)
        if v is None:
            raise ExecutionError(f"query {attr}: object {oid} has no {attr}.")
        values.append(v)
    distinct = set(values)
    if len(distinct) > 1:
        raise ExecutionError(f"query {attr}: the reference matches {len(ids)} objects with different {attr}s.")
    return values[0]


def _objects(value: Any, step: int) -> tuple[str, ...]:
    if not isinstance(value, tuple):
        raise ProgramError(f"step {step} expects objects from its dependency, got {type(value).__name__}.")
    return value


def _bool(value: Any, step: int) -> bool:
    if not isinstance(value, bool):
        raise ProgramError(f"step {step} expects a yes/no dependency.")
    return value


def _count(value: Any, step: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProgramError(f"step {step} expects a count dependency.")
    return value


def _size_key(idx: _Index, oid: str) -> float:
    obj = idx.objects[oid]
    size = attribute_value(obj, "size")
    rank = _SIZE_RANK.get(size or "", None)
    if "shape" in obj and rank is not None:  # world objects: the size attribute is the truth
        return float(rank)
    try:
        return float(obj["w"]) * float(obj["h"])  # GQA: box area
    except (KeyError, TypeError, ValueError):
        if rank is None:
            raise ExecutionError(f"object {oid} has no size to compare.") from None
        return float(rank)


def run(program, scene_graph: dict, *, trust_ids: bool = False) -> list[Any]:
    """Execute every step; returns each step's value (object sets are tuples of ids, yes/no are
    bools, counts ints, other answers str). Raises ProgramError subclasses."""
    steps = parse_program(program)
    if not isinstance(scene_graph, dict):
        raise ProgramError("no scene graph to execute on.")
    idx = _index(scene_graph)
    objects = idx.objects
    values: list[Any] = []
    for i, st in enumerate(steps):
        op = st.op
        if op == "select":
            if trust_ids and st.ids and all(o in objects for o in st.ids):
                v: Any = st.ids
            else:
                v = _select(idx, st.name)
        elif op == "filter":
            src = _objects(values[st.deps[0]], i)
            attr = st.attr
            v = tuple(o for o in src if _has(idx, objects[o], attr, st.value) != st.negated)
        elif op == "relate":
            src = _objects(values[st.deps[0]], i)
            if trust_ids and st.ids is not None and all(o in objects for o in st.ids):
                v = st.ids
            else:
                v = _relate(idx, src, st.name, st.rel, st.role)
        elif op == "query":
            v = _single_value(idx, _objects(values[st.deps[0]], i), st.attr)
        elif op == "exist":
            v = bool(_objects(values[st.deps[0]], i))
        elif op == "count":
            v = len(_objects(values[st.deps[0]], i))
        elif op == "verify":
            src = _objects(values[st.deps[0]], i)
            if not src:
                raise ExecutionError(f"verify at step {i}: the reference matches no object.")
            if st.attr == "rel":
                v = bool(_relate(idx, src, st.name, st.rel, st.role))
            else:
                v = any(_has(idx, objects[o], st.attr, st.value) for o in src) != st.negated
        elif op == "choose":
            src = _objects(values[st.deps[0]], i)
            if not src:
                raise ExecutionError(f"choose at step {i}: the reference matches no object.")
            if st.attr == "rel":
                hits = [r for r in st.options if _relate(idx, src, st.name, r, st.role)]
                if len(hits) != 1:
                    raise ExecutionError(f"choose rel at step {i}: {len(hits)} of {list(st.options)} hold.")
                v = _REL_SHORT.get(hits[0], hits[0])
            else:
                hits = [opt for opt in st.options if all(_has(idx, objects[o], st.attr, opt) for o in src)]
                if len(hits) != 1:
                    raise ExecutionError(f"choose at step {i}: {len(hits)} of {list(st.options)} hold.")
                v = hits[0]
        elif op in ("same", "different"):
            if len(st.deps) == 1:
                src = _objects(values[st.deps[0]], i)
                vals = [attribute_value(objects[o], st.attr, scene_graph) for o in src]
            else:
                a, b = (_objects(values[d], i) for d in st.deps)
                vals = [_single_value(idx, a, st.attr), _single_value(idx, b, st.attr)]
            if not vals or any(x is None for x in vals):
                raise ExecutionError(f"{op} {st.attr} at step {i}: missing values.")
            same = len(set(vals)) == 1
            v = same if op == "same" else not same
        elif op in ("and", "or"):
            a, b = (_bool(values[d], i) for d in st.deps)
            v = (a and b) if op == "and" else (a or b)
        elif op == "compare":
            a, b = (_objects(values[d], i) for d in st.deps)
            if len(a) != 1 or len(b) != 1:
                raise ExecutionError(f"compare at step {i}: each side must be one object.")
            sign = _COMPARATIVES.get(st.attr)
            if sign is None:
                raise ExecutionError(f"compare at step {i}: cannot decide {st.attr!r} from a scene graph.")
            ka, kb = _size_key(idx, a[0]), _size_key(idx, b[0])
            if ka == kb:
                raise ExecutionError(f"compare at step {i}: both objects are the same size.")
            winner = a[0] if (ka > kb) == (sign > 0) else b[0]
            v = str(objects[winner].get("name", "")).lower()
        elif op == "common":
            a, b = (_objects(values[d], i) for d in st.deps)
            shared = [attr for attr in ("color", "material", "shape", "size")
                      if a and b and _single_value(idx, a, attr) == _single_value(idx, b, attr)]
            if not shared:
                raise ExecutionError(f"common at step {i}: the objects share no attribute.")
            v = shared[0]
        elif op in ("add", "subtract"):
            a, b = (_count(values[d], i) for d in st.deps)
            v = a + b if op == "add" else a - b
        elif op in ("equal", "less", "greater"):  # CLEVR's equal_integer / less_than / greater_than
            a, b = (_count(values[d], i) for d in st.deps)
            v = a == b if op == "equal" else (a < b if op == "less" else a > b)
        elif op in ("union", "intersect"):  # CLEVR's set operations
            a, b = (_objects(values[d], i) for d in st.deps)
            v = tuple(dict.fromkeys(a + b)) if op == "union" else tuple(o for o in a if o in set(b))
        else:  # pragma: no cover - parse_program rejects it first
            raise UnknownOperationError(f"unknown operation {op!r}.")
        values.append(v)
    return values


def format_answer(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        raise ProgramError("the program ends with objects, not an answer.")
    return str(value)


def execute(program, scene_graph: dict, *, trust_ids: bool = False) -> str:
    """The answer of ``program`` on ``scene_graph`` as a string (bools as yes/no, counts as digits)."""
    return format_answer(run(program, scene_graph, trust_ids=trust_ids)[-1])


def resolve(program, scene_graph: dict, index: int, *, trust_ids: bool = True) -> tuple[str, ...]:
    """The object ids of step ``index``. With ``trust_ids`` and a GQA id list on the step's
    select/relate, only the filters after it run (fast, and exact for annotated programs);
    otherwise the steps it depends on are executed."""
    steps = parse_program(program)
    if trust_ids:
        filters = []
        i = index
        while steps[i].op == "filter":
            filters.append(steps[i])
            i = steps[i].deps[0]
        head = steps[i]
        objects = scene_graph.get("objects") or {}
        if head.op in ("select", "relate") and head.ids is not None and all(o in objects for o in head.ids):
            ids = head.ids
            if filters:
                idx = _Dims(scene_graph)  # filters only need the picture size, not the full index
                for st in reversed(filters):
                    ids = tuple(o for o in ids if _has(idx, objects[o], st.attr, st.value) != st.negated)
            return ids
    needed = sorted(_ancestors(steps, index) | {index})
    sub = tuple(_renumber(steps, needed))
    value = run(sub, scene_graph, trust_ids=trust_ids)[-1]
    return _objects(value, index)


def subprogram(program, index: int) -> list[dict]:
    """The steps ``index`` depends on (and itself), renumbered: a standalone GQA program whose
    last step is ``index``. Used to re-ask a referent's description with another final step."""
    steps = parse_program(program)
    if all(steps[k].deps == ((k - 1,) if k else ()) for k in range(index + 1)):  # a linear chain 0..index
        return [{"operation": steps[k].operation, "argument": steps[k].argument, "dependencies": list(steps[k].deps)}
                for k in range(index + 1)]
    keep = sorted(_ancestors(steps, index) | {index})
    new_index = {old: new for new, old in enumerate(keep)}
    return [{"operation": steps[old].operation, "argument": steps[old].argument,
             "dependencies": [new_index[d] for d in steps[old].deps]} for old in keep]


def own_constraints(program, index: int) -> tuple[int, frozenset[str]]:
    """(start, attrs): the step where the referent's own segment starts (its select or relate)
    and the attribute types that segment constrains ("shape" stands for a non-generic name)."""
    steps = parse_program(program)
    attrs: list[str] = []
    i = index
    st = steps[i]
    while st.op == "filter":
        attrs.append(st.attr or _attr_type(st.value))
        i = st.deps[0]
        st = steps[i]
    if st.name and st.name not in GENERIC_NAMES:
        attrs += ("shape", "name")
    return i, frozenset(attrs)


def referent_summary(program, index: int) -> tuple[int, int, frozenset[str]]:
    """(start, hops, attrs): own_constraints and hops of step ``index`` in one walk."""
    steps = parse_program(program)
    attrs: list[str] = []
    i = index
    st = steps[i]
    while st.op == "filter":
        attrs.append(st.attr or _attr_type(st.value))
        i = st.deps[0]
        st = steps[i]
    start = i
    if st.name and st.name not in GENERIC_NAMES:
        attrs += ("shape", "name")
    n = 0
    while True:
        if st.op == "relate":
            n += 1
        if not st.deps or st.op not in _OBJECT_OPS:
            break
        st = steps[st.deps[0]]
    return start, n, frozenset(attrs)


def anchor_index(program, index: int) -> int | None:
    """The end of the first link of ``index``'s chain (the anchor the first relate starts from)."""
    steps = parse_program(program)
    i: int | None = index
    anchor = None
    while i is not None:
        st = steps[i]
        if st.op == "relate":
            anchor = st.deps[0]
        i = st.deps[0] if st.deps and st.op in _OBJECT_OPS else None
    return anchor


def _ancestors(steps: tuple[Step, ...], index: int) -> set[int]:
    out: set[int] = set()
    stack = list(steps[index].deps)
    while stack:
        d = stack.pop()
        if d not in out:
            out.add(d)
            stack.extend(steps[d].deps)
    return out


def _renumber(steps: tuple[Step, ...], keep: list[int]) -> Iterable[Step]:
    new_index = {old: new for new, old in enumerate(keep)}
    for old in keep:
        st = steps[old]
        yield Step(st.op, st.attr, st.value, st.ids, tuple(new_index[d] for d in st.deps), st.negated, st.name,
                   st.rel, st.role, st.options, st.operation, st.argument)


# --- structure -----------------------------------------------------------------------------------

_OBJECT_OPS = frozenset({"select", "filter", "relate"})


def referent_index(program) -> int | None:
    """The step producing the objects a single-referent question is about (the dependency of a
    final query/verify/choose/exist/count), or None for two-sided questions (compare, and, ...)."""
    steps = parse_program(program)
    last = steps[-1]
    if last.op in ("query", "verify", "choose", "exist", "count") and len(last.deps) == 1:
        d = last.deps[0]
        return d if steps[d].op in _OBJECT_OPS else None
    if last.op in ("same", "different") and len(last.deps) == 1:
        return last.deps[0]
    return None


def hops(program, index: int) -> int:
    """Relation hops on the path from the first select to step ``index``."""
    steps = parse_program(program)
    n = 0
    i: int | None = index
    while i is not None:
        st = steps[i]
        if st.op == "relate":
            n += 1
        i = st.deps[0] if st.deps and st.op in _OBJECT_OPS else None
    return n


@dataclass(frozen=True, slots=True)
class Hop:
    """One link of a referring chain: ``np`` is the link's own noun phrase ("the red sphere");
    ``relation``/``role`` say how it relates to the previous link (None for the first)."""

    np: str
    relation: str | None = None
    role: str | None = None


@dataclass(slots=True)
class _NP:
    head: str
    adjs: list[tuple[int, str]]
    posts: list[str]
    rel: tuple[str, str, "_NP"] | None = None


_POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                     "middle": "in the middle"}


def _np(steps: tuple[Step, ...], index: int) -> _NP:
    """The noun phrase of step ``index``: its filters (walked back to the select/relate that
    introduced the objects) and, for a relate, the phrase it is related to."""
    filters = []
    st = steps[index]
    while st.op == "filter":
        filters.append(st)
        st = steps[st.deps[0]]
    if st.op == "select":
        np_ = _NP(st.name, [], [])
    elif st.op == "relate":
        np_ = _NP(st.name, [], [], (st.rel, st.role, _np(steps, st.deps[0])))
    else:
        raise ProgramError(f"step {index} ({steps[index].op}) does not denote objects.")
    for f in reversed(filters):  # in program order
        attr, value = f.attr, f.value
        if f.negated:
            np_.posts.append(f"not {value}")
        elif attr in ("hposition", "vposition"):
            np_.posts.append(_POSITION_PHRASES.get(value, f"at the {value}"))
        elif attr == "name":
            np_.head = value
        else:
            kind = attr if attr in _ADJ_ORDER else _attr_type(value)
            np_.adjs.append((_ADJ_ORDER.get(kind, 1), value))
    return np_


def _attr_type(value: str) -> str:
    for attr, vocab in ATTRIBUTE_VOCAB.items():
        if value in vocab:
            return attr
    return "other"


def _realize(np_: _NP, *, plural: bool, determiner: str | None, generic: str) -> str:
    head = generic if np_.head in GENERIC_NAMES else np_.head
    if plural:
        head = pluralize(head)
    adjs = [w for _, w in sorted(np_.adjs, key=lambda t: t[0])]
    words = ([determiner] if determiner else []) + adjs + [head]
    text = " ".join(words)
    for post in np_.posts:
        if post.startswith("not "):
            text += f" that {'are' if plural else 'is'} {post}"
        else:
            text += f" {post}"
    if np_.rel is not None:
        rel, role, inner = np_.rel
        inner_text = _realize(inner, plural=False, determiner="the", generic=generic)
        if role == "s":
            text += f" {rel} {inner_text}"
        elif rel in INVERSE_RELATIONS:
            text += f" {INVERSE_RELATIONS[rel]} {inner_text}"
        else:
            text += f" that {inner_text} is {rel}"
    return text


def describe(program, index: int | None = None, *, plural: bool = False, determiner: str | None = "the",
             generic: str = "object") -> str:
    """The referring expression of step ``index`` (default: the question's referent), e.g.
    ``"the large red cube to the left of the sphere"``. ``plural=True, determiner=None`` gives
    the count form (``"large red cubes to the left of the sphere"``); ``generic`` names "_"."""
    steps = parse_program(program)
    if index is None:
        index = referent_index(steps)
        if index is None:
            raise ProgramError("the program has no single referent to describe.")
    return _realize(_np(steps, index), plural=plural, determiner=determiner, generic=generic)


def chain(program, index: int | None = None, *, generic: str = "object") -> list[Hop]:
    """The referring chain of step ``index`` as hops, first (the anchor) to last (the referent)."""
    steps = parse_program(program)
    if index is None:
        index = referent_index(steps)
        if index is None:
            raise ProgramError("the program has no single referent.")
    hops_out: list[Hop] = []
    np_: _NP | None = _np(steps, index)
    while np_ is not None:
        own = _NP(np_.head, np_.adjs, np_.posts, None)
        text = _realize(own, plural=False, determiner="the", generic=generic)
        if np_.rel is not None:
            rel, role, inner = np_.rel
            hops_out.append(Hop(text, rel, role))
            np_ = inner
        else:
            hops_out.append(Hop(text))
            np_ = None
    hops_out.reverse()
    return hops_out
