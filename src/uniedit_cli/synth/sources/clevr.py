"""CLEVR as a VQA source, with its programs and scenes converted to GQA's formats.

Layout (the official CLEVR_v1.0.zip, https://cs.stanford.edu/people/jcjohns/clevr/; CoGenT's
splits such as ``valA`` work the same way)::

    CLEVR_v1.0/questions/CLEVR_{split}_questions.json   {"info", "questions": [{image_index, image_filename,
                                                          question, answer, program: [{inputs, function,
                                                          value_inputs}], question_family_index, ...}]}
    CLEVR_v1.0/scenes/CLEVR_{split}_scenes.json         {"info", "scenes": [{image_index, objects: [{shape,
                                                          size, material, color, 3d_coords, pixel_coords,
                                                          rotation}], relationships: {left, right, front,
                                                          behind}, ...}]}
    CLEVR_v1.0/images/{split}/CLEVR_{split}_000000.png

The test split has neither answers nor scenes and is refused. Questions are yielded in file
order; ``source_id`` is ``{split}-{question_index}`` because CLEVR numbers questions per split
(train and val both start at 0) while row ids must be unique across splits.

Program conversion (CLEVR ``function[value]`` -> GQA ``{operation, argument, dependencies}``),
step by step, dependencies renumbered:

=========================  ================================================================
CLEVR                      GQA-style step
=========================  ================================================================
scene                      select ``_`` (any object)
filter_color[red]          filter color ``red`` (likewise size, material, shape)
unique                     dropped: GQA's select/filter already denote "the" object
relate[left]               relate ``_,to the left of,s`` (right: to the right of; front: in
                           front of; behind: behind). "s": the result is the relation's
                           subject, "<result> is to the left of <input>", as in GQA
same_color(A)              relate ``_,same color,s``: the *other* objects sharing A's color
                           (GQA's sameRelate, which ``synth.programs`` executes)
query_shape                query shape (likewise color, size, material)
count / exist              count / exist
equal_color(query_color(A), query_color(B))
                           same color over A and B (GQA's two-object "same <attr>"); the two
                           query steps are dropped
equal_integer / less_than / greater_than
                           equal integer / less than / greater than, over the two count
                           steps (yes/no; GQA has no counting, so these are extensions)
union / intersect          union / intersect (set operations; extensions too)
=========================  ================================================================

Then, as GQA writes its programs, a shape filter is folded into the step that introduced the
objects when nothing else reads the steps in between: ``select _ -> filter size large ->
filter shape cube`` becomes ``select cube -> filter size large``, and ``relate _,behind,s ->
filter shape sphere`` becomes ``relate sphere,behind,s`` (filters commute, so this is exact).
Steps nothing depends on are removed. An unknown CLEVR function makes the question a
``BadRecord("unknown_operation")``.

Scene conversion (CLEVR scene -> GQA-schema scene graph, the same shape as the built-in
world's): object ``i`` becomes id ``"i"`` with ``name`` = shape, ``attributes`` = [size, color,
material], the explicit keys ``shape``/``color``/``size``/``material``, and CLEVR's
``pixel_coords``/``3d_coords``/``rotation``. CLEVR's ``relationships[rel][i]`` lists the objects
that are ``rel`` of object ``i`` (clevr-dataset-gen, ``compute_all_relationships``), so each
``j`` in it gets ``{"name": "to the left of", "object": "i"}``. Width and height are CLEVR's
480 x 320. Boxes are estimated (CLEVR ships none) with a pinhole model: an object of 3-D radius
r (0.7 large, 0.35 small, CLEVR's size table) seen at depth d (``pixel_coords[2]``, the distance
from the camera) spans about ``f * r / d`` pixels either side of its projected centre; the box is
that square, clipped to the image. f = 525 px assumes Blender's default camera (35 mm lens on a
32 mm sensor) at CLEVR's 480 px width; that assumption and the square shape (cylinders are
taller, the top faces of objects seen from above add height) make it a rough box, not validated
against rendered masks: enough to place an edit or a crop, not to score IoU. Without a depth,
a fixed 80 px (large) or 40 px (small) square is used.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from uniedit_cli.errors import UsageError
from uniedit_cli.synth.records import BadRecord, VQARecord
from uniedit_cli.synth.sources._base import ImageDir, Item, VQASource, as_answer, first_existing
from uniedit_cli.synth.sources._jsonstream import JSONStreamError, OffsetIndex, iter_array, probe

# CLEVR's vocabulary (clevr-dataset-gen question_generation/metadata.json): 8 colors, 3 shapes,
# 2 materials, 2 sizes.
COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES = ("cube", "sphere", "cylinder")
MATERIALS = ("rubber", "metal")
SIZES = ("small", "large")
ATTRIBUTES = ("color", "shape", "material", "size")
RELATIONS = {"left": "to the left of", "right": "to the right of", "front": "in front of", "behind": "behind"}
COMPARISONS = {"equal_integer": "equal integer", "less_than": "less than", "greater_than": "greater than"}

IMAGE_WIDTH, IMAGE_HEIGHT = 480, 320
RADIUS = {"large": 0.7, "small": 0.35}
FOCAL_PX = 35.0 / 32.0 * IMAGE_WIDTH  # ~525 px: Blender's default 35 mm lens / 32 mm sensor (assumed)


def layout_help(split: str) -> str:
    return (
        "CLEVR is read from the official release (CLEVR_v1.0.zip from https://cs.stanford.edu/people/jcjohns/clevr/): "
        f"FOLDER/questions/CLEVR_{split}_questions.json, FOLDER/scenes/CLEVR_{split}_scenes.json and "
        f"FOLDER/images/{split}/. Pass FOLDER (CLEVR_v1.0, or the folder holding it) with --vqa-path."
    )


class ConversionError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --- programs ----------------------------------------------------------------------------------

def _step_fields(step: Any, i: int) -> tuple[str, list[int], list[str]]:
    if not isinstance(step, dict):
        raise ConversionError("bad_program", f"step {i} is not an object")
    # v1.0 files say function/value_inputs; clevr-dataset-gen's newer output says type/side_inputs
    fn = step.get("function", step.get("type"))
    inputs = step.get("inputs", [])
    values = step.get("value_inputs", step.get("side_inputs", [])) or []
    if not isinstance(fn, str):
        raise ConversionError("bad_program", f"step {i} has no function")
    if "[" in fn and fn.endswith("]") and not values:  # "filter_color[red]" written as one string
        fn, _, rest = fn[:-1].partition("[")
        values = rest.split(",")
    if not isinstance(inputs, list) or not all(isinstance(x, int) and 0 <= x < i for x in inputs):
        raise ConversionError("bad_program", f"step {i} ({fn}) has inputs {inputs!r}; only earlier steps are allowed")
    return fn, list(inputs), [str(v) for v in values]


def convert_program(clevr_program: list) -> list[dict]:
    """A CLEVR program as a GQA-style semantic program (see the module docstring for the mapping)."""
    if not isinstance(clevr_program, list) or not clevr_program:
        raise ConversionError("bad_program", "expected a non-empty list of steps")
    # nodes[i]: {"op", "arg", "deps"} in CLEVR numbering; alias[i]: the node step i stands for
    nodes: dict[int, dict] = {}
    alias: dict[int, int] = {}

    def ref(i: int) -> int:
        while i in alias:
            i = alias[i]
        return i

    for i, step in enumerate(clevr_program):
        fn, inputs, values = _step_fields(step, i)
        deps = [ref(x) for x in inputs]

        def need(n_inputs: int, n_values: int = 0) -> None:
            if len(deps) != n_inputs or len(values) < n_values:
                raise ConversionError("bad_program", f"step {i} ({fn}) takes {n_inputs} input(s), got {len(deps)}")

        attr = fn.split("_", 1)[1] if "_" in fn else ""
        if fn == "scene":
            need(0)
            nodes[i] = {"op": "select", "arg": "_", "deps": []}
        elif fn == "unique":
            need(1)
            alias[i] = deps[0]
        elif fn.startswith("filter_") and attr in ATTRIBUTES:
            need(1, 1)
            nodes[i] = {"op": f"filter {attr}", "arg": values[0], "deps": deps}
        elif fn == "filter" and len(values) == 2 and values[0] in ATTRIBUTES:  # filter[color,red]
            need(1, 2)
            nodes[i] = {"op": f"filter {values[0]}", "arg": values[1], "deps": deps}
        elif fn == "relate":
            need(1, 1)
            if values[0] not in RELATIONS:
                raise ConversionError("unknown_operation", f"relate[{values[0]}]")
            nodes[i] = {"op": "relate", "arg": f"_,{RELATIONS[values[0]]},s", "deps": deps}
        elif fn in ("union", "intersect"):
            need(2)
            nodes[i] = {"op": fn, "arg": "", "deps": deps}
        elif fn in ("count", "exist"):
            need(1)
            nodes[i] = {"op": fn, "arg": "", "deps": deps}
        elif fn.startswith("query_") and attr in ATTRIBUTES:
            need(1)
            nodes[i] = {"op": f"query {attr}", "arg": "", "deps": deps}
        elif fn.startswith("equal_") and attr in ATTRIBUTES:
            need(2)
            if not all(nodes.get(d, {}).get("op") == f"query {attr}" for d in deps):
                raise ConversionError("unknown_operation", f"{fn} over something other than two query_{attr} steps")
            nodes[i] = {"op": f"same {attr}", "arg": "", "deps": [nodes[d]["deps"][0] for d in deps]}
        elif fn in COMPARISONS:
            need(2)
            nodes[i] = {"op": COMPARISONS[fn], "arg": "", "deps": deps}
        elif fn.startswith("same_") and attr in ATTRIBUTES:
            need(1)
            nodes[i] = {"op": "relate", "arg": f"_,same {attr},s", "deps": deps}
        else:
            raise ConversionError("unknown_operation", fn + (f"[{','.join(values)}]" if values else ""))

    output = ref(len(clevr_program) - 1)
    _fold_shape_filters(nodes, alias, output)
    output = ref(output)
    return _renumber(nodes, output, ref)


def _consumers(nodes: dict[int, dict]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for node in nodes.values():
        for d in node["deps"]:
            counts[d] = counts.get(d, 0) + 1
    return counts


def _fold_shape_filters(nodes: dict[int, dict], alias: dict[int, int], output: int) -> None:
    """``select _/relate _ -> filter* -> filter shape X`` => the shape becomes the name slot."""
    for i in sorted(nodes):
        node = nodes.get(i)
        if node is None or node["op"] != "filter shape":
            continue
        consumers = _consumers(nodes)
        cur = node["deps"][0]
        # walk down through other filters nothing else reads
        while nodes[cur]["op"].startswith("filter ") and nodes[cur]["op"] != "filter shape" and consumers.get(cur, 0) == 1:
            cur = nodes[cur]["deps"][0]
        base = nodes[cur]
        if consumers.get(cur, 0) != 1:
            continue
        if base["op"] == "select" and base["arg"] == "_":
            base["arg"] = node["arg"]
        elif base["op"] == "relate" and base["arg"].startswith("_,"):
            base["arg"] = node["arg"] + base["arg"][1:]
        else:
            continue
        # drop the filter: whoever read it reads its input instead
        target = node["deps"][0]
        del nodes[i]
        alias[i] = target
        for other in nodes.values():
            other["deps"] = [target if d == i else d for d in other["deps"]]
        if output == i:
            output = target


def _renumber(nodes: dict[int, dict], output: int, ref) -> list[dict]:
    live: set[int] = set()
    stack = [output]
    while stack:  # keep what the answer depends on
        i = ref(stack.pop())
        if i in live:
            continue
        live.add(i)
        stack.extend(nodes[i]["deps"])
    order = sorted(live)  # CLEVR lists steps after their inputs, so index order is topological
    new = {old: k for k, old in enumerate(order)}
    return [{"operation": nodes[old]["op"], "argument": nodes[old]["arg"],
             "dependencies": [new[ref(d)] for d in nodes[old]["deps"]]} for old in order]


# --- scenes ------------------------------------------------------------------------------------

def _box(obj: dict) -> tuple[int, int, int, int]:
    px, py, depth = (list(obj.get("pixel_coords") or []) + [None, None, None])[:3]
    r = RADIUS.get(obj.get("size"), RADIUS["large"])
    half = FOCAL_PX * r / depth if isinstance(depth, (int, float)) and depth > 0.5 else (40.0 if r > 0.5 else 20.0)
    if not isinstance(px, (int, float)) or not isinstance(py, (int, float)):
        return 0, 0, 0, 0
    x0, y0 = max(0.0, px - half), max(0.0, py - half)
    x1, y1 = min(float(IMAGE_WIDTH), px + half), min(float(IMAGE_HEIGHT), py + half)
    return int(round(x0)), int(round(y0)), max(0, int(round(x1 - x0))), max(0, int(round(y1 - y0)))


def convert_scene(scene: dict) -> dict:
    """A CLEVR scene as a GQA-schema scene graph (see the module docstring)."""
    if not isinstance(scene, dict) or not isinstance(scene.get("objects"), list):
        raise ConversionError("bad_scene_graph", "a CLEVR scene needs an 'objects' list")
    objects: dict[str, dict] = {}
    for i, obj in enumerate(scene["objects"]):
        if not isinstance(obj, dict) or not isinstance(obj.get("shape"), str):
            raise ConversionError("bad_scene_graph", f"object {i} has no shape")
        x, y, w, h = _box(obj)
        out = {"name": obj["shape"], "x": x, "y": y, "w": w, "h": h,
               "attributes": [obj[k] for k in ("size", "color", "material") if isinstance(obj.get(k), str)],
               "relations": []}
        for key in ("shape", "color", "size", "material"):
            if isinstance(obj.get(key), str):
                out[key] = obj[key]
        for key in ("pixel_coords", "3d_coords", "rotation"):
            if key in obj:
                out[key] = obj[key]
        objects[str(i)] = out
    relationships = scene.get("relationships") or {}
    for key, name in RELATIONS.items():
        for i, others in enumerate(relationships.get(key) or []):
            for j in others or []:
                if str(j) in objects and str(i) in objects:
                    # objects[j] is `key` of object i, e.g. j is to the left of i
                    objects[str(j)]["relations"].append({"name": name, "object": str(i)})
    return {"width": IMAGE_WIDTH, "height": IMAGE_HEIGHT, "objects": objects}


# --- the source --------------------------------------------------------------------------------

class CLEVRSource(VQASource):
    """CLEVR questions with converted programs and scene graphs.

    Options: ``limit`` (first N items), ``image_dir`` (the folder holding this split's PNGs when
    it is not FOLDER/images/{split}).
    """

    name = "clevr"
    default_split = "val"

    def __init__(self, path, split: str | None = None, *, limit: int | None = None, image_dir: str | None = None):
        super().__init__(path, split, limit=limit)
        self.image_dir_option = Path(image_dir).expanduser() if image_dir else None
        self.questions_file: Path | None = None
        self.scenes: OffsetIndex | None = None
        self.images: ImageDir | None = None

    def _check(self) -> None:
        split = self.split
        help_text = layout_help(split)
        root = self._require_path(help_text)
        if split == "test" or split.startswith("test"):
            raise UsageError(f"--vqa clevr: CLEVR's {split} split has no answers or scenes, so it cannot become edit data.",
                             hint="Use --split train or val.")
        qname, sname = f"CLEVR_{split}_questions.json", f"CLEVR_{split}_scenes.json"
        if root.is_file():
            questions = root if root.suffix == ".json" else None
            bases = [root.parent.parent, root.parent]
        else:
            bases = [root, root / "CLEVR_v1.0", root / "CLEVR_CoGenT_v1.0"]
            questions = first_existing(b / d / qname for b in bases for d in ("questions", ""))
        if questions is None:
            raise UsageError(f"--vqa clevr: no {qname} under {str(root)!r} (looked in questions/).", hint=help_text)
        base = questions.parent.parent if questions.parent.name == "questions" else questions.parent
        bases = list(dict.fromkeys([base, *bases]))
        scenes = first_existing(b / d / sname for b in bases for d in ("scenes", ""))
        if scenes is None:
            raise UsageError(f"--vqa clevr: no {sname} for the questions in {str(questions)!r} (looked in "
                             f"{str(base / 'scenes')!r}).", hint=help_text)
        for path, key, what in ((questions, "questions", "questions"), (scenes, "scenes", "scenes")):
            problem = probe(path, key)
            if problem:
                raise UsageError(f"--vqa clevr: {str(path)!r} is not a CLEVR {what} file ({problem}).", hint=help_text)
        if self.image_dir_option is not None:
            if not self.image_dir_option.is_dir():
                raise UsageError(f"--vqa clevr: image_dir {str(self.image_dir_option)!r} is not a folder.")
            folder = self.image_dir_option
        else:
            folder = first_existing((b / "images" / split for b in bases), kind="dir")
            if folder is None:
                raise UsageError(f"--vqa clevr: no image folder {str(base / 'images' / split)!r}.", hint=help_text)
        self.questions_file = questions
        self.scenes = OffsetIndex(scenes, array_key="scenes", key_field="image_index")
        self.images = ImageDir(folder)

    def _describe(self) -> dict[str, Any]:
        return {"questions": str(self.questions_file), "scenes": str(self.scenes.path), "images": str(self.images.folder)}

    def _raw(self) -> Iterator[dict | BadRecord]:
        try:
            for question, _, _ in iter_array(self.questions_file, "questions"):
                yield question
        except (JSONStreamError, OSError) as exc:
            yield BadRecord(f"{self.questions_file.name}@{getattr(exc, 'offset', 0)}", "malformed_json", str(exc))

    def _count(self) -> int:
        return sum(1 for _ in self._raw())

    def _items(self, start: int) -> Iterator[Item]:
        for index, entry in enumerate(islice(self._raw(), start, None), start=start):
            yield entry if isinstance(entry, BadRecord) else self._record(index, entry)

    def _record(self, index: int, q: Any) -> Item:
        if not isinstance(q, dict):
            return BadRecord(f"{self.split}-#{index}", "malformed_json", "a question entry is not an object")
        number = q.get("question_index", index)
        qid = f"{self.split}-{number}"
        question, answer = q.get("question"), as_answer(q.get("answer"))
        image_index, filename = q.get("image_index"), q.get("image_filename")
        if filename is None and isinstance(image_index, int):
            filename = f"CLEVR_{self.split}_{image_index:06d}.png"
        missing = [n for n, v in (("question", question), ("answer", answer), ("image_filename", filename),
                                  ("program", q.get("program"))) if v in (None, "", [])]
        if missing:
            return BadRecord(qid, "missing_field", ", ".join(missing))
        if not isinstance(question, str) or not isinstance(filename, str):
            return BadRecord(qid, "bad_field", "question and image_filename must be strings")
        if not self.images.has(filename):
            return BadRecord(qid, "missing_image", str(self.images.path(filename)))
        try:
            program = convert_program(q["program"])
        except ConversionError as exc:
            return BadRecord(qid, exc.reason, exc.detail)
        if image_index is None:
            return BadRecord(qid, "missing_field", "image_index (needed to find the scene)")
        scene = self.scenes.get(image_index)
        if scene is None:
            return BadRecord(qid, "bad_scene_graph", f"no scene for image_index {image_index}"
                             + (f" ({self.scenes.error})" if self.scenes.error else ""))
        try:
            graph = convert_scene(scene)
        except ConversionError as exc:
            return BadRecord(qid, exc.reason, exc.detail)
        last = q["program"][-1]
        question_type = last.get("function", last.get("type")) if isinstance(last, dict) else None
        extra = {"clevr_program": q["program"]}
        if q.get("question_family_index") is not None:
            extra["question_family_index"] = q["question_family_index"]
        return VQARecord(
            source=self.name, source_id=qid, image_id=Path(filename).stem, question=question.strip(), answer=answer,
            image_path=str(self.images.path(filename)), program=program, scene_graph=graph,
            question_type=question_type, extra=extra,
        )
