"""``uniedit eval`` end to end through the CLI: tiny registry models generate (resumably, through
the batch runner), a tiny judge answers, ``--predictions`` scores outputs made elsewhere, and
every run writes results.json, samples.jsonl and report.html; ``--compare`` reads them back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from test_eval_suites import (GENEVAL_METADATA, write_bench, write_gedit, write_geneval, write_gqa_hub,
                              write_vqav2_hub)

CPU = ["--device", "cpu"]


@pytest.fixture
def eval_cli(cli, tmp_path, monkeypatch):
    """The CLI with ``eval`` registered (cli.py registers it; this keeps the tests independent of
    that one line), run from the test's own folder so a default --out never lands in the repo."""
    from uniedit_cli.cli import app
    from uniedit_cli.commands import eval as eval_command

    monkeypatch.chdir(tmp_path)

    if not any(c.name == "eval" for c in app.registered_commands):
        app.command(name="eval", help=eval_command.HELP, epilog=eval_command.EPILOG)(eval_command.eval)
    return cli


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _samples(out: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}


def _journal_lines(folder: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (folder / ".parts").glob("rank-*.jsonl"))


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _clean_error(result, *needles):
    assert result.exit_code == 2, result
    assert "Traceback" not in result.output and "error:" in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_help_shows_examples(eval_cli):
    result = eval_cli(["eval", "--help"])
    assert result.exit_code == 0 and "Examples" in result.stdout and "uniedit eval --suite" in result.stdout
    assert "--compare" in result.stdout and "--predictions" in result.stdout


def test_gqa_with_a_tiny_vlm_writes_everything_and_resumes(eval_cli, tiny_model, tmp_path):
    data = write_gqa_hub(tmp_path / "gqa")
    out = tmp_path / "results"
    args = ["eval", "--suite", "gqa", "--model", tiny_model("qwen2.5-vl-tiny"), "--data", data, "--out", out,
            "--max-new-tokens", "3", "--batch-size", "2", *CPU]
    first = eval_cli(args)
    assert first.exit_code == 0, first
    results = _results(out)
    assert results["suite"] == "gqa" and results["n"] == 4 and results["convention"] == "gqa-testdev-balanced-exact-match"
    assert 0.0 <= results["metrics"]["accuracy"] <= 100.0 and results["approximate"] is False
    assert results["config"]["generation"] == {"max_new_tokens": 3} and "torch" in results["versions"]
    assert set(results["breakdown"]) == {"structural", "semantic"}
    rows = _samples(out)
    assert list(rows) == ["201307251", "201307252", "201640614", "201640615"]
    assert all(isinstance(r["answer"], str) and r["accuracy"] in (0.0, 1.0) for r in rows.values())
    assert rows["201307251"]["reference"]["answer"] == "red"
    report = (out / "report.html").read_text()
    assert "201640615" in report and "<img" in report and "accuracy" in report
    assert "accuracy" in first.stdout  # the headline table
    journal = _journal_lines(out / "outputs")
    # a rerun resumes: nothing is asked again, the numbers are the same
    again = eval_cli(args)
    assert again.exit_code == 0, again
    assert "4 already done" in again.stderr and _journal_lines(out / "outputs") == journal
    assert _results(out)["metrics"] == results["metrics"]
    # the same folder with another model's settings is refused rather than mixed
    other = eval_cli([*args[:-4], "--max-new-tokens", "5", *CPU])
    _clean_error(other, "another options")


