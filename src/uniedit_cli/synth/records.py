"""The types every synth step passes along, and the one place that knows the output columns.

Programs use GQA's semantic format everywhere (REFERENCE.md, "VQA sources"): a list of
``{"operation": str, "argument": str, "dependencies": [int]}``; CLEVR programs are converted
to it by their source. Scene graphs use GQA's schema: ``{"width", "height", "objects": {id:
{"name", "x", "y", "w", "h", "attributes": [str], "relations": [{"name", "object"}]}}}``; the
built-in world adds its own keys to objects (``shape``, ``color``, ``size``, ``material``...)
next to the GQA ones.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Task categories (REFERENCE.md, Uni-Edit pipeline step 2) plus relation, material and size.
CATEGORIES = ("color", "shape", "material", "size", "count", "location", "relation", "knowledge", "ocr", "math",
              "caption", "yes_no", "multi_choice", "other")
# Dropped by default, like the released pipeline.
DROPPED_BY_DEFAULT = ("yes_no", "multi_choice", "other")
STYLES = ("conditional", "synthesis", "referring", "nested", "text-answer")


@dataclass
class VQARecord:
    """One VQA sample from any source."""

    source: str  # shapes | gqa | vqav2 | clevr | jsonl
    source_id: str  # the source's question id
    image_id: str
    question: str
    answer: str
    image_path: str | None = None
    image_bytes: bytes | None = None  # hub layouts embed the image
    answers: list[str] | None = None  # VQAv2's ten human answers
    program: list[dict] | None = None  # GQA-style semantic program
    scene_graph: dict | None = None  # GQA-schema scene graph of this image
    annotations: dict | None = None  # GQA's {"question"|"answer"|"fullAnswer": {token or "i:j": objectId}}
    question_type: str | None = None  # the source's own label (GQA types.detailed, VQAv2 answer_type, ...)
    choices: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def load_image(self):
        """The source image as 8-bit RGB (raises InputError for a missing or corrupt image)."""
        from uniedit_cli.errors import InputError
        from uniedit_cli.io import load_image, to_rgb

        if self.image_bytes is not None:
            from PIL import Image

            try:
                img = Image.open(io.BytesIO(self.image_bytes))
                img.load()
            except Exception as exc:  # noqa: BLE001 - any decoder error is a bad record
                raise InputError(f"image of {self.source}:{self.source_id} is corrupt ({exc}).") from None
            return to_rgb(img)
        if self.image_path is None:
            raise InputError(f"record {self.source}:{self.source_id} has no image.")
        return load_image(self.image_path, what=f"image of {self.source}:{self.source_id}")


@dataclass
class EditOp:
    """A resolved edit. The scene world applies it to the scene graph and renders the exact target;
    editor models get ``Instruction.explicit_prompt`` instead.

    ops: recolor | reshape | rematerial | resize | add | remove | move | replace | write_text | none
    ``target`` is an object id of the scene graph (None for add / write_text); ``args`` holds the
    new value(s), e.g. {"color": "green"}, {"object": {...}} for add, {"text": "3", "surface": "sign"}.
    """

    op: str
    target: str | None = None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instruction:
    edit_prompt: str  # what the model under training sees; never gives the answer away
    style: str  # one of STYLES
    category: str
    process_answer: str  # the short core answer
    expected_after_edit: dict[str, str]  # {"question": ..., "answer": ...}: re-asked on the target
    edit: EditOp
    explicit_prompt: str  # the resolved edit in plain words, for an editor model (may name the answer)
    template: str  # template id (part of the row id)
    condition_holds: bool | None = None  # conditionals only


@dataclass
class BadRecord:
    """A source record that cannot be used (missing image, malformed line, unknown operation):
    skipped and counted with its reason, never fatal."""

    source_id: str
    reason: str
    detail: str = ""


@dataclass
class Rejection:
    reason: str  # a short machine-readable reason: answer_leak, unsupported_program, no_target, ...
    detail: str = ""


def row_id(source: str, source_id: str, template: str, seed: int) -> str:
    """Stable id of an output row: a hash of (source, question id, template, seed) (DESIGN.md)."""
    key = json.dumps([source, str(source_id), template, int(seed)])
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


# The output columns, in order (DESIGN.md "Data written by synth"); the first three match
# diffusers' instruct-pix2pix training example.
IMAGE_COLUMNS = ("input_image", "edited_image")
COLUMNS = (
    "input_image", "edit_prompt", "edited_image", "id", "source", "source_id", "image_id", "task_category",
    "original_question", "original_answer", "process_answer", "style", "condition_holds", "expected_after_edit",
    "program", "editor", "seed", "judge_answer", "judge_ok", "clip_dir", "clip_img", "quality",
)


def to_jsonable(obj: Any) -> Any:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj
