"""The built-in scene world: scenes, renderer, edits, questions, the shapes source, and the
GQA program executor (on hand-made GQA scene graphs, including REFERENCE.md's real record)."""

from __future__ import annotations

import copy
import itertools
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from uniedit_cli import world
from uniedit_cli.synth import programs as P
from uniedit_cli.synth.records import EditOp
from uniedit_cli.world import scene as S

# --- scenes and rendering ------------------------------------------------------------------------


def _boxes_disjoint(scene: dict) -> bool:
    boxes = [(o["x"], o["y"], o["w"], o["h"]) for o in scene["objects"].values()]
    for (x1, y1, w1, h1), (x2, y2, w2, h2) in itertools.combinations(boxes, 2):
        if x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1:
            return False
    return True


def test_scenes_are_deterministic_and_renders_byte_identical():
    a, b = world.generate_scene(7, 3), world.generate_scene(7, 3)
    assert a == b
    assert world.generate_scene(7, 4) != a and world.generate_scene(8, 3) != a
    assert world.render(a).tobytes() == world.render(copy.deepcopy(b)).tobytes()
    assert world.render_png(a) == world.render_png(b)
    img = world.render(a)
    assert img.mode == "RGB" and img.size == (256, 256)
    assert world.render(a, 128).size == (128, 128)


def test_scene_graph_is_gqa_schema_with_world_keys_and_no_overlap():
    for index in range(40):
        scene = world.generate_scene(0, index)
        assert scene["width"] == scene["height"] == 256 and world.is_world(scene)
        assert _boxes_disjoint(scene)
        for obj in scene["objects"].values():
            assert {"name", "x", "y", "w", "h", "attributes", "relations"} <= set(obj)
            assert 0 <= obj["x"] and obj["x"] + obj["w"] <= 256 and 0 <= obj["y"] and obj["y"] + obj["h"] <= 256
            if "shape" in obj:
                assert obj["name"] == obj["shape"] and obj["color"] in world.COLORS
                assert obj["attributes"] == [obj["size"], obj["color"], obj["material"]]
                for rel in obj["relations"]:
                    other = scene["objects"][rel["object"]]
                    assert rel["name"] in S.relate_pair(obj, other)  # relations follow geometry
            else:
                assert obj["name"] == obj["surface"] and obj["text"]


def test_materials_and_shapes_render_differently():
    base = {"width": 64, "height": 64, "world": {"version": 1, "seed": 0, "index": 0}, "objects": {}}
    renders = {}
    for shape, material in itertools.product(world.SHAPES, world.MATERIALS):
        obj = S.make_object(shape, "red", "large", material, S.cell_anchor(1, 1), 64)
        renders[shape, material] = world.render({**base, "objects": {"o0": obj}}).tobytes()
    assert len(set(renders.values())) == len(renders)


# --- edits ---------------------------------------------------------------------------------------


def _random_edit(scene: dict, data) -> EditOp:
    floor = sorted(S.floor_objects(scene))
    op = data.draw(st.sampled_from(world.EDIT_OPS))
    pick = lambda values, avoid=None: data.draw(st.sampled_from([v for v in values if v != avoid]))  # noqa: E731
    if op in ("recolor", "reshape", "rematerial", "resize", "remove", "move", "replace"):
        assume(floor)
        target = data.draw(st.sampled_from(floor))
        obj = scene["objects"][target]
        if op == "recolor":
            return EditOp(op, target, {"color": pick(world.COLORS, obj["color"])})
        if op == "reshape":
            return EditOp(op, target, {"shape": pick(world.SHAPES, obj["shape"])})
        if op == "rematerial":
            return EditOp(op, target, {"material": pick(world.MATERIALS, obj["material"])})
        if op == "resize":
            return EditOp(op, target, {"size": pick(world.SIZES, obj["size"])})
        if op == "replace":
            return EditOp(op, target, {"object": {"shape": pick(world.SHAPES, obj["shape"]),
                                                  "color": pick(world.COLORS, obj["color"])}})
        if op == "move":
            free = S.free_cells(scene)
            assume(free)
            return EditOp(op, target, {"cell": list(data.draw(st.sampled_from(free)))})
        return EditOp(op, target, {})
    if op == "add":
        spec = {"shape": pick(world.SHAPES), "color": pick(world.COLORS), "size": pick(world.SIZES),
                "material": pick(world.MATERIALS)}
        return EditOp(op, None, {"object": spec, "count": data.draw(st.integers(1, 3)),
                                 "side": data.draw(st.sampled_from([None, "left", "right"]))})
    if op == "write_text":
        text = data.draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8))
        return EditOp(op, None, {"text": text, "surface": pick(world.SURFACES)})
    return EditOp("none")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), index=st.integers(0, 50), size=st.sampled_from([96, 256]), data=st.data())
def test_a_target_differs_from_its_source_exactly_where_the_edit_says(seed, index, size, data):
    scene = world.generate_scene(seed, index, size)
    edit = _random_edit(scene, data)
    before = copy.deepcopy(scene)
    try:
        edited = world.apply_edit(scene, edit)
    except world.EditError:
        assume(False)
    assert scene == before, "apply_edit must not mutate its input"
    assert _boxes_disjoint(edited)
    src = np.asarray(world.render(scene)).astype(int)
    tgt = np.asarray(world.render(edited)).astype(int)
    changed = (src != tgt).any(axis=-1)
    allowed = np.zeros_like(changed)
    margin = 1
    for x, y, w, h in world.edit_region(scene, edit, edited):
        allowed[max(0, y - margin):y + h + margin, max(0, x - margin):x + w + margin] = True
    assert not (changed & ~allowed).any(), f"{edit} changed pixels outside its region"
    if edit.op != "none":
        assert changed.any(), f"{edit} changed nothing visible"
    # the pipeline's entry points agree with the primitives
    assert np.array_equal(np.asarray(world.render(edited)), tgt.astype(np.uint8))


def test_edits_update_the_scene_graph_and_relations():
    scene = world.generate_scene(1, 2, num_objects=4, sign_probability=0.0)
    oid = sorted(S.floor_objects(scene))[0]
    recolored = world.apply_edit(scene, EditOp("recolor", oid, {"color": "green"}))
    assert recolored["objects"][oid]["color"] == "green" and "green" in recolored["objects"][oid]["attributes"]
    assert P.execute([{"operation": "select", "argument": "_", "dependencies": []},
                      {"operation": "filter color", "argument": "green", "dependencies": [0]},
                      {"operation": "count", "argument": "", "dependencies": [1]}], recolored) == str(
        sum(o["color"] == "green" for o in S.floor_objects(recolored).values()))
    removed = world.apply_edit(scene, EditOp("remove", oid))
    assert oid not in removed["objects"]
    assert all(r["object"] != oid for o in removed["objects"].values() for r in o["relations"])
    # add with a relation constraint: the new object stands in that relation to the anchor
    anchor = sorted(S.floor_objects(scene))[1]
    args = {"object": {"shape": "cone", "color": "pink", "size": "small", "material": "metal"},
            "where": [["to the left of", anchor]]}
    if world.edits.placement_cells(scene, args):
        added = world.apply_edit(scene, EditOp("add", None, args))
        new = [k for k in added["objects"] if k not in scene["objects"]]
        assert len(new) == 1 and {"name": "to the left of", "object": anchor} in added["objects"][new[0]]["relations"]
    # boards: a new one on the wall, or rewriting an existing sign
    board = world.apply_edit(scene, EditOp("write_text", None, {"text": "42", "surface": "whiteboard"}))
    assert P.execute([{"operation": "select", "argument": "whiteboard", "dependencies": []},
                      {"operation": "query", "argument": "text", "dependencies": [0]}], board) == "42"


