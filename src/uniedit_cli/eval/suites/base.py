"""What a benchmark suite is. Each suite module defines one subclass and registers it in
``uniedit_cli.eval.suites.SUITES`` (name -> "module:Class").

A suite knows its data layout, its sample ids (the benchmark's own: VQAv2 question_id, GQA
question id, MagicBrush ``<img_id>-<turn_index>``), what the model must produce for each
sample, and how the benchmark scores it. Numbers must be comparable with published ones: a
suite that departs from the official protocol sets ``approximate = True`` and says why.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class Sample:
    id: str  # the benchmark's own sample id
    task: str  # what the model must do: "edit" | "generate" | "ask"
    inputs: dict[str, Any]  # edit: {"image": path, "instruction"}; generate: {"prompt"}; ask: {"image", "question"}
    reference: dict[str, Any] = field(default_factory=dict)  # target image path, answers, captions, ...
    meta: dict[str, Any] = field(default_factory=dict)  # category, turn, ... (kept in samples.jsonl)


@dataclass
class SuiteResult:
    metrics: dict[str, float]  # the headline numbers, named as the benchmark names them
    per_sample: dict[str, dict[str, Any]]  # sample id -> its own metric values
    n: int
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. per category


class Suite(ABC):
    name: ClassVar[str] = ""
    task: ClassVar[str] = ""  # edit | generate | ask
    output_kind: ClassVar[str] = ""  # "image" or "text": what --predictions rows carry
    convention: ClassVar[str] = ""  # e.g. "magicbrush-official", "emu-edit", "vqav2-official"
    approximate: ClassVar[bool] = False
    approximate_reason: ClassVar[str] = ""
    default_metrics: ClassVar[tuple[str, ...]] = ()
    all_metrics: ClassVar[tuple[str, ...]] = ()
    needs_judge: ClassVar[bool] = False
    data_help: ClassVar[str] = ""  # where to get the data and where to place it (shown when missing)

    def __init__(self, data: Path | None, **options: Any):
        self.data = Path(data) if data is not None else None
        self.options = options

    @abstractmethod
    def samples(self) -> list[Sample]:
        """Every sample, in the benchmark's order. Missing or malformed data raises UsageError
        naming what to place where (``data_help``)."""

    @abstractmethod
    def score(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str], *,
              device: str = "auto", judge=None) -> SuiteResult:
        """Score ``outputs`` (sample id -> answer string, or output image path; a missing id or
        an unreadable image is reported per sample, never fatal)."""