def test_vqav2_predictions_are_scored_without_a_model(eval_cli, tmp_path):
    data = write_vqav2_hub(tmp_path / "vqa")
    predictions = _write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 1001, "answer": "Two"},  # number words normalise to digits: 8 of 10 humans said 2
        {"id": "1002", "answer": "yes."},
        {"id": "999", "answer": "nope"},  # not a sample id: ignored, reported
        "{not json",
    ])
    out = tmp_path / "vqa-out"
    result = eval_cli(["eval", "--suite", "vqav2", "--predictions", predictions, "--data", data, "--out", out])
    assert result.exit_code == 0, result
    assert "not samples of this suite" in result.stderr and "1 of 3 samples have no prediction" in result.stderr
    results = _results(out)
    assert results["metrics"]["accuracy"] == pytest.approx(200.0 / 3)
    assert results["model"] is None and results["predictions"] == str(predictions)
    assert results["breakdown"]["answer_type"] == {"number": 100.0, "other": 0.0, "yes/no": 100.0}
    rows = _samples(out)
    assert rows["1003"]["error"] == "no answer" and rows["1003"]["accuracy"] == 0.0
    assert rows["1001"]["answer"] == "Two" and rows["1001"]["accuracy"] == 1.0
    assert not (out / "outputs").exists()  # no model ran


def test_image_predictions_with_missing_and_corrupt_files_are_reported_per_sample(eval_cli, tmp_path):
    data = write_bench(tmp_path / "bench")
    good = tmp_path / "preds" / "good.png"
    good.parent.mkdir()
    corrupt = tmp_path / "preds" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "bench-out"
    # a perfect edit: the true target, copied out of the run's extracted inputs
    first = eval_cli(["eval", "--suite", "uniedit-bench", "--predictions",
                      _write_jsonl(tmp_path / "p0.jsonl", [{"id": "w-recolor", "image": "missing.png"}]),
                      "--data", data, "--out", out, "--metrics", "l1,property_acc"])
    assert first.exit_code == 0, first
    shutil.copy(out / "inputs" / "targets" / "w-recolor.png", good)
    predictions = _write_jsonl(tmp_path / "preds" / "p.jsonl", [
        {"id": "w-recolor", "image": "good.png"},  # relative to the predictions file
        {"id": "w-noop", "image": str(corrupt)},
        {"id": "g-1", "image": "nowhere.png"},
    ])
    result = eval_cli(["eval", "--suite", "uniedit-bench", "--predictions", predictions, "--data", data, "--out", out,
                       "--metrics", "l1,property_acc"])
    assert result.exit_code == 0, result
    results = _results(out)
    assert results["metrics"] == {"l1": 0.0, "property_acc": 100.0}
    assert results["n"] == 1 and results["n_errors"] == 2
    rows = _samples(out)
    assert rows["w-recolor"]["l1"] == 0.0 and rows["w-recolor"]["image"].endswith("good.png")
    assert "corrupt" in rows["w-noop"]["error"] and "no such file" in rows["g-1"]["error"]
    report = (out / "report.html").read_text()
    assert report.index("w-noop") < report.index("w-recolor")  # worst (errors) first
    # default metrics without --judge: the judged one is left out, and the run says how to add it
    default = eval_cli(["eval", "--suite", "uniedit-bench", "--predictions", predictions, "--data", data, "--out", out])
    assert default.exit_code == 0 and "judge_acc needs a judge and is left out" in default.stderr
    assert set(_results(out)["metrics"]) == {"l1", "property_acc"}


def test_edit_suite_with_tiny_editor_and_tiny_judge_end_to_end(eval_cli, tiny_model, tmp_path):
    data = write_bench(tmp_path / "bench")
    out = tmp_path / "ub"
    args = ["eval", "--suite", "uniedit-bench", "--model", tiny_model("ip2p-tiny"), "--judge", tiny_model("qwen2.5-vl-tiny"),
            "--data", data, "--out", out, "--steps", "1", "--size", "32", "--metrics", "all", *CPU]
    result = eval_cli(args)
    assert result.exit_code == 0, result
    results = _results(out)
    assert set(results["metrics"]) >= {"judge_acc", "l1", "property_acc"}
    assert results["model"] == str(tiny_model("ip2p-tiny"))  # a folder is labelled as passed, not by its base model
    assert results["judge"]["model"] and "not the benchmark's GPT-4" in results["judge"]["prompts"]
    rows = _samples(out)
    assert {r["id"] for r in rows.values()} == {"w-recolor", "w-noop", "g-1"}
    for row in rows.values():
        assert Image.open(out / row["image"]).size == (32, 24)  # 40x32 source, long side 32
        assert isinstance(row["judge_answer"], str) and row["judge_acc"] in (0.0, 1.0)
    assert "l1" in rows["w-recolor"] and "l1" not in rows["g-1"]
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 9  # source, target and output of each row
    generated, judged = _journal_lines(out / "outputs"), _journal_lines(out / "judge")
    assert (generated, judged) == (3, 3)
    again = eval_cli(args)
    assert again.exit_code == 0, again
    assert (_journal_lines(out / "outputs"), _journal_lines(out / "judge")) == (3, 3)
    assert _results(out)["metrics"] == results["metrics"]


