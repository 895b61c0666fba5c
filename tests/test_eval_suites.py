"""Eval suites on small benchmark fixtures built here, in each benchmark's real offline layout
(hub parquet snapshots with embedded images, and the official JSON / folder releases), plus
the scoring rules that need no model: judge-reply parsing, VIEScore, RISE accuracy, GenEval's
detection logic on given detections, and uniedit-bench's exact ground truth.

The builders are plain functions (imported by test_eval.py for the end-to-end runs).
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from uniedit_cli.errors import UsageError
from uniedit_cli.eval.suites import SUITES, suite_class
from uniedit_cli.eval.suites.base import Sample

# --- builders ---------------------------------------------------------------------------------

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def picture(color=(200, 40, 40), size=(40, 32), square=None) -> Image.Image:
    img = Image.new("RGB", size, (230, 230, 230))
    if square is not None:
        ImageDraw.Draw(img).rectangle([8, 8, 24, 24], fill=square)
    else:
        ImageDraw.Draw(img).ellipse([4, 4, 20, 20], fill=color)
    return img


def encoded(img: Image.Image, fmt: str = "PNG") -> dict:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return {"bytes": buffer.getvalue(), "path": None}


def write_parquet(path: Path, columns: dict[str, list], types: dict[str, pa.DataType] | None = None) -> Path:
    types = types or {}
    arrays = {name: pa.array(values, type=types.get(name)) for name, values in columns.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)
    return path


GQA_ROWS = [
    ("201307251", "n161313", "What color is the ball?", "red", "verify", "attr"),
    ("201307252", "n161313", "Is the ball on the left?", "yes", "verify", "rel"),
    ("201640614", "n235859", "What is on the table?", "cup", "query", "obj"),
    ("201640615", "n235859", "Which side is the cup on?", "right", "query", "rel"),
]


def write_gqa_hub(root: Path, *, types_as_json: bool = False) -> Path:
    """lmms-lab/GQA's testdev_balanced_{instructions,images} configs."""
    types = [{"structural": s, "semantic": t, "detailed": "x"} for *_, s, t in GQA_ROWS]
    write_parquet(root / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet", {
        "id": [r[0] for r in GQA_ROWS], "imageId": [r[1] for r in GQA_ROWS], "question": [r[2] for r in GQA_ROWS],
        "answer": [r[3] for r in GQA_ROWS], "fullAnswer": [f"It is {r[3]}." for r in GQA_ROWS],
        "types": [json.dumps(t) for t in types] if types_as_json else types,
    })
    write_parquet(root / "testdev_balanced_images" / "testdev-00000-of-00001.parquet", {
        "id": ["n161313", "n235859", "n999999"],
        "image": [encoded(picture()), encoded(picture((40, 40, 200)), "JPEG"), encoded(picture())],
    }, {"image": IMAGE_STRUCT})
    return root


