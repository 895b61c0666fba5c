"""The external VQA sources (gqa, vqav2, clevr, jsonl) on fixtures built here in the official
schemas: small images drawn with PIL, questions with programs and scene graphs, the lmms-lab
hub layouts in parquet (GQA's nested columns both as JSON strings and as structs), and damaged
entries that must come out as counted BadRecords, never as exceptions."""

from __future__ import annotations

import io
import json
import pickle
from collections import Counter
from pathlib import Path

import pytest

from uniedit_cli.errors import UsageError
from uniedit_cli.synth.records import BadRecord, VQARecord
from uniedit_cli.synth.sources import SOURCES, open_source, source_class

# --- drawing and writing fixtures -------------------------------------------------------------


def _draw(kind: str, size=(64, 48)):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (235, 235, 230))
    d = ImageDraw.Draw(img)
    if kind == "wall":  # a white wall with a dark pipe on it
        d.rectangle([0, 0, size[0], size[1] // 2], fill=(250, 250, 250))
        d.rectangle([30, 4, 34, 22], fill=(30, 30, 30))
    elif kind == "clevr":
        d.ellipse([10, 10, 30, 30], fill=(200, 40, 40))
        d.rectangle([40, 15, 55, 30], fill=(40, 40, 200))
    else:
        d.ellipse([8, 8, 40, 40], fill=(40, 160, 60))
    return img


def _save(img, path: Path, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def _image_bytes(kind: str, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    _draw(kind).save(buf, format=fmt)
    return buf.getvalue()


def _write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# The real GQA record quoted in REFERENCE.md ("VQA sources"), in the official schema.
WALL_SEMANTIC = [
    {"operation": "select", "dependencies": [], "argument": "wall (o1)"},
    {"operation": "filter color", "dependencies": [0], "argument": "white"},
    {"operation": "relate", "dependencies": [1], "argument": "_,on,s (o2)"},
    {"operation": "query", "dependencies": [2], "argument": "name"},
]
WALL_ANNOTATIONS = {"question": {"4:6": "o1"}, "answer": {"0": "o2"}, "fullAnswer": {"1": "o2", "5": "o1"}}


def gqa_questions() -> dict:
    return {
        "201": {"imageId": "n1", "question": "What is on the white wall?", "answer": "pipe",
                "fullAnswer": "The pipe is on the wall.", "isBalanced": True,
                "groups": {"global": None, "local": "14-wall_on,s"}, "entailed": [], "equivalent": ["201"],
                "types": {"structural": "query", "semantic": "rel", "detailed": "relS"},
                "annotations": WALL_ANNOTATIONS, "semantic": WALL_SEMANTIC,
                "semanticStr": "select: wall (o1)->filter color: white [0]->relate: _,on,s (o2) [1]->query: name [2]"},
        "202": {"imageId": "n1", "question": "What color is the pipe?", "answer": "black",
                "fullAnswer": "The pipe is black.", "isBalanced": True,
                "types": {"structural": "query", "semantic": "attr", "detailed": "directOf"},
                "annotations": {"question": {"4": "o2"}, "answer": {}, "fullAnswer": {"1": "o2"}},
                "semantic": [{"operation": "select", "dependencies": [], "argument": "pipe (o2)"},
                             {"operation": "query", "dependencies": [0], "argument": "color"}]},
        "203": {"imageId": "n2", "question": "Is there a ball?", "answer": "yes", "fullAnswer": "Yes, there is a ball.",
                "types": {"structural": "verify", "semantic": "obj", "detailed": "exist"},
                "annotations": {"question": {"3": "b1"}, "answer": {}, "fullAnswer": {"4": "b1"}},
                "semantic": [{"operation": "select", "dependencies": [], "argument": "ball (b1)"},
                             {"operation": "exist", "dependencies": [0], "argument": "?"}]},
        "204": {"imageId": "n404", "question": "What is this?", "answer": "cat",
                "types": {"detailed": "objThisChoose"}, "annotations": {}, "semantic": []},
        "205": {"imageId": "n2", "question": "What is green?", "types": {"detailed": "relS"},
                "annotations": {}, "semantic": []},
        "206": {"imageId": "n2", "question": "What is round?", "answer": "ball", "types": {"detailed": "relS"},
                "annotations": {}, "semantic": [{"operation": "query", "dependencies": [3], "argument": "name"}]},
    }


def gqa_scene_graphs() -> dict:
    return {
        "n1": {"width": 64, "height": 48, "objects": {
            "o1": {"name": "wall", "x": 0, "y": 0, "w": 64, "h": 24, "attributes": ["white"], "relations": []},
            "o2": {"name": "pipe", "x": 30, "y": 4, "w": 5, "h": 19, "attributes": ["black"],
                   "relations": [{"name": "on", "object": "o1"}]}}},
        "n2": {"width": 64, "height": 48, "objects": {
            "b1": {"name": "ball", "x": 8, "y": 8, "w": 33, "h": 33, "attributes": ["green", "round"], "relations": []}}},
    }


GQA_EXPECTED_BAD = {"204": "missing_image", "205": "missing_field", "206": "bad_program"}


def make_gqa_official(root: Path, split: str = "val", *, scene_graphs: bool = True) -> Path:
    _write_json(root / f"{split}_balanced_questions.json", gqa_questions())
    if scene_graphs:
        _write_json(root / f"{split}_sceneGraphs.json", gqa_scene_graphs())
    _save(_draw("wall"), root / "images" / "n1.jpg")
    _save(_draw("ball"), root / "images" / "n2.jpg")
    return root


def _hub_instruction_rows(as_json: bool) -> list[dict]:
    rows = []
    for qid, q in gqa_questions().items():
        row = {"id": qid, "imageId": q["imageId"], "question": q["question"], "answer": q.get("answer"),
               "fullAnswer": q.get("fullAnswer"), "isBalanced": q.get("isBalanced", True)}
        for key in ("semantic", "types", "annotations"):
            value = q.get(key)
            row[key] = json.dumps(value) if as_json else value
        rows.append(row)
    return rows


def make_gqa_hub(root: Path, *, as_json: bool) -> Path:
    """lmms-lab/GQA saved locally. as_json: nested columns as JSON strings, images written by
    `datasets` (the Image feature), shards named like the hub's. Otherwise: nested columns as
    inferred structs (annotations become a struct of the union of keys, nulls elsewhere),
    images as a {bytes, path} struct over two shards of one-row row groups, laid out like the
    parquet-converter's <config>/<split>/0000.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _hub_instruction_rows(as_json)
    images = [("n1", _image_bytes("wall")), ("n2", _image_bytes("ball"))]
    if as_json:
        import datasets

        (root / "val_balanced_instructions").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), root / "val_balanced_instructions" / "val-00000-of-00001.parquet")
        features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
        ds = datasets.Dataset.from_dict(
            {"id": [i for i, _ in images], "image": [{"bytes": b, "path": None} for _, b in images]}, features=features)
        (root / "val_balanced_images").mkdir(parents=True)
        ds.to_parquet(str(root / "val_balanced_images" / "val-00000-of-00001.parquet"))
    else:
        table = pa.Table.from_pylist(rows)
        assert pa.types.is_struct(table.schema.field("annotations").type)  # the struct variant for real
        assert pa.types.is_list(table.schema.field("semantic").type)
        (root / "val_balanced_instructions" / "val").mkdir(parents=True)
        pq.write_table(table, root / "val_balanced_instructions" / "val" / "0000.parquet", row_group_size=2)
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        for k, (image_id, data) in enumerate(images):
            shard = pa.table({"id": [image_id], "image": pa.array([{"bytes": data, "path": None}], type=image_type)})
            (root / "val_balanced_images" / "val").mkdir(parents=True, exist_ok=True)
            pq.write_table(shard, root / "val_balanced_images" / "val" / f"{k:04d}.parquet", row_group_size=1)
    return root


def vqa_answers(*texts: str, unsure: tuple[int, ...] = ()) -> list[dict]:
    return [{"answer": t, "answer_confidence": "maybe" if i in unsure else "yes", "answer_id": i + 1}
            for i, t in enumerate(texts)]


def vqav2_rows() -> list[dict]:
    return [
        {"question_id": 1001, "question": "What color is the ball?", "image_id": 42,
         "answers": vqa_answers(*(["green"] * 7 + ["Green", "dark green", "green "])),
         "multiple_choice_answer": "green", "answer_type": "other", "question_type": "what color is the"},
        # 5 vs 5 tie: the dataset's multiple_choice_answer decides
        {"question_id": 1002, "question": "How many balls are there?", "image_id": 42,
         "answers": vqa_answers(*(["2"] * 5 + ["1"] * 5)),
         "multiple_choice_answer": "1", "answer_type": "number", "question_type": "how many"},
        {"question_id": 1003, "question": "Is it sunny?", "image_id": 7,
         "answers": vqa_answers(*(["yes"] * 10)), "multiple_choice_answer": "yes", "answer_type": "yes/no",
         "question_type": "is it"},
        {"question_id": 1004, "question": "Is there a dog?", "image_id": 8, "answers": [],
         "multiple_choice_answer": None, "answer_type": "yes/no", "question_type": "is there a"},
    ]


def make_vqav2_hub(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = vqav2_rows()
    cells = [{"bytes": _image_bytes("ball"), "path": None}, {"bytes": _image_bytes("ball"), "path": None},
             None, {"bytes": _image_bytes("wall"), "path": None}]  # 1003 has no image
    (root / "data").mkdir(parents=True)
    for k, part in enumerate((slice(0, 2), slice(2, 4))):
        chunk = [dict(r) for r in rows[part]]
        table = pa.Table.from_pylist(chunk)
        table = table.append_column("image", pa.array(cells[part], type=image_type))
        pq.write_table(table, root / "data" / f"validation-{k:05d}-of-00002.parquet")
    # another split next to it must not be picked up
    pq.write_table(pa.Table.from_pylist([dict(rows[0], question_id=9)]).append_column(
        "image", pa.array([None], type=image_type)), root / "data" / "testdev-00000-of-00001.parquet")
    return root


def make_vqav2_official(root: Path) -> Path:
    rows = vqav2_rows()
    questions = [{"image_id": r["image_id"], "question": r["question"], "question_id": r["question_id"]} for r in rows]
    questions.append({"image_id": 42, "question": "Unanswered?", "question_id": 1005})
    annotations = [{k: r[k] for k in ("question_id", "image_id", "answers", "multiple_choice_answer", "answer_type",
                                      "question_type")} for r in rows]
    _write_json(root / "v2_OpenEnded_mscoco_val2014_questions.json",
                {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                 "data_subtype": "val2014", "questions": questions})
    _write_json(root / "v2_mscoco_val2014_annotations.json",
                {"info": {}, "license": {}, "data_subtype": "val2014", "annotations": annotations})
    _save(_draw("ball"), root / "val2014" / "COCO_val2014_000000000042.jpg")
    _save(_draw("wall"), root / "val2014" / "COCO_val2014_000000000008.jpg")  # image 7 is missing
    return root


def _p(function: str, inputs: list[int], *values: str) -> dict:
    return {"function": function, "inputs": inputs, "value_inputs": list(values)}


CLEVR_PROGRAMS = {
    # What color is the large sphere to the left of the small cube?
    "relate": [_p("scene", []), _p("filter_size", [0], "small"), _p("filter_shape", [1], "cube"), _p("unique", [2]),
               _p("relate", [3], "left"), _p("filter_size", [4], "large"), _p("filter_shape", [5], "sphere"),
               _p("unique", [6]), _p("query_color", [7])],
    # Are there as many red things as metal cubes?
    "compare": [_p("scene", []), _p("filter_color", [0], "red"), _p("count", [1]), _p("scene", []),
                _p("filter_material", [3], "metal"), _p("filter_shape", [4], "cube"), _p("count", [5]),
                _p("equal_integer", [2, 6])],
    # Is the cube the same color as the sphere?
    "equal": [_p("scene", []), _p("filter_shape", [0], "cube"), _p("unique", [1]), _p("query_color", [2]),
              _p("scene", []), _p("filter_shape", [4], "sphere"), _p("unique", [5]), _p("query_color", [6]),
              _p("equal_color", [3, 7])],
    # How many other things have the same shape as the blue thing?
    "same": [_p("scene", []), _p("filter_color", [0], "blue"), _p("unique", [1]), _p("same_shape", [2]),
             _p("count", [3])],
    # What shape is the thing behind the sphere?
    "behind": [_p("scene", []), _p("filter_shape", [0], "sphere"), _p("unique", [1]), _p("relate", [2], "behind"),
               _p("unique", [3]), _p("query_shape", [4])],
    # How many things are in front of the cylinder?
    "front": [_p("scene", []), _p("filter_shape", [0], "cylinder"), _p("unique", [1]), _p("relate", [2], "front"),
              _p("count", [3])],
    "unknown": [_p("scene", []), _p("frobnicate", [0])],
}


def make_clevr(root: Path, split: str = "val") -> Path:
    base = root / "CLEVR_v1.0"
    objects = [
        {"shape": "sphere", "size": "large", "material": "rubber", "color": "red", "rotation": 10.0,
         "3d_coords": [-2.0, 1.0, 0.7], "pixel_coords": [120, 160, 10.0]},
        {"shape": "cube", "size": "small", "material": "metal", "color": "blue", "rotation": 45.0,
         "3d_coords": [2.0, 1.0, 0.35], "pixel_coords": [360, 170, 9.5]},
        {"shape": "cylinder", "size": "large", "material": "metal", "color": "red", "rotation": 0.0,
         "3d_coords": [0.0, -3.0, 0.7], "pixel_coords": [240, 110, 14.0]},
    ]
    # relationships[rel][i]: the objects that are `rel` of object i
    relationships = {"left": [[], [0, 2], [0]], "right": [[1, 2], [], [1]],
                     "front": [[1], [], [0, 1]], "behind": [[2], [0, 2], []]}
    scenes = [{"image_index": 0, "image_filename": f"CLEVR_{split}_000000.png", "split": split,
               "objects": objects, "relationships": relationships}]
    answers = {"relate": "red", "compare": "no", "equal": "no", "same": 0, "behind": "cylinder", "front": 2,
               "unknown": "yes"}
    questions = []
    for k, (family, program) in enumerate(CLEVR_PROGRAMS.items()):
        questions.append({"question_index": k, "image_index": 0, "image_filename": f"CLEVR_{split}_000000.png",
                          "split": split, "question": f"Question {family}?", "answer": answers[family],
                          "program": program, "question_family_index": k})
    questions.append({"question_index": len(questions), "image_index": 1, "image_filename": f"CLEVR_{split}_000001.png",
                      "split": split, "question": "Is there a cube?", "answer": "yes",
                      "program": [_p("scene", []), _p("filter_shape", [0], "cube"), _p("exist", [1])]})
    _write_json(base / "questions" / f"CLEVR_{split}_questions.json",
                {"info": {"split": split, "version": "1.0"}, "questions": questions})
    _write_json(base / "scenes" / f"CLEVR_{split}_scenes.json", {"info": {"split": split}, "scenes": scenes})
    _save(_draw("clevr", (96, 64)), base / "images" / split / f"CLEVR_{split}_000000.png", "PNG")
    return root


def make_jsonl(root: Path) -> Path:
    _save(_draw("ball"), root / "imgs" / "a.png", "PNG")
    rows = [
        json.dumps({"image": "imgs/a.png", "question": "What color is the ball?", "answer": "green"}),
        "",
        json.dumps({"id": "q2", "image": "imgs/a.png", "question": "How many balls?", "answer": 1,
                    "program": json.dumps([{"operation": "select", "argument": "ball", "dependencies": []},
                                           {"operation": "count", "dependencies": [0]}]),
                    "scene_graph": {"width": 64, "height": 48, "objects": {"b": {"name": "ball", "x": 8, "y": 8,
                                    "w": 33, "h": 33, "attributes": ["green"], "relations": []}}},
                    "category_hint": "count"}),
        '{"image": "imgs/a.png", "question": "broken", ',
        json.dumps({"image": "imgs/a.png", "question": "No answer?"}),
        json.dumps({"image": "imgs/missing.png", "question": "Where?", "answer": "here"}),
        json.dumps({"image": "imgs/a.png", "question": "Bad program?", "answer": "x", "program": {"op": "select"}}),
        json.dumps(["not", "an", "object"]),
        "   ",
    ]
    (root / "data.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "data.jsonl"


# --- shared checks ----------------------------------------------------------------------------


def _items(source) -> list:
    return list(source)


def _split(items):
    records = [i for i in items if isinstance(i, VQARecord)]
    bad = {b.source_id: b.reason for b in items if isinstance(b, BadRecord)}
    return records, bad


def _contract(source, items=None):
    """What the pipeline relies on: a stable order, count() == items, resumable by index."""
    items = _items(source) if items is None else items
    again = _items(source)
    key = [(type(i).__name__, i.source_id) for i in items]
    assert key == [(type(i).__name__, i.source_id) for i in again]
    assert source.count() == len(items)
    for start in (0, 1, len(items) - 1, len(items)):
        tail = list(source.iter_range(start))
        assert [(type(i).__name__, i.source_id) for i in tail] == key[start:]
    assert [i.source_id for i in source.iter_range(1, 3)] == [i.source_id for i in items[1:3]]
    clone = pickle.loads(pickle.dumps(source))  # worker processes get a copy
    assert [(type(i).__name__, i.source_id) for i in clone] == key
    for record in items:
        if isinstance(record, VQARecord):
            assert record.source == source.name
            assert record.question and record.answer
            assert record.load_image().mode == "RGB"
    return items


# --- registry -------------------------------------------------------------------------------


def test_registry_names_and_lazy_import():
    assert set(SOURCES) == {"shapes", "gqa", "vqav2", "clevr", "jsonl"}
    assert all(":" in target for target in SOURCES.values())
    assert source_class("gqa").__name__ == "GQASource"
    assert source_class("CLEVR").name == "clevr"


def test_unknown_source_and_option_are_usage_errors(tmp_path):
    with pytest.raises(UsageError) as err:
        open_source("gqa2", tmp_path, "val")
    assert "Did you mean gqa" in str(err.value) and "vqav2" in str(err.value)
    with pytest.raises(UsageError) as err:
        open_source("vqav2", tmp_path, "val", balanced=False)
    assert "balanced" in str(err.value) and "image_dir" in str(err.value)
    with pytest.raises(UsageError):
        open_source("jsonl", tmp_path, limit=-1)


def test_every_source_checks_user_options_the_same_way():
    """--vqa-option is checked before any work, with one message for every source; the built-in
    world takes none (its scenes follow synth's own flags) instead of swallowing any key."""
    from uniedit_cli.synth.sources import check_options, option_names

    assert option_names("shapes") == [] and "image_dir" in option_names("gqa")
    check_options("gqa", {"balanced": False, "limit": 3})
    messages = []
    for name, known in (("shapes", "takes no --vqa-option"), ("jsonl", "Options of jsonl: limit, image_root"),
                        ("vqav2", "Options of vqav2: limit, image_dir, layout")):
        with pytest.raises(UsageError) as err:
            check_options(name, {"foo": "bar"})
        assert f"--vqa {name} has no option 'foo'" in str(err.value) and known in str(err.value)
        messages.append(err.value.message.replace(name, "NAME"))
    assert len(set(messages)) == 1
    with pytest.raises(UsageError) as err:  # the class itself no longer swallows unknown keywords
        open_source("shapes", None, "val", num_images=1, foo="bar")
    assert "foo" in str(err.value)


def test_open_source_adapts_to_a_source_without_path_or_split(monkeypatch, tmp_path):
    """The built-in world takes neither a path nor a split: the pipeline's default split is
    dropped for it, and a path given to it is a usage error rather than silently ignored."""
    import sys
    import types

    class World:
        def __init__(self, num_images: int, seed: int = 0):
            self.num_images, self.seed = num_images, seed

    module = types.ModuleType("fake_world_source")
    module.World = World
    monkeypatch.setitem(sys.modules, "fake_world_source", module)
    monkeypatch.setitem(SOURCES, "world", "fake_world_source:World")
    assert open_source("world", None, "val", num_images=3).num_images == 3
    with pytest.raises(UsageError) as err:
        open_source("world", tmp_path, "val", num_images=3)
    assert "--vqa-path" in str(err.value)
    with pytest.raises(UsageError) as err:
        open_source("world", None, "val", num_images=3, limit=5)
    assert "num_images" in str(err.value)


# --- GQA official ---------------------------------------------------------------------------


def test_gqa_official_records_programs_scene_graphs_and_bad_records(tmp_path):
    root = make_gqa_official(tmp_path / "gqa")
    source = open_source("gqa", root, "val")
    assert source.check() is source
    items = _contract(source)
    records, bad = _split(items)
    assert [i.source_id for i in items] == ["201", "202", "203", "204", "205", "206"]
    assert bad == GQA_EXPECTED_BAD
    wall = records[0]
    assert (wall.question, wall.answer, wall.image_id) == ("What is on the white wall?", "pipe", "n1")
    assert [(s["operation"], s["argument"], s["dependencies"]) for s in wall.program] == [
        ("select", "wall (o1)", []), ("filter color", "white", [0]), ("relate", "_,on,s (o2)", [1]),
        ("query", "name", [2])]
    assert wall.question_type == "relS"
    assert wall.annotations == WALL_ANNOTATIONS
    assert wall.scene_graph["objects"]["o2"]["relations"] == [{"name": "on", "object": "o1"}]
    assert wall.extra["fullAnswer"] == "The pipe is on the wall."
    assert wall.image_path.endswith("n1.jpg") and wall.image_bytes is None
    assert wall.load_image().size == (64, 48)
    # records of one image get their own scene-graph dicts
    records[0].scene_graph["objects"].clear()
    assert records[1].scene_graph["objects"]
    with pytest.raises(TypeError):
        len(source)  # counting the official JSON needs a pass: count() it is


def test_gqa_limit_direct_file_and_testdev_without_scene_graphs(tmp_path):
    root = make_gqa_official(tmp_path / "gqa")
    limited = open_source("gqa", root, "val", limit=2)
    assert [i.source_id for i in limited] == ["201", "202"] and limited.count() == 2
    direct = open_source("gqa", root / "val_balanced_questions.json", "val")
    assert [i.source_id for i in direct] == ["201", "202", "203", "204", "205", "206"]
    assert direct.describe()["scene_graphs"].endswith("val_sceneGraphs.json")
    testdev = make_gqa_official(tmp_path / "gqa-testdev", "testdev", scene_graphs=False)
    records, _ = _split(list(open_source("gqa", testdev, "testdev_balanced")))  # the hub's config spelling
    assert records and all(r.scene_graph is None for r in records)


def test_gqa_all_questions_in_parts_read_in_numeric_order(tmp_path):
    root = make_gqa_official(tmp_path / "gqa")
    parts = root / "train_all_questions"
    questions = list(gqa_questions().items())
    for n, (qid, q) in zip((10, 0, 2), questions[:3]):
        _write_json(parts / f"train_all_questions_{n}.json", {qid: q})
    source = open_source("gqa", root, "train", balanced=False)
    # part 0 holds 202, part 2 holds 203, part 10 holds 201
    assert [i.source_id for i in source] == ["202", "203", "201"]


def test_gqa_malformed_questions_file_is_one_bad_record(tmp_path):
    root = make_gqa_official(tmp_path / "gqa")
    text = json.dumps(gqa_questions())
    cut = text.index('"203"')
    (root / "val_balanced_questions.json").write_text(text[:cut] + '"203": {"imageId": "n2",, }}', encoding="utf-8")
    source = open_source("gqa", root, "val")
    items = _contract(source)
    assert [type(i).__name__ for i in items] == ["VQARecord", "VQARecord", "BadRecord"]
    assert items[-1].reason == "malformed_json"


def test_gqa_layout_errors_come_before_any_work(tmp_path):
    with pytest.raises(UsageError) as err:
        open_source("gqa", None, "val").check()
    assert "--vqa-path" in str(err.value)
    with pytest.raises(UsageError) as err:
        open_source("gqa", tmp_path / "nope", "val").check()
    assert "does not exist" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError) as err:
        open_source("gqa", empty, "val").check()
    message = str(err.value)
    assert "val_balanced_questions.json" in message and "val_balanced_instructions" in message
    assert "lmms-lab/GQA" in message
    no_images = tmp_path / "noimg"
    _write_json(no_images / "val_balanced_questions.json", gqa_questions())
    source = open_source("gqa", no_images, "val")
    with pytest.raises(UsageError) as err:
        next(iter(source))  # iterating checks first: the error comes before any item
    assert "images.zip" in str(err.value)
    with pytest.raises(UsageError) as err:
        open_source("gqa", no_images, "test").check()
    assert "no answers" in str(err.value)
    with pytest.raises(UsageError) as err:
        open_source("gqa", no_images, "testdev").check()
    assert "found val_balanced_questions.json instead" in str(err.value)
    wrong = tmp_path / "wrong"
    _write_json(wrong / "val_balanced_questions.json", gqa_scene_graphs())  # scene graphs, not questions
    (wrong / "images").mkdir()
    with pytest.raises(UsageError) as err:
        open_source("gqa", wrong, "val").check()
    assert "not a GQA questions file" in str(err.value)


# --- GQA hub ----------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [True, False], ids=["json-strings", "structs"])
def test_gqa_hub_layout_joins_images_and_reads_both_nested_variants(tmp_path, as_json):
    root = make_gqa_hub(tmp_path / "hub", as_json=as_json)
    official = {r.source_id: r for r in _split(list(open_source("gqa", make_gqa_official(tmp_path / "o"), "val")))[0]}
    source = open_source("gqa", root, "val")
    items = _contract(source)
    assert source.describe()["layout"] == "hub"
    assert len(source) == 6  # parquet metadata: cheap
    records, bad = _split(items)
    assert bad == GQA_EXPECTED_BAD
    for record in records:
        ref = official[record.source_id]
        assert (record.question, record.answer, record.image_id) == (ref.question, ref.answer, ref.image_id)
        assert record.program == ref.program
        assert record.annotations == ref.annotations  # struct nulls dropped, JSON parsed
        assert record.question_type == ref.question_type
        assert record.image_bytes and record.image_path is None
        assert record.scene_graph is None  # lmms-lab ships no scene graphs
    assert records[0].load_image().size == (64, 48)
    # the two questions on n1 share one image: the same bytes, read once
    assert records[0].image_bytes is records[1].image_bytes


def test_gqa_hub_with_scene_graphs_and_snapshot_folder(tmp_path):
    snapshot = tmp_path / "datasets--lmms-lab--GQA" / "snapshots" / "abc123"
    make_gqa_hub(snapshot, as_json=True)
    _write_json(snapshot / "val_sceneGraphs.json", gqa_scene_graphs())
    source = open_source("gqa", tmp_path / "datasets--lmms-lab--GQA", "val")
    records, _ = _split(list(source))
    assert records[0].scene_graph["objects"]["o1"]["name"] == "wall"
    assert [i.source_id for i in source.iter_range(3)] == ["204", "205", "206"]
    # pointing at the instructions config folder itself finds its sibling images config
    config = open_source("gqa", snapshot / "val_balanced_instructions", "val")
    assert config.count() == 6 and config.describe()["images"]


def test_gqa_hub_missing_images_config_is_a_usage_error(tmp_path):
    root = make_gqa_hub(tmp_path / "hub", as_json=True)
    for f in (root / "val_balanced_images").iterdir():
        f.unlink()
    with pytest.raises(UsageError) as err:
        open_source("gqa", root, "val").check()
    assert "val_balanced_images" in str(err.value)


# --- VQAv2 --------------------------------------------------------------------------------------


def test_majority_answer_ties_are_deterministic():
    from uniedit_cli.synth.sources.vqav2 import majority_answer

    assert majority_answer(vqa_answers("a", "b", "b")) == "b"
    assert majority_answer(vqa_answers("Yes", "yes ", "no")) == "yes"  # case and spacing are one vote
    assert majority_answer(vqa_answers("2", "1", "2", "1"), preferred="1") == "1"
    # no preferred answer among the tied: more confident votes, then the earliest answer_id
    assert majority_answer(vqa_answers("2", "1", "2", "1", unsure=(0, 2))) == "1"
    assert majority_answer(vqa_answers("cat", "dog")) == "cat"
    assert majority_answer(list(reversed(vqa_answers("cat", "dog")))) == "cat"  # answer_id, not list order
    assert majority_answer([]) is None


def test_vqav2_hub_parquet(tmp_path):
    root = make_vqav2_hub(tmp_path / "vqav2")
    source = open_source("vqav2", root, "val")  # the hub calls it "validation"
    items = _contract(source)
    assert len(source) == 4
    records, bad = _split(items)
    assert [i.source_id for i in items] == ["1001", "1002", "1003", "1004"]
    assert bad == {"1003": "missing_image", "1004": "missing_field"}
    green, count = records
    assert green.answer == "green" and len(green.answers) == 10 and green.question_type == "other"
    assert green.extra["question_prefix"] == "what color is the"
    assert count.answer == "1" and count.question_type == "number"  # 5/5 tie -> multiple_choice_answer
    assert green.image_bytes and green.image_id == "42"
    assert green.image_bytes is count.image_bytes  # one image, one bytes object across its questions
    assert source.describe()["files"][0].endswith("validation-00000-of-00002.parquet")


def test_vqav2_corrupt_row_group_costs_its_rows_only(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(vqav2_rows()[0], question_id=2000 + k, question=f"What color is ball {k}? " * 8) for k in range(6)]
    table = pa.Table.from_pylist(rows).append_column(
        "image", pa.array([{"bytes": _image_bytes("ball"), "path": None}] * 6,
                          type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
    path = tmp_path / "vqav2" / "data" / "validation-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path, row_group_size=2, compression="snappy")
    column = pq.ParquetFile(path).schema_arrow.get_field_index("question")
    offset = pq.ParquetFile(path).metadata.row_group(1).column(column).data_page_offset
    data = bytearray(path.read_bytes())
    for k in range(offset, offset + 40):  # smash the second row group's page header; the footer stays valid
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    source = open_source("vqav2", tmp_path / "vqav2", "validation")
    items = _contract(source)
    assert [type(i).__name__ for i in items] == ["VQARecord"] * 2 + ["BadRecord"] * 2 + ["VQARecord"] * 2
    assert {i.reason for i in items if isinstance(i, BadRecord)} == {"unreadable_parquet"}


def test_vqav2_split_without_answers_is_refused(tmp_path):
    root = make_vqav2_hub(tmp_path / "vqav2")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question_id": [5], "question": ["?"], "image": [None], "answers": [None],
                             "multiple_choice_answer": [None]}), root / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(UsageError) as err:
        open_source("vqav2", root, "test").check()
    assert "no answers" in str(err.value)
    with pytest.raises(UsageError) as err:
        open_source("vqav2", tmp_path / "vqav2" / "data" / "nothing-here", "val").check()
    assert "lmms-lab/VQAv2" in str(err.value)


def test_vqav2_official_json(tmp_path):
    root = make_vqav2_official(tmp_path / "vqa")
    source = open_source("vqav2", root, "val")
    items = _contract(source)
    records, bad = _split(items)
    assert [i.source_id for i in items] == ["1001", "1002", "1003", "1004", "1005"]
    assert bad == {"1003": "missing_image", "1004": "missing_field", "1005": "missing_field"}
    assert [r.answer for r in records] == ["green", "1"]
    assert records[0].image_path.endswith("COCO_val2014_000000000042.jpg")
    (root / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(UsageError) as err:
        open_source("vqav2", root, "val").check()
    assert "annotations" in str(err.value)


# --- CLEVR ------------------------------------------------------------------------------------


def _ops(program):
    return [(s["operation"], s["argument"], s["dependencies"]) for s in program]


def test_clevr_program_conversion_to_gqa_semantics():
    from uniedit_cli.synth.sources.clevr import ConversionError, convert_program

    assert _ops(convert_program(CLEVR_PROGRAMS["relate"])) == [
        ("select", "cube", []), ("filter size", "small", [0]), ("relate", "sphere,to the left of,s", [1]),
        ("filter size", "large", [2]), ("query color", "", [3])]
    assert _ops(convert_program(CLEVR_PROGRAMS["compare"])) == [
        ("select", "_", []), ("filter color", "red", [0]), ("count", "", [1]), ("select", "cube", []),
        ("filter material", "metal", [3]), ("count", "", [4]), ("equal integer", "", [2, 5])]
    assert _ops(convert_program(CLEVR_PROGRAMS["equal"])) == [
        ("select", "cube", []), ("select", "sphere", []), ("same color", "", [0, 1])]
    assert _ops(convert_program(CLEVR_PROGRAMS["same"])) == [
        ("select", "_", []), ("filter color", "blue", [0]), ("relate", "_,same shape,s", [1]), ("count", "", [2])]
    # a shape filter after same_<attr> names the related objects, as GQA writes relate arguments
    same_then_shape = [_p("scene", []), _p("filter_color", [0], "red"), _p("unique", [1]), _p("same_size", [2]),
                       _p("filter_shape", [3], "cylinder"), _p("exist", [4])]
    assert _ops(convert_program(same_then_shape)) == [
        ("select", "_", []), ("filter color", "red", [0]), ("relate", "cylinder,same size,s", [1]), ("exist", "", [2])]
    # a shape filter whose input is also read elsewhere stays a filter (folding would change that reader)
    shared = [_p("scene", []), _p("filter_shape", [0], "cube"), _p("count", [0]), _p("count", [1]),
              _p("greater_than", [3, 2])]
    assert _ops(convert_program(shared)) == [
        ("select", "_", []), ("filter shape", "cube", [0]), ("count", "", [0]), ("count", "", [1]),
        ("greater than", "", [3, 2])]
    # the newer clevr-dataset-gen spelling (type / side_inputs)
    assert _ops(convert_program([{"type": "scene", "inputs": []}, {"type": "filter_color", "inputs": [0],
                                                                   "side_inputs": ["red"]},
                                 {"type": "exist", "inputs": [1]}])) == [
        ("select", "_", []), ("filter color", "red", [0]), ("exist", "", [1])]
    with pytest.raises(ConversionError) as err:
        convert_program(CLEVR_PROGRAMS["unknown"])
    assert err.value.reason == "unknown_operation"
    with pytest.raises(ConversionError) as err:
        convert_program([_p("scene", []), _p("count", [5])])
    assert err.value.reason == "bad_program"


def test_clevr_scene_to_gqa_scene_graph(tmp_path):
    from uniedit_cli.synth.sources.clevr import FOCAL_PX, convert_scene

    scenes = make_clevr(tmp_path) / "CLEVR_v1.0" / "scenes" / "CLEVR_val_scenes.json"
    graph = convert_scene(json.loads(scenes.read_text())["scenes"][0])
    assert (graph["width"], graph["height"]) == (480, 320)
    sphere, cube, cylinder = (graph["objects"][k] for k in "012")
    assert sphere["name"] == "sphere" and sphere["attributes"] == ["large", "red", "rubber"]
    assert (sphere["shape"], sphere["color"], sphere["size"], sphere["material"]) == ("sphere", "red", "large", "rubber")
    # relationships["left"][1] == [0, 2]: the sphere and the cylinder are left of the cube
    assert {"name": "to the left of", "object": "1"} in sphere["relations"]
    assert {"name": "to the left of", "object": "1"} in cylinder["relations"]
    assert {"name": "to the right of", "object": "0"} in cube["relations"]
    assert {"name": "behind", "object": "0"} in cylinder["relations"]
    assert {"name": "in front of", "object": "2"} in sphere["relations"]
    # box: the pinhole estimate around pixel_coords, larger when nearer, smaller for small objects
    half = FOCAL_PX * 0.7 / 10.0
    assert abs(sphere["w"] - 2 * half) <= 1 and abs(sphere["x"] - (120 - half)) <= 1
    assert cube["w"] < sphere["w"] and cylinder["w"] < sphere["w"]
    for obj in graph["objects"].values():
        assert 0 <= obj["x"] and obj["x"] + obj["w"] <= 480 and 0 <= obj["y"] and obj["y"] + obj["h"] <= 320


def test_clevr_source(tmp_path):
    root = make_clevr(tmp_path)
    source = open_source("clevr", root, "val")
    items = _contract(source)
    records, bad = _split(items)
    assert [i.source_id for i in items] == [f"val-{k}" for k in range(8)]
    assert bad == {"val-6": "unknown_operation", "val-7": "missing_image"}
    relate = records[0]
    assert relate.program[0] == {"operation": "select", "argument": "cube", "dependencies": []}
    assert relate.scene_graph["objects"]["0"]["name"] == "sphere"
    assert relate.question_type == "query_color" and relate.image_id == "CLEVR_val_000000"
    assert records[3].answer == "0"  # an integer answer becomes text
    # pointing at CLEVR_v1.0 itself works too
    assert [i.source_id for i in open_source("clevr", root / "CLEVR_v1.0", "val")] == [i.source_id for i in items]


def test_converted_programs_execute_to_the_dataset_answers(tmp_path):
    """The converted CLEVR programs and scene graphs (and GQA's own) run through the synth
    program executor give back each question's answer: the conversion keeps the meaning, the
    relation directions included."""
    programs = pytest.importorskip("uniedit_cli.synth.programs")
    checked = 0
    for source in (open_source("clevr", make_clevr(tmp_path / "clevr"), "val"),
                   open_source("gqa", make_gqa_official(tmp_path / "gqa"), "val")):
        for record in source:
            if not isinstance(record, VQARecord) or not record.program:
                continue
            try:
                got = programs.execute(record.program, record.scene_graph)
            except programs.UnknownOperationError:
                continue  # count comparisons: extensions the executor may not run (yet)
            assert got == record.answer, (record.source_id, record.program)
            checked += 1
    assert checked >= 8


def test_clevr_layout_errors(tmp_path):
    root = make_clevr(tmp_path)
    with pytest.raises(UsageError) as err:
        open_source("clevr", root, "test").check()
    assert "no answers" in str(err.value)
    (root / "CLEVR_v1.0" / "scenes" / "CLEVR_val_scenes.json").unlink()
    with pytest.raises(UsageError) as err:
        open_source("clevr", root, "val").check()
    assert "CLEVR_val_scenes.json" in str(err.value) and "CLEVR_v1.0.zip" in str(err.value)
    with pytest.raises(UsageError) as err:
        open_source("clevr", root, "train").check()
    assert "CLEVR_train_questions.json" in str(err.value)


# --- JSONL ------------------------------------------------------------------------------------


def test_jsonl_rows_and_bad_lines(tmp_path):
    path = make_jsonl(tmp_path)
    source = open_source("jsonl", path, "val")  # --split is ignored
    items = _contract(source)
    records, bad = _split(items)
    assert len(items) == 7  # blank lines are not items
    assert Counter(bad.values()) == Counter({"malformed_json": 2, "missing_field": 1, "missing_image": 1,
                                             "bad_program": 1})
    first, second = records
    assert first.source_id == "data.jsonl:1" and first.image_id == "imgs/a.png"
    assert Path(first.image_path) == tmp_path / "imgs" / "a.png"
    assert second.source_id == "q2" and second.answer == "1"
    assert second.program[1] == {"operation": "count", "argument": "", "dependencies": [0]}
    assert second.scene_graph["objects"]["b"]["name"] == "ball"
    assert second.extra == {"category_hint": "count"}


def test_jsonl_folder_image_root_and_errors(tmp_path):
    folder = tmp_path / "rows"
    folder.mkdir()
    _save(_draw("ball"), tmp_path / "pics" / "b.png", "PNG")
    for n in (10, 2):
        (folder / f"part{n}.jsonl").write_text(json.dumps({"id": f"p{n}", "image": "b.png", "question": "Q?",
                                                           "answer": "a"}) + "\n", encoding="utf-8")
    source = open_source("jsonl", folder, image_root=str(tmp_path / "pics"))
    assert [i.source_id for i in _contract(source)] == ["p2", "p10"]
    with pytest.raises(UsageError):
        open_source("jsonl", tmp_path / "pics").check()  # a folder without .jsonl files
    with pytest.raises(UsageError):
        open_source("jsonl", tmp_path / "absent.jsonl").check()