def test_infeasible_edits_raise_edit_error():
    full = world.generate_scene(0, 0, num_objects=12)
    spec = {"shape": "cube", "color": "red", "size": "small", "material": "matte"}
    with pytest.raises(world.EditError):
        world.apply_edit(full, EditOp("add", None, {"object": spec}))
    with pytest.raises(world.EditError):
        world.apply_edit(full, EditOp("recolor", "nope", {"color": "red"}))
    with pytest.raises(world.EditError):
        world.apply_edit(full, EditOp("recolor", "o0", {"color": "chartreuse"}))
    scene = world.generate_scene(0, 1, sign_probability=0.0)
    for k in range(3):
        scene = world.apply_edit(scene, EditOp("write_text", None, {"text": str(k), "surface": "whiteboard"}))
    with pytest.raises(world.EditError):
        world.apply_edit(scene, EditOp("write_text", None, {"text": "x", "surface": "whiteboard"}))


# --- questions and the shapes source -------------------------------------------------------------


def test_world_questions_are_answered_by_their_programs():
    families = set()
    for index in range(60):
        scene = world.generate_scene(5, index)
        for q in world.generate_questions(scene, random.Random(index), 10, max_depth=3):
            families.add(q.family)
            assert P.execute(q.program, scene) == q.answer
            steps = P.parse_program(q.program)
            for step in steps:
                assert step.ids is None or all(i in scene["objects"] for i in step.ids)
            for oid in q.annotations["question"].values():
                assert oid in scene["objects"]
            if q.family == "count":  # an independent count
                ref = P.referent_index(steps)
                assert int(q.answer) == len(P.resolve(q.program, scene, ref, trust_ids=False))
            if q.family.startswith("query_") or q.family == "ocr" or q.types["detailed"] == "positionQuery":
                from uniedit_cli.synth.instructions import check_leak

                assert not check_leak(q.question, q.answer), q.question
            ref = P.referent_index(steps)
            if ref is not None and q.family.startswith("query_"):
                assert P.hops(steps, ref) <= 3
    assert {"query_color", "query_shape", "query_material", "query_size", "query_name", "count", "math",
            "location", "ocr", "exist", "verify", "choose_attr", "choose_rel", "compare"} <= families


def test_referring_chains_read_naturally_and_respect_max_depth():
    deepest = 0
    for index in range(30):
        scene = world.generate_scene(9, index)
        for q in world.generate_questions(scene, random.Random(index), 8, max_depth=1):
            ref = P.referent_index(q.program)
            if ref is not None:
                deepest = max(deepest, P.hops(q.program, ref))
    assert deepest == 1
    program = [{"operation": "select", "argument": "sphere (o2)", "dependencies": []},
               {"operation": "relate", "argument": "cube,to the left of,s (o1)", "dependencies": [0]},
               {"operation": "filter color", "argument": "red", "dependencies": [1]},
               {"operation": "filter size", "argument": "large", "dependencies": [2]},
               {"operation": "query", "argument": "material", "dependencies": [3]}]
    assert P.describe(program) == "the large red cube to the left of the sphere"
    assert P.describe(program, 3, plural=True, determiner=None) == "large red cubes to the left of the sphere"
    assert [h.np for h in P.chain(program)] == ["the sphere", "the large red cube"]