def write_gqa_official(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    questions = {qid: {"imageId": image, "question": q, "answer": a, "types": {"structural": s, "semantic": t}}
                 for qid, image, q, a, s, t in GQA_ROWS}
    (root / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    picture().save(root / "images" / "n161313.jpg")
    picture((40, 40, 200)).save(root / "images" / "n235859.jpg")
    return root


VQA_ANSWERS = {
    1001: ["two"] * 6 + ["2"] * 2 + ["three"] * 2,
    1002: ["yes"] * 10,
    1003: ["red"] * 3 + ["dark red"] * 7,
}


def write_vqav2_hub(root: Path) -> Path:
    qids = list(VQA_ANSWERS)
    write_parquet(root / "data" / "validation-00000-of-00001.parquet", {
        "question_id": qids, "question": ["How many cats?", "Is it sunny?", "What color is the car?"],
        "image_id": [9, 9, 10], "answer_type": ["number", "yes/no", "other"],
        "question_type": ["how many", "is it", "what color"], "multiple_choice_answer": ["2", "yes", "dark red"],
        "answers": [[{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(VQA_ANSWERS[q])]
                    for q in qids],
        "image": [encoded(picture()), encoded(picture()), encoded(picture((0, 0, 255)))],
    }, {"image": IMAGE_STRUCT})
    return root


def write_vqav2_official(root: Path) -> Path:
    (root / "val2014").mkdir(parents=True)
    for image_id in (9, 10):
        picture().save(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    qs = [{"question_id": 1001, "image_id": 9, "question": "How many cats?"},
          {"question_id": 1002, "image_id": 9, "question": "Is it sunny?"}]
    anns = [{"question_id": q, "image_id": 9, "answer_type": "other", "question_type": "x", "multiple_choice_answer": "x",
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(VQA_ANSWERS[q])]}
            for q in (1001, 1002)]
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"data_subtype": "val2014", "questions": qs}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": anns}))
    return root


MME_ROWS = [  # (question_id, category, question, answer)
    ("existence/000000006040.jpg", "existence", "Is there a train in this image? Please answer yes or no.", "Yes"),
    ("existence/000000006040.jpg", "existence", "Is there a bed in this image? Please answer yes or no.", "No"),
    ("existence/000000044279.jpg", "existence", "Is there a cat in this image? Please answer yes or no.", "Yes"),
    ("existence/000000044279.jpg", "existence", "Is there a dog in this image? Please answer yes or no.", "No"),
    ("code_reasoning/0020.png", "code_reasoning", "Is the output 5? Please answer yes or no.", "Yes"),
    ("code_reasoning/0020.png", "code_reasoning", "Is the output 6? Please answer yes or no.", "No"),
]


def write_mme_hub(root: Path) -> Path:
    write_parquet(root / "data" / "test-00000-of-00001.parquet", {
        "question_id": [r[0] for r in MME_ROWS], "category": [r[1] for r in MME_ROWS],
        "question": [r[2] for r in MME_ROWS], "answer": [r[3] for r in MME_ROWS],
        "image": [encoded(picture()) for _ in MME_ROWS],
    }, {"image": IMAGE_STRUCT})
    return root


def write_mme_official(root: Path) -> Path:
    folder = root / "code_reasoning"
    folder.mkdir(parents=True)
    picture().save(folder / "0020.png")
    (folder / "0020.txt").write_text("Is the output 5? Please answer yes or no.\tYes\n"
                                     "Is the output 6? Please answer yes or no.\tNo\n")
    art = root / "artwork"
    (art / "images").mkdir(parents=True)
    (art / "questions_answers_YN").mkdir()
    picture().save(art / "images" / "10002.jpg")
    (art / "questions_answers_YN" / "10002.txt").write_text("Is this by Monet? Please answer yes or no.\tYes\n"
                                                           "Is this by Dali? Please answer yes or no.\tNo\n")
    return root


GENEVAL_METADATA = [
    {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
    {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
     "prompt": "a photo of two dogs"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
    {"tag": "position", "include": [{"class": "cup", "count": 1}, {"class": "bowl", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a bowl left of a cup"},
]


def write_geneval(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "evaluation_metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_METADATA))
    return root


def write_gedit(root: Path) -> Path:
    rows = [("k1", "color_alter", "make the ball blue", "en", True), ("k2", "subject-add", "add a hat", "en", False),
            ("k3", "color_alter", "把球变成蓝色", "cn", True)]
    write_parquet(root / "data" / "train-00000-of-00001.parquet", {
        "key": [r[0] for r in rows], "task_type": [r[1] for r in rows], "instruction": [r[2] for r in rows],
        "instruction_language": [r[3] for r in rows], "Intersection_exist": [r[4] for r in rows],
        "input_image": [encoded(picture()) for _ in rows], "input_image_raw": [encoded(picture((0, 200, 0))) for _ in rows],
    }, {"input_image": IMAGE_STRUCT, "input_image_raw": IMAGE_STRUCT})
    return root


def write_imgedit(root: Path) -> Path:
    (root / "singleturn" / "animal").mkdir(parents=True)
    picture().save(root / "singleturn" / "animal" / "0001.jpg")
    data = {"1": {"id": "animal/0001.jpg", "prompt": "replace the ball with a cube", "edit_type": "replace"},
            "2": {"id": "animal/0001.jpg", "prompt": "remove the ball", "edit_type": "remove"}}
    (root / "basic_edit.json").write_text(json.dumps(data))
    return root


def write_kris(root: Path) -> Path:
    for category in ("color_change", "chemistry"):
        folder = root / category
        folder.mkdir(parents=True)
        picture().save(folder / "1.jpg")
        (folder / "annotation.json").write_text(json.dumps(
            {"1": {"ori_img": "1.jpg", "ins_en": f"{category}: show the result", "explain_en": "the ball turns blue"}}))
    return root


def write_rise(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    picture().save(root / "images" / "t1.png")
    rows = [{"index": "temporal_1", "category": "temporal", "instruction": "show it after ten years", "image": "images/t1.png"},
            {"index": "logical_1", "category": "logical", "instruction": "solve the maze", "image": "images/t1.png",
             "reference": "a path from top left to bottom right"}]
    (root / "datav2_total_w_subtask.json").write_text(json.dumps(rows))
    return root


def write_bench(root: Path) -> Path:
    """Held-out rows in the synth output layout (synth.records.COLUMNS): two scene-world rows
    (a recolor and a no-op conditional) and one GQA row with an editor-made target."""
    from uniedit_cli.synth.records import COLUMNS

    source = picture(square=(200, 40, 40))
    recolored = picture(square=(40, 160, 60))
    rows = [
        dict(id="w-recolor", source="shapes", input_image=encoded(source), edited_image=encoded(recolored),
             edit_prompt="If the square is red, make it green.", task_category="color", style="conditional",
             condition_holds=True, expected_after_edit={"question": "What color is the square?", "answer": "green"}),
        dict(id="w-noop", source="shapes", input_image=encoded(source), edited_image=encoded(source),
             edit_prompt="If the square is blue, make it yellow.", task_category="color", style="conditional",
             condition_holds=False, expected_after_edit={"question": "What color is the square?", "answer": "red"}),
        dict(id="g-1", source="gqa", input_image=encoded(picture()), edited_image=encoded(picture((0, 0, 200))),
             edit_prompt="Write the answer on a sign.", task_category="ocr", style="text-answer", condition_holds=None,
             expected_after_edit={"question": "What is written on the sign?", "answer": "cup"}),
    ]
    columns = {name: [row.get(name) for row in rows] for name in COLUMNS}
    types = {"input_image": IMAGE_STRUCT, "edited_image": IMAGE_STRUCT, "seed": pa.int64(), "judge_ok": pa.bool_(),
             "clip_dir": pa.float32(), "clip_img": pa.float32(), "quality": pa.float32(), "condition_holds": pa.bool_(),
             **{name: pa.string() for name in ("source_id", "image_id", "original_question", "original_answer",
                                               "process_answer", "program", "editor", "judge_answer")}}
    write_parquet(root / "test" / "data-00000-of-00001.parquet", columns, types)
    # training rows sit beside the held-out ones and must never be scored
    write_parquet(root / "train" / "data-00000-of-00001.parquet", {k: v[:1] for k, v in columns.items()}, types)
    (root / "uniedit-data.json").write_text(json.dumps({"version": "test"}))
    return root


def make_suite(name: str, data: Path | None, tmp_path: Path, **options):
    return suite_class(name)(data, cache_dir=str(tmp_path / "inputs"), **options)


# --- data loading -----------------------------------------------------------------------------

def test_every_registered_suite_imports_and_declares_its_contract():
    for name in SUITES:
        if name == "magicbrush":
            continue  # another module's suite; its own tests cover it
        cls = suite_class(name)
        assert cls.name == name and cls.task in ("edit", "generate", "ask") and cls.output_kind in ("image", "text")
        assert cls.default_metrics and set(cls.default_metrics) <= set(cls.all_metrics)
        assert cls.data_help and cls.convention
        assert not cls.approximate or cls.approximate_reason or name == "geneval"  # geneval's reason names its detector


@pytest.mark.parametrize("types_as_json", [False, True])
def test_gqa_hub_layout_joins_images_and_accepts_json_or_struct_columns(tmp_path, types_as_json):
    suite = make_suite("gqa", write_gqa_hub(tmp_path / "gqa", types_as_json=types_as_json), tmp_path)
    samples = suite.samples()
    assert [s.id for s in samples] == [r[0] for r in GQA_ROWS]
    first = samples[0]
    assert first.inputs["question"] == "What color is the ball?\nAnswer the question using a single word or phrase."
    assert first.reference["answer"] == "red" and first.meta["structural"] == "verify"
    assert Image.open(first.inputs["image"]).size == (40, 32)
    assert samples[2].inputs["image"].endswith(".jpg")  # embedded JPEG bytes kept as they are
    assert samples[0].inputs["image"] == samples[1].inputs["image"]  # one file per image id
    assert len(make_suite("gqa", tmp_path / "gqa", tmp_path, limit=2).samples()) == 2


def test_gqa_official_layout(tmp_path):
    samples = make_suite("gqa", write_gqa_official(tmp_path / "gqa"), tmp_path).samples()
    assert len(samples) == 4 and Path(samples[0].inputs["image"]).name == "n161313.jpg"
    assert samples[3].meta["semantic"] == "rel"


def test_vqav2_hub_and_official_layouts(tmp_path):
    hub = make_suite("vqav2", write_vqav2_hub(tmp_path / "hub"), tmp_path).samples()
    assert [s.id for s in hub] == ["1001", "1002", "1003"]
    assert len(hub[0].reference["answers"]) == 10 and hub[0].meta["answer_type"] == "number"
    official = make_suite("vqav2", write_vqav2_official(tmp_path / "official"), tmp_path).samples()
    assert [s.id for s in official] == ["1001", "1002"]
    assert Path(official[0].inputs["image"]).name == "COCO_val2014_000000000009.jpg"


def test_mme_hub_and_official_layouts_give_two_questions_per_image(tmp_path):
    hub = make_suite("mme", write_mme_hub(tmp_path / "hub"), tmp_path).samples()
    assert [s.id for s in hub[:2]] == ["existence/000000006040.jpg:0", "existence/000000006040.jpg:1"]
    assert hub[4].meta["category"] == "code_reasoning" and hub[1].reference["answer"] == "No"
    official = make_suite("mme", write_mme_official(tmp_path / "official"), tmp_path).samples()
    assert {s.meta["category"] for s in official} == {"code_reasoning", "artwork"} and len(official) == 4
    assert all(Path(s.inputs["image"]).exists() for s in official)


def test_geneval_samples_are_images_per_prompt(tmp_path):
    suite = make_suite("geneval", write_geneval(tmp_path / "geneval"), tmp_path)
    samples = suite.samples()
    assert len(samples) == 4 * len(GENEVAL_METADATA) and samples[5].id == "00001-1"
    assert samples[5].inputs == {"prompt": "a photo of two dogs"} and samples[5].meta["tag"] == "counting"
    assert len(make_suite("geneval", tmp_path / "geneval", tmp_path, images="1").samples()) == len(GENEVAL_METADATA)
    assert suite.approximate and "Mask2Former" in suite.approximate_reason


def test_judged_suites_read_their_layouts(tmp_path):
    gedit = make_suite("gedit", write_gedit(tmp_path / "gedit"), tmp_path).samples()
    assert [s.id for s in gedit] == ["k1", "k2"]  # English by default (GEdit-Bench-EN)
    assert Image.open(gedit[0].inputs["image"]).getpixel((12, 12)) == (0, 200, 0)  # input_image_raw
    assert gedit[0].meta["intersection"] is True
    assert len(make_suite("gedit", tmp_path / "gedit", tmp_path, language="all").samples()) == 3
    imgedit = make_suite("imgedit", write_imgedit(tmp_path / "imgedit"), tmp_path).samples()
    assert [s.id for s in imgedit] == ["1", "2"] and imgedit[1].meta["edit_type"] == "remove"
    assert Path(imgedit[0].inputs["image"]).is_file()
    kris = make_suite("kris", write_kris(tmp_path / "kris"), tmp_path).samples()
    assert sorted(s.id for s in kris) == ["chemistry/1", "color_change/1"]
    assert kris[0].reference["explanation"] == "the ball turns blue" and Path(kris[0].inputs["image"]).is_file()
    rise = make_suite("rise", write_rise(tmp_path / "rise"), tmp_path).samples()
    assert [s.id for s in rise] == ["temporal_1", "logical_1"] and rise[1].reference["reference"].startswith("a path")


def test_uniedit_bench_reads_synth_shards(tmp_path):
    root = write_bench(tmp_path / "bench")
    samples = make_suite("uniedit-bench", root, tmp_path).samples()
    assert [s.id for s in samples] == ["w-recolor", "w-noop", "g-1"]  # test/ only
    assert len(make_suite("uniedit-bench", root / "test", tmp_path).samples()) == 3  # a split folder works too
    shutil.rmtree(root / "test")
    with pytest.raises(UsageError, match="found train/"):
        make_suite("uniedit-bench", root, tmp_path).samples()
    first = samples[0]
    assert first.inputs["instruction"].startswith("If the square is red")
    assert first.reference["question"] == "What color is the square?" and first.reference["answer"] == "green"
    assert first.meta["source"] == "shapes" and Path(first.reference["target"]).is_file()


@pytest.mark.parametrize("name", ["gqa", "vqav2", "mme", "geneval", "gedit", "imgedit", "kris", "rise", "uniedit-bench"])
def test_missing_or_empty_data_says_what_to_place_where(tmp_path, name):
    suite = make_suite(name, None, tmp_path)
    with pytest.raises(UsageError) as missing:
        suite.samples()
    assert "--data" in str(missing.value) and suite.data_help in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as empty:
        make_suite(name, tmp_path / "empty", tmp_path).samples()
    assert suite.data_help in str(empty.value)


def test_corrupt_parquet_is_a_usage_error(tmp_path):
    shard = tmp_path / "gqa" / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"PAR1 not really")
    (tmp_path / "gqa" / "testdev_balanced_images").mkdir()
    write_parquet(tmp_path / "gqa" / "testdev_balanced_images" / "x.parquet", {"id": ["a"]})
    with pytest.raises(UsageError, match="not a readable parquet"):
        make_suite("gqa", tmp_path / "gqa", tmp_path).samples()


# --- judge replies ------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, expected", [
    ('{"editing_success": 7, "overediting": 9}', (7, 9)),
    ('Sure!\n```json\n{"editing_success": "8", "overediting": 6.5}\n```', (8, 6.5)),
    ("{'Editing Success': 3, 'overediting': 10,}", (3, 10)),
    ('{"score": [4, 5], "reasoning": "ok"}', (4, 5)),
    ("editing_success: 7/10\noverediting - 2", (7, 2)),
    ("7, 9", (7, 9)),
    ("Scores: 6 and 4", (6, 4)),
])
def test_parse_scores_reads_what_judges_write(reply, expected):
    from uniedit_cli.eval.suites.judged import parse_scores

    got = parse_scores(reply, ("editing_success", "overediting"), (0, 10))
    assert got == {"editing_success": expected[0], "overediting": expected[1]}


@pytest.mark.parametrize("reply", ["", None, "I cannot judge this image.", '{"editing_success": 70, "overediting": 9}',
                                   "The image shows 3 cats and 2 dogs in 2020.", '{"editing_success": 7}', "7"])
def test_parse_scores_refuses_to_guess(reply):
    from uniedit_cli.eval.suites.judged import parse_scores

    assert parse_scores(reply, ("editing_success", "overediting"), (0, 10)) is None


class ScriptedJudge:
    """An 'adapter' whose ask answers from a script keyed by a word of the prompt."""

    def __init__(self, script: dict[str, str]):
        self.script = script
        self.calls = 0

    def ask(self, images, questions, **_):
        self.calls += 1
        assert all(hasattr(img, "size") for img in images)
        return [next((reply for key, reply in self.script.items() if key in q), "no idea") for q in questions]


def test_gedit_viescore_formula_and_per_sample_errors(tmp_path):
    suite = make_suite("gedit", write_gedit(tmp_path / "gedit"), tmp_path, language="all")
    samples = suite.samples()
    out_ok = tmp_path / "ok.png"
    picture((0, 0, 255)).save(out_ok)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG broken")
    outputs = {"k1": str(out_ok), "k2": str(corrupt)}  # k3 has no output
    judge = ScriptedJudge({"editing_success": '{"editing_success": 8, "overediting": 6}',
                           "naturalness": '{"naturalness": 9, "artifacts": 4}'})
    result = suite.score(samples, outputs, ["SC", "PQ", "O"], judge=judge)
    k1 = result.per_sample["k1"]
    assert (k1["SC"], k1["PQ"]) == (6, 4) and k1["O"] == pytest.approx(math.sqrt(24))
    assert "corrupt" in result.per_sample["k2"]["error"] and result.per_sample["k3"]["error"] == "no output"
    assert result.n == 1 and result.metrics["O"] == pytest.approx(math.sqrt(24))
    # the judge saw the source and the edit side by side for SC, the edit alone for PQ
    queries = suite.judge_queries(samples, outputs, ["SC"])
    assert [q.images for q in queries][0] == [samples[0].inputs["image"], str(out_ok)]
    assert "make the ball blue" in queries[0].prompt


def test_rise_is_accurate_only_when_every_score_is_full_and_kris_maps_to_100(tmp_path):
    rise = make_suite("rise", write_rise(tmp_path / "rise"), tmp_path)
    samples = rise.samples()
    out = tmp_path / "o.png"
    picture().save(out)
    outputs = {s.id: str(out) for s in samples}
    judge = ScriptedJudge({"ten years": '{"reasoning": 5, "consistency": 5, "plausibility": 5}',
                           "maze": '{"reasoning": 5, "consistency": 4, "plausibility": 5}'})
    result = rise.score(samples, outputs, ["accuracy", "reasoning"], judge=judge)
    assert result.per_sample["temporal_1"]["accuracy"] == 1.0 and result.per_sample["logical_1"]["accuracy"] == 0.0
    assert result.metrics == {"accuracy": 50.0, "reasoning": 5.0}
    assert result.breakdown["accuracy by category"] == {"logical": 0.0, "temporal": 100.0}

    kris = make_suite("kris", write_kris(tmp_path / "kris"), tmp_path)
    ks = kris.samples()
    reply = '{"visual_consistency": 5, "visual_quality": 3, "instruction_following": 1, "knowledge_plausibility": 3}'
    result = kris.score(ks, {s.id: str(out) for s in ks}, list(kris.default_metrics), judge=ScriptedJudge({"": reply}))
    assert result.metrics["overall"] == pytest.approx(50.0) and result.metrics["VC"] == 5.0


# --- GenEval's rule on given detections -----------------------------------------------------

def test_geneval_relative_position():
    from uniedit_cli.eval.suites.geneval import relative_position

    assert relative_position((0, 0, 10, 10), (50, 0, 60, 10)) == {"left of"}
    assert relative_position((50, 40, 60, 50), (0, 0, 10, 10)) == {"right of", "below"}
    assert relative_position((0, 0, 10, 10), (1, 1, 11, 11)) == set()  # overlapping: within the dead zone


def test_geneval_evaluate_detections():
    from uniedit_cli.eval.suites.geneval import evaluate_detections, keep_detections, summarize

    red = lambda name, objs: ["red"] * len(objs)  # noqa: E731
    meta_count = GENEVAL_METADATA[1]
    two_dogs = keep_detections([("dog", (0, 0, 5, 5), 0.95), ("dog", (9, 9, 15, 15), 0.92), ("cat", (1, 1, 2, 2), 0.5)],
                               "counting")
    assert evaluate_detections(two_dogs, meta_count, red)[0] is True
    # counting uses the 0.9 threshold: a 0.8 dog does not count
    one_dog = keep_detections([("dog", (0, 0, 5, 5), 0.95), ("dog", (9, 9, 15, 15), 0.8)], "counting")
    ok, reason = evaluate_detections(one_dog, meta_count, red)
    assert not ok and "expected dog>=2, found 1" in reason
    three = keep_detections([("dog", (i, i, i + 5, i + 5), 0.95) for i in range(3)], "counting")
    assert evaluate_detections(three, meta_count, red)[0] is False  # exclude: dog < 3
    car = keep_detections([("car", (0, 0, 9, 9), 0.6)], "colors")
    assert evaluate_detections(car, GENEVAL_METADATA[2], red)[0] is True
    ok, reason = evaluate_detections(car, GENEVAL_METADATA[2], lambda n, o: ["blue"] * len(o))
    assert not ok and "expected red car>=1" in reason
    left = keep_detections([("cup", (60, 0, 70, 10), 0.9), ("bowl", (0, 0, 10, 10), 0.9)], "position")
    right = keep_detections([("cup", (0, 0, 10, 10), 0.9), ("bowl", (60, 0, 70, 10), 0.9)], "position")
    assert evaluate_detections(left, GENEVAL_METADATA[3], red)[0] is True
    assert evaluate_detections(right, GENEVAL_METADATA[3], red)[0] is False
    scores = summarize([("counting", True), ("counting", False), ("colors", True)])
    assert scores == {"overall": 0.75, "colors": 1.0, "counting": 0.5}


# --- uniedit-bench ground truth ------------------------------------------------------------

def test_uniedit_bench_exact_ground_truth(tmp_path):
    suite = make_suite("uniedit-bench", write_bench(tmp_path / "bench"), tmp_path)
    samples = {s.id: s for s in suite.samples()}
    target, source = samples["w-recolor"].reference["target"], samples["w-recolor"].inputs["image"]
    metrics = ["l1", "property_acc", "edit_region_l1"]
    perfect = suite.score(list(samples.values()), {"w-recolor": target, "w-noop": source, "g-1": source}, metrics)
    assert perfect.per_sample["w-recolor"] == pytest.approx({"l1": 0.0, "edit_region_l1": 0.0, "edit_progress": 1.0,
                                                             "property_acc": 1.0})
    assert perfect.per_sample["w-noop"]["property_acc"] == 1.0
    assert perfect.metrics["property_acc"] == 100.0  # reported in percent
    assert "l1" not in perfect.per_sample["g-1"]  # an editor-made target is not ground truth
    unchanged = suite.score(list(samples.values()), {"w-recolor": source, "w-noop": target}, metrics)
    row = unchanged.per_sample["w-recolor"]
    assert row["property_acc"] == 0.0 and row["edit_progress"] == pytest.approx(-1.0) and row["l1"] > 0
    assert unchanged.per_sample["w-noop"]["property_acc"] == 0.0  # it changed what had to stay
    assert unchanged.per_sample["g-1"]["error"] == "no output"
    # a smaller output is resized to the target's size first (MagicBrush's convention)
    small = tmp_path / "small.png"
    Image.open(target).resize((20, 16)).save(small)
    assert suite.score([samples["w-recolor"]], {"w-recolor": str(small)}, metrics).per_sample["w-recolor"]["property_acc"] == 1.0


def test_sample_ids_are_strings_and_unique_per_suite(tmp_path):
    samples = make_suite("mme", write_mme_hub(tmp_path / "mme"), tmp_path).samples()
    assert all(isinstance(s, Sample) and isinstance(s.id, str) for s in samples)
    assert len({s.id for s in samples}) == len(samples)


def test_without_data_a_hub_dataset_is_read_from_the_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    repo = cache / "datasets--lmms-lab--GQA"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    write_gqa_hub(repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    samples = make_suite("gqa", None, tmp_path).samples()
    assert [s.id for s in samples] == [r[0] for r in GQA_ROWS]


def test_uniedit_bench_judge_accuracy_uses_synths_answer_matching(tmp_path):
    suite = make_suite("uniedit-bench", write_bench(tmp_path / "bench"), tmp_path)
    samples = suite.samples()
    out = tmp_path / "o.png"
    picture().save(out)
    judge = ScriptedJudge({"What color is the square?": "The square is Green.", "written": "a cup"})
    result = suite.score(samples, {s.id: str(out) for s in samples}, ["judge_acc"], judge=judge)
    # "green" expected: a sentence with the word counts; "red" expected: the same reply does not
    assert [result.per_sample[i]["judge_acc"] for i in ("w-recolor", "w-noop", "g-1")] == [1.0, 0.0, 1.0]
    assert result.metrics["judge_acc"] == pytest.approx(200.0 / 3)
    assert result.breakdown["judge_acc by task_category"] == {"color": 50.0, "ocr": 100.0}