def test_judged_suite_with_unusable_judge_replies_still_reports(eval_cli, tiny_model, tmp_path):
    data = write_gedit(tmp_path / "gedit")
    edit = tmp_path / "edit.png"
    Image.new("RGB", (32, 32), (0, 0, 200)).save(edit)
    predictions = _write_jsonl(tmp_path / "p.jsonl", [{"id": "k1", "image": str(edit)}, {"id": "k2", "image": str(edit)}])
    out = tmp_path / "gedit-out"
    result = eval_cli(["eval", "--suite", "gedit", "--predictions", predictions, "--data", data, "--out", out,
                       "--judge", tiny_model("qwen2.5-vl-tiny"), *CPU])
    assert result.exit_code == 0, result
    results = _results(out)
    assert results["approximate"] and "GPT-4" in results["approximate_reason"]
    rows = _samples(out)
    for row in rows.values():  # random weights: the judge's words are noise, and say so per sample
        assert "judge reply" in row["error"] or "no reply" in row["error"]
        assert isinstance(row["judge_semantics"], str)
    assert results["n"] == 0 and results["n_errors"] == 2 and results["metrics"] == {}


def _tiny_detector(folder: Path) -> Path:
    """A random-weight DETR whose class bias makes every query a confident 'cat'."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    names = ["N/A", "person", "cat", "dog", "car", "cup", "bowl", "mouse"]
    config = DetrConfig(
        backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]).to_dict(),
        use_timm_backbone=False, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=6,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    model = DetrForObjectDetection(config)
    with torch.no_grad():
        model.class_labels_classifier.weight.zero_()
        model.class_labels_classifier.bias.fill_(-10.0)
        model.class_labels_classifier.bias[names.index("cat")] = 10.0
    model.save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(folder)
    return folder


def tiny_open_clip(folder: Path) -> Path:
    """An open_clip ``local-dir:`` folder: the real CLIP architecture at toy size, random weights."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    config = {"model_cfg": {"embed_dim": 16,
                            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.CLIP(**config["model_cfg"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def test_geneval_color_classifier_loads_open_clip_and_classifies_crops(tmp_path):
    import torch

    from uniedit_cli.eval.suites.geneval import COLORS, ColorClassifier

    colors = ColorClassifier(f"local-dir:{tiny_open_clip(tmp_path / 'clip')}", torch.device("cpu"))
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    objects = [((0, 0, 30, 30), 0.9), ((20, 10, 60, 40), 0.8)]
    first = colors(image, "car", objects)
    assert len(first) == 2 and set(first) <= set(COLORS)
    assert colors(image, "car", objects) == first and list(colors._classifiers) == ["car"]


def test_geneval_predictions_in_its_own_folder_layout_with_a_tiny_detector(eval_cli, tmp_path):
    data = write_geneval(tmp_path / "geneval")
    images = tmp_path / "images"
    for index in range(len(GENEVAL_METADATA)):
        (images / f"{index:05d}" / "samples").mkdir(parents=True)
        for k in range(4):
            Image.new("RGB", (48, 48), (120, 60 * k, 30)).save(images / f"{index:05d}" / "samples" / f"{k:04d}.png")
    (images / "00003" / "samples" / "0003.png").unlink()  # one image missing: counted incorrect
    out = tmp_path / "gen-out"
    result = eval_cli(["eval", "--suite", "geneval", "--predictions", images, "--data", data, "--out", out,
                       "--suite-option", f"detector={_tiny_detector(tmp_path / 'detr')}",
                       "--suite-option", f"clip=local-dir:{tiny_open_clip(tmp_path / 'clip')}", *CPU])
    assert result.exit_code == 0, result
    results = _results(out)
    # every image shows 'cats' only: single_object is right, the others are not
    assert results["metrics"] == {"overall": 0.25, "single_object": 1.0, "counting": 0.0, "colors": 0.0, "position": 0.0}
    assert results["approximate"] and "Mask2Former" in results["approximate_reason"]
    rows = _samples(out)
    assert rows["00000-2"]["correct"] is True and rows["00000-2"]["detected"] == {"cat": 6}
    assert "expected dog>=2" in rows["00001-0"]["reason"] and rows["00003-3"]["error"]


def test_metric_weights_missing_offline_say_what_to_place_where(eval_cli, tmp_path):
    data = write_geneval(tmp_path / "geneval")
    predictions = _write_jsonl(tmp_path / "p.jsonl", [{"id": "00000-0", "image": "x.png"}])
    result = eval_cli(["eval", "--suite", "geneval", "--predictions", predictions, "--data", data, "--out", tmp_path / "o"])
    _clean_error(result, "facebook/detr-resnet-50", "hf download", "--suite-option detector=")


def test_usage_errors_exit_2_without_traceback(eval_cli, tmp_path, tiny_model):
    gqa = write_gqa_hub(tmp_path / "gqa")
    # no --data: the hub dataset is not cached and the tests are offline
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--model", "qwen2.5-vl-tiny", "--out", tmp_path / "o"]),
                 "no --data given", "lmms-lab/GQA", "hf download")
    _clean_error(eval_cli(["eval", "--suite", "rise", "--model", "ip2p-tiny", "--out", tmp_path / "o"]), "needs --data")
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--model", "qwen2.5-vl-tiny", "--data", tmp_path / "nope"]),
                 "no such file or folder", "lmms-lab/GQA")
    _clean_error(eval_cli(["eval", "--suite", "gqaa", "--model", "qwen2.5-vl-tiny"]), "unknown suite", "gqa")
    _clean_error(eval_cli(["eval", "--model", "qwen2.5-vl-tiny"]), "missing --suite")
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--data", gqa]), "exactly one of --model")
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--data", gqa, "--model", "ip2p-tiny"]), "cannot ask")
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--data", gqa, "--model", "qwen2.5-vl-tiny", "--metrics", "cider"]),
                 "not computed by suite", "accuracy")
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--data", gqa, "--model", "qwen2.5-vl-tiny", "--suite-option", "x=1"]),
                 "not an option of suite")
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--data", gqa, "--model", "qwen2.5-vl-tiny", "--suite-option", "x"]),
                 "KEY=VALUE")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--data", gqa, "--model", "qwen2.5-vl-tiny", "--out", a_file]), "is a file")
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--data", gqa, "--predictions", tmp_path / "none.jsonl",
                           "--out", tmp_path / "o4"]), "no such file")
    assert not (tmp_path / "o4").exists()
    gedit = write_gedit(tmp_path / "gedit")
    edit = _write_jsonl(tmp_path / "edit.jsonl", [{"id": "k1", "image": "x.png"}])
    _clean_error(eval_cli(["eval", "--suite", "gedit", "--data", gedit, "--predictions", edit, "--out", tmp_path / "o3"]),
                 "Qwen/Qwen2.5-VL-7B-Instruct", "hf download")  # the default judge is not on this machine
    _clean_error(eval_cli(["eval", "--suite", "gedit", "--data", gedit, "--predictions", edit, "--judge", "ip2p-tiny"]),
                 "cannot ask")
    _clean_error(eval_cli(["eval", "--suite", "gedit", "--data", gedit, "--predictions", edit, "--clip-weights",
                           tmp_path / "missing.pt"]), "--clip-weights", "no such file or folder")
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{"id": "x", "answer": "y"}])
    _clean_error(eval_cli(["eval", "--suite", "gqa", "--data", gqa, "--predictions", empty, "--out", tmp_path / "o2"]),
                 "no usable rows", "not sample ids")


