"""The suite registry: name -> "module:Class", imported only when used (keeps --help fast)."""

from __future__ import annotations

import importlib

SUITES: dict[str, str] = {
    "magicbrush": "uniedit_cli.eval.suites.magicbrush:MagicBrushSuite",
    "gqa": "uniedit_cli.eval.suites.vqa:GQASuite",
    "vqav2": "uniedit_cli.eval.suites.vqa:VQAv2Suite",
    "mme": "uniedit_cli.eval.suites.mme:MMESuite",
    "geneval": "uniedit_cli.eval.suites.geneval:GenEvalSuite",
    "gedit": "uniedit_cli.eval.suites.judged:GEditSuite",
    "imgedit": "uniedit_cli.eval.suites.judged:ImgEditSuite",
    "kris": "uniedit_cli.eval.suites.judged:KrisSuite",
    "rise": "uniedit_cli.eval.suites.judged:RiseSuite",
    "uniedit-bench": "uniedit_cli.eval.suites.uniedit_bench:UniEditBenchSuite",
}


def suite_class(name: str):
    module_name, _, class_name = SUITES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