def test_shapes_source_is_deterministic_and_keeps_the_scene_graph():
    from uniedit_cli.synth.sources.shapes import ShapesSource

    a = list(ShapesSource(6, seed=3, size=128, questions_per_image=5))
    b = list(ShapesSource(6, seed=3, size=128, questions_per_image=5))
    assert [(r.source_id, r.question, r.answer, r.program) for r in a] == \
           [(r.source_id, r.question, r.answer, r.program) for r in b]
    assert [r.question for r in ShapesSource(6, seed=4, size=128, questions_per_image=5)] != [r.question for r in a]
    source = ShapesSource(6, seed=3, size=128, questions_per_image=5)
    assert source.count() == len(a) <= source.max_records()
    assert [x.source_id for x in source.iter_range(3, 7)] == [x.source_id for x in a[3:7]]
    r = a[0]
    assert r.source == "shapes" and r.image_bytes is None and r.scene_graph["width"] == 128
    assert len({id(x.scene_graph) for x in a if x.image_id == r.image_id}) == 1  # shared per image
    assert world.render_source(r).size == (128, 128)
    edit = EditOp("write_text", None, {"text": "hi", "surface": "blackboard"})
    assert world.render_target(r, edit).tobytes() == world.render(world.apply_edit(r.scene_graph, edit)).tobytes()
    embedded = next(iter(ShapesSource(1, seed=3, size=128, questions_per_image=1, embed_images=True)))
    assert np.array_equal(np.asarray(embedded.load_image()), np.asarray(world.render_source(embedded)))


# --- the program executor on GQA scene graphs ----------------------------------------------------

REAL_PROGRAM = [  # REFERENCE.md: "What is on the white wall?" -> pipe (GQA 07333408)
    {"operation": "select", "dependencies": [], "argument": "wall (722332)"},
    {"operation": "filter color", "dependencies": [0], "argument": "white"},
    {"operation": "relate", "dependencies": [1], "argument": "_,on,s (722335)"},
    {"operation": "query", "dependencies": [2], "argument": "name"},
]


@pytest.fixture
def gqa_graph() -> dict:
    return {"width": 500, "height": 375, "objects": {
        "722332": {"name": "wall", "x": 0, "y": 0, "w": 240, "h": 200, "attributes": ["white"], "relations": []},
        "722335": {"name": "pipe", "x": 30, "y": 20, "w": 20, "h": 150, "attributes": ["metal", "gray"],
                   "relations": [{"name": "on", "object": "722332"}]},
        "1": {"name": "wall", "x": 260, "y": 0, "w": 240, "h": 200, "attributes": ["blue"], "relations": []},
        "2": {"name": "clock", "x": 300, "y": 20, "w": 40, "h": 40, "attributes": ["round", "black"],
              "relations": [{"name": "on", "object": "1"}, {"name": "to the right of", "object": "722335"}]},
        "3": {"name": "man", "x": 100, "y": 200, "w": 80, "h": 170, "attributes": ["tall"],
              "relations": [{"name": "holding", "object": "4"}, {"name": "to the left of", "object": "5"}]},
        "4": {"name": "umbrella", "x": 90, "y": 180, "w": 60, "h": 40, "attributes": ["red", "open"], "relations": []},
        "5": {"name": "microwave", "x": 400, "y": 250, "w": 60, "h": 40, "attributes": ["white", "metal"],
              "relations": [{"name": "to the right of", "object": "3"}]},
    }}


def _prog(*steps):
    out = []
    for k, step in enumerate(steps):
        op, arg, *deps = step
        out.append({"operation": op, "argument": arg, "dependencies": deps[0] if deps else ([k - 1] if k else [])})
    return out


def test_executor_runs_the_reference_gqa_record(gqa_graph):
    assert P.execute(REAL_PROGRAM, gqa_graph) == "pipe"
    assert P.execute(REAL_PROGRAM, gqa_graph, trust_ids=True) == "pipe"
    assert P.resolve(REAL_PROGRAM, gqa_graph, 2) == ("722335",)
    assert P.describe(REAL_PROGRAM) == "the object on the white wall"
    # the other wall is blue: the filter is what makes the reference unique
    no_filter = [REAL_PROGRAM[0], {**REAL_PROGRAM[2], "dependencies": [0]}, {**REAL_PROGRAM[3], "dependencies": [1]}]
    with pytest.raises(P.ExecutionError):
        P.execute(no_filter, gqa_graph)


