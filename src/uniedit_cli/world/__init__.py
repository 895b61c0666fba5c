"""The built-in scene world (DESIGN.md, "The built-in scene world").

Seeded procedural scenes of simple objects (shape, colour, size, material-like texture,
position) with scene graphs in GQA's schema, GQA-style questions with semantic programs, a
deterministic renderer, and edits on scene graphs whose renders are exact targets.

Public API (all pure functions; scene graphs are plain dicts treated as immutable)::

    from uniedit_cli import world

    scene = world.generate_scene(seed, index, size=256)      # GQA-schema scene graph
    image = world.render(scene, size=None)                    # PIL RGB, byte-identical per scene
    edited = world.apply_edit(scene, edit)                    # EditOp -> new scene graph (EditError)
    boxes = world.edit_region(scene, edit, edited=None, size=None)   # pixel boxes it may change
    world.edits.placement_cells(scene, {"side": "left"})      # where an add/move could go
    qs = world.generate_questions(scene, rng, n=8, max_depth=2)   # [WorldQuestion]
    world.render_source(record)                               # a shapes VQARecord's picture
    world.render_target(record, edit, size=None)              # its exact target picture
    world.target_scene(record, edit)                          # its edited scene graph
    world.exact_answer(record, instruction)                   # expected question on the exact target

The ``shapes`` VQA source (``uniedit_cli.synth.sources.shapes.ShapesSource``) wraps this. Edit
operations and their args are listed in ``world.edits``; the scene layout, vocabulary and
relation semantics in ``world.scene``; the renderer's guarantees in ``world.render``.
"""

from __future__ import annotations

from uniedit_cli.world.edits import EDIT_OPS, EditError, apply_edit, edit_region
from uniedit_cli.world.questions import WorldQuestion, generate_questions
from uniedit_cli.world.render import render, render_png
from uniedit_cli.world.scene import COLORS, MATERIALS, SHAPES, SIZES, SURFACES, generate_scene, is_world

__all__ = ["COLORS", "EDIT_OPS", "MATERIALS", "SHAPES", "SIZES", "SURFACES", "EditError", "WorldQuestion",
           "apply_edit", "edit_region", "generate_questions", "generate_scene", "is_world", "render", "render_png",
           "exact_answer", "render_source", "render_target", "target_scene"]


def render_source(record, size: int | None = None):
    """The source picture of a ``shapes`` record (rendered from ``record.scene_graph``)."""
    return render(record.scene_graph, size)


def target_scene(record, edit) -> dict:
    """The record's scene graph after ``edit`` (an EditOp); raises EditError if impossible."""
    return apply_edit(record.scene_graph, edit)


def render_target(record, edit, size: int | None = None):
    """The exact target picture of ``edit`` applied to a ``shapes`` record's scene."""
    return render(apply_edit(record.scene_graph, edit), size)


def exact_answer(record, instruction) -> str | None:
    """The answer ``instruction.expected_after_edit["question"]`` has on the exact target: its
    program executed on the edited scene graph (None when the instruction carries no program).
    For world rows it equals ``expected_after_edit["answer"]``; verify can score a judge against it."""
    import json

    from uniedit_cli.synth import programs

    program = (instruction.expected_after_edit or {}).get("program")
    if not program or record.scene_graph is None:
        return None
    return programs.execute(json.loads(program), apply_edit(record.scene_graph, instruction.edit))