def test_compare_prints_a_table_of_runs(eval_cli, tmp_path):
    data = write_vqav2_hub(tmp_path / "vqa")
    runs = []
    for name, answer in (("good", "yes"), ("bad", "no")):
        predictions = _write_jsonl(tmp_path / f"{name}.jsonl", [{"id": q, "answer": answer} for q in ("1001", "1002", "1003")])
        out = tmp_path / name
        assert eval_cli(["eval", "--suite", "vqav2", "--predictions", predictions, "--data", data, "--out", out]).exit_code == 0
        runs.append(out)
    result = eval_cli(["eval", "--compare", *runs])
    assert result.exit_code == 0, result
    assert "accuracy" in result.stdout and "33.3333" in result.stdout and "0.0000" in result.stdout
    assert str(runs[0].name) in result.stdout and "vqav2" in result.stdout
    _clean_error(eval_cli(["eval", "--compare", runs[0], tmp_path / "missing"]), "has no results.json")
    _clean_error(eval_cli(["eval", runs[0]]), "--compare")


def _write_magicbrush_hub(root: Path) -> Path:
    """osunlp/MagicBrush's hub layout: one row per turn; s1 has two turns, s2 one."""
    from test_eval_suites import IMAGE_STRUCT, encoded, picture, write_parquet

    rows = [("s1", 1, (200, 40, 40), (40, 200, 40)), ("s1", 2, (40, 200, 40), (40, 40, 200)), ("s2", 1, (90, 90, 90), (250, 250, 0))]
    write_parquet(root / "data" / "dev-00000-of-00001.parquet", {
        "img_id": [r[0] for r in rows], "turn_index": [r[1] for r in rows],
        "source_img": [encoded(picture(square=r[2])) for r in rows], "mask_img": [None for _ in rows],
        "instruction": [f"make the square color {i}" for i in range(len(rows))],
        "target_img": [encoded(picture(square=r[3])) for r in rows],
    }, {"source_img": IMAGE_STRUCT, "mask_img": IMAGE_STRUCT, "target_img": IMAGE_STRUCT})
    return root