def test_executor_operations_on_a_gqa_graph(gqa_graph):
    g = gqa_graph
    assert P.execute(_prog(("select", "man"), ("relate", "_,holding,o"), ("query", "color")), g) == "red"
    assert P.describe(_prog(("select", "man"), ("relate", "_,holding,o"), ("query", "color")), 1) == \
        "the object that the man is holding"
    assert P.execute(_prog(("select", "wall"), ("filter color", "not(white)"), ("relate", "_,on,s"),
                           ("query", "name")), g) == "clock"
    assert P.execute(_prog(("select", "clock"), ("verify color", "black")), g) == "yes"
    assert P.execute(_prog(("select", "clock"), ("choose color", "white|black")), g) == "black"
    assert P.execute(_prog(("select", "clock"), ("choose rel", "pipe,to the left of|to the right of,o")), g) == "right"
    assert P.execute(_prog(("select", "clock"), ("verify rel", "pipe,to the right of,o")), g) == "yes"
    assert P.execute(_prog(("select", "wall"), ("count", "")), g) == "2"
    assert P.execute(_prog(("select", "zebra"), ("exist", "?")), g) == "no"
    assert P.execute(_prog(("select", "man"), ("query", "hposition")), g) == "left"
    # "appliance" is a hypernym: GQA writes such names in relate arguments
    assert P.execute(_prog(("select", "man"), ("relate", "appliance,to the right of,s"), ("query", "name")), g) == \
        "microwave"
    for op, want in (("same color", "no"), ("different color", "yes")):
        assert P.execute(_prog(("select", "umbrella"), ("select", "microwave", []), (op, "", [0, 1])), g) == want
    for op, want in (("and", "no"), ("or", "yes")):
        both = _prog(("select", "umbrella"), ("exist", "?"), ("select", "zebra", []), ("exist", "?"), (op, "", [1, 3]))
        assert P.execute(both, g) == want
    bigger = _prog(("select", "man"), ("select", "clock", []), ("compare", "larger", [0, 1]))
    assert P.execute(bigger, g) == "man"
    math = _prog(("select", "wall"), ("count", ""), ("select", "man", []), ("count", "", [2]), ("add", "", [1, 3]))
    assert P.execute(math, g) == "3"


def test_executor_errors_carry_reasons(gqa_graph):
    with pytest.raises(P.UnknownOperationError) as err:
        P.execute(_prog(("select", "man"), ("teleport", "moon")), gqa_graph)
    assert err.value.reason == "unknown_operation"
    with pytest.raises(P.ProgramError) as err:
        P.execute([{"operation": "query", "argument": "name", "dependencies": [3]}], gqa_graph)
    assert err.value.reason == "bad_program"
    with pytest.raises(P.ExecutionError) as err:
        P.execute(_prog(("select", "wall"), ("query", "color")), gqa_graph)  # two walls, two colours
    assert err.value.reason == "unresolvable_program"
    with pytest.raises(P.ProgramError):
        P.execute(_prog(("select", "man")), gqa_graph)  # ends with objects, not an answer


def test_executor_runs_clevr_style_extensions(gqa_graph):
    g = gqa_graph
    counts = _prog(("select", "wall"), ("count", ""), ("select", "man", []), ("count", "", [2]))
    for op, want in (("equal integer", "no"), ("less than", "no"), ("greater than", "yes")):
        assert P.execute(counts + [{"operation": op, "argument": "", "dependencies": [1, 3]}], g) == want
    sets = _prog(("select", "_"), ("filter color", "white", [0]), ("filter material", "metal", [0]),
                 ("union", "", [1, 2]), ("count", "", [3]))
    assert P.execute(sets, g) == "3"  # white wall, white metal microwave, metal pipe
    sets = sets[:3] + [{**sets[3], "operation": "intersect"}] + sets[4:]
    assert P.execute(sets, g) == "1"
    same = _prog(("select", "umbrella"), ("relate", "_,same color,s"), ("count", ""))
    assert P.execute(same, g) == "0"