def test_multi_turn_editing_chains_on_the_models_own_outputs(eval_cli, tiny_model, tmp_path):
    data = _write_magicbrush_hub(tmp_path / "mb")
    out = tmp_path / "mb-multi"
    result = eval_cli(["eval", "--suite", "magicbrush", "--model", tiny_model("ip2p-tiny"), "--data", data, "--out", out,
                       "--suite-option", "mode=multi", "--metrics", "l1,l2", "--steps", "1", "--size", "32", *CPU])
    assert result.exit_code == 0, result
    journal = {r["id"]: r for r in map(json.loads, (out / "outputs" / "results.jsonl").read_text().splitlines())}
    assert set(journal) == {"s1-1", "s1-2", "s2-1"}
    # turn 2 of s1 edited the model's own turn-1 output, not the ground-truth image
    assert journal["s1-2"]["image"] == str(out / "outputs" / "s1-1.png")
    assert journal["s1-1"]["image"] != journal["s1-2"]["image"]
    results = _results(out)
    assert results["n"] == 2 and set(results["metrics"]) == {"l1", "l2"}  # final turns only
    assert results["metric_conventions"] == {"l1": "magicbrush-official", "l2": "magicbrush-official"}
    assert results["suite_config"]["mode"] == "multi"
    rows = _samples(out)
    assert "l1" in rows["s1-2"] and "l1" not in rows["s1-1"]


def test_image_metric_weights_missing_offline_fail_before_generation(eval_cli, tmp_path):
    data = _write_magicbrush_hub(tmp_path / "mb")
    out = tmp_path / "mb-clip"
    result = eval_cli(["eval", "--suite", "magicbrush", "--model", "ip2p-tiny", "--data", data, "--out", out,
                       "--metrics", "l1,clip-i", *CPU])
    _clean_error(result, "CLIP", "hf download", "--clip-weights")
    assert not (out / "outputs").exists()  # nothing was generated first


def test_list_shows_every_suite_and_what_data_it_needs(eval_cli):
    result = eval_cli(["eval", "--list"])
    assert result.exit_code == 0, result
    for name in ("magicbrush", "gqa", "vqav2", "mme", "geneval", "gedit", "imgedit", "kris", "rise", "uniedit-bench"):
        assert name in result.stdout
    assert "lmms-lab/GQA" in result.stdout


@pytest.mark.slow
def test_two_cpu_ranks_split_the_work_and_give_the_same_numbers(eval_cli, tiny_model, tmp_path):
    data = write_bench(tmp_path / "bench")
    common = ["eval", "--suite", "uniedit-bench", "--model", tiny_model("ip2p-tiny"), "--data", data,
              "--metrics", "l1,property_acc", "--steps", "1", "--size", "32", *CPU]
    one = eval_cli([*common, "--out", tmp_path / "one"])
    two = eval_cli([*common, "--out", tmp_path / "two", "--num-processes", "2"])
    assert one.exit_code == 0 and two.exit_code == 0, two
    assert sorted(p.name for p in (tmp_path / "two" / "outputs" / ".parts").glob("rank-*.jsonl")) == ["rank-0.jsonl", "rank-1.jsonl"]
    # each row has its own seed, so the numbers do not depend on the number of ranks
    assert _results(tmp_path / "two")["metrics"] == _results(tmp_path / "one")["metrics"]


def test_generation_suite_with_a_tiny_generator(eval_cli, tiny_model, tmp_path):
    data = write_geneval(tmp_path / "geneval")
    out = tmp_path / "gen"
    result = eval_cli(["eval", "--suite", "geneval", "--model", tiny_model("janus-tiny"), "--data", data, "--out", out,
                       "--limit", "2", "--suite-option", f"detector={_tiny_detector(tmp_path / 'detr')}", *CPU])
    assert result.exit_code == 0, result
    rows = _samples(out)
    assert list(rows) == ["00000-0", "00000-1"]  # --limit: the first prompt's first two images
    sidecars = [json.loads((out / "outputs" / f"{i}.json").read_text()) for i in rows]
    assert [s["seed"] for s in sidecars] == [0, 1] and all(s["prompt"] == "a photo of a cat" for s in sidecars)
    assert _results(out)["metrics"] == {"overall": 1.0, "single_object": 1.0}  # the detector sees cats everywhere


def test_mme_predictions_score_acc_plus_and_sort_the_report_worst_first(eval_cli, tmp_path):
    from test_eval_suites import MME_ROWS, write_mme_hub

    data = write_mme_hub(tmp_path / "mme")
    answers = ["Yes", "No", "Yes", "yes, there is", "No", "No"]  # "yes, there is" reads as yes (MME): wrong
    seen: dict[str, int] = {}
    rows = []
    for (question_id, *_), answer in zip(MME_ROWS, answers):
        k = seen.get(question_id, 0)
        seen[question_id] = k + 1
        rows.append({"id": f"{question_id}:{k}", "answer": answer})
    out = tmp_path / "mme-out"
    result = eval_cli(["eval", "--suite", "mme", "--predictions", _write_jsonl(tmp_path / "p.jsonl", rows),
                       "--data", data, "--out", out])
    assert result.exit_code == 0, result
    results = _results(out)
    # existence: 3 of 4 right (acc 75) and 1 of 2 images fully right (acc+ 50); code_reasoning: 50 + 0
    assert results["breakdown"]["score"] == {"existence": 125.0, "code_reasoning": 50.0}
    assert results["metrics"] == {"perception": 125.0, "cognition": 50.0, "total": 175.0}
    report = (out / "report.html").read_text()
    wrong = [r["id"] for r in rows if not _samples(out)[r["id"]]["correct"]]
    assert len(wrong) == 2 and all(report.index(w) < report.index("existence/000000006040.jpg:0") for w in wrong)
