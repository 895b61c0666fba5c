"""Edits on scene graphs: ``apply_edit(scene, EditOp) -> new scene``.

Rendering the edited scene of a world scene gives the exact target image, and the target
differs from the source only inside :func:`edit_region` (the edited objects' old and new
boxes). The input scene is never mutated: the result shares unchanged objects with it.

Operations and their ``args`` (``EditOp.target`` is an object id unless noted):

=============  ===========================================================================
recolor        {"color": c}
reshape        {"shape": s}  (the object keeps its bottom-centre)
rematerial     {"material": m}
resize         {"size": "small" | "large"}  (keeps its bottom-centre)
replace        {"object": {"shape"?, "color"?, "size"?, "material"?}}: a different object in
               the same place (missing keys keep the old value)
remove         {}
add            target None; {"object": {"shape", "color", "size", "material"}, "count": 1,
               "side": "left" | "right" (optional), "where": [[relation, anchor_id], ...]
               (optional: the new object must stand in that relation to each anchor)}
move           {"side": ..., "where": [...], "cell": [col, row]} (any of them)
write_text     {"text": str, "surface": "sign" | "whiteboard" | "blackboard" | "parchment" |
               "neon sign"}; target None hangs a new board on the wall, a board/sign id
               rewrites that board
none           no change
=============  ===========================================================================

Placement (add, move, write_text on a new board) is deterministic: candidate cells are
shuffled and jittered by a ``random.Random`` seeded from the scene's identity and the edit
itself, so the same (scene, edit) always gives the same result. An edit that cannot be done
(no free cell satisfies the constraints, unknown target, bad value) raises :class:`EditError`
(``reason = "edit_infeasible"``), never produces an overlapping scene.

Non-world (GQA) scene graphs accept the attribute edits (recolor, rematerial, resize, reshape,
replace), remove, and add/write_text without geometry; attributes are swapped by vocabulary.
"""

from __future__ import annotations

import json
import random

from uniedit_cli.synth.records import EditOp
from uniedit_cli.world import scene as S

__all__ = ["EDIT_OPS", "EditError", "apply_edit", "edit_region", "placement_cells"]

EDIT_OPS = ("recolor", "reshape", "rematerial", "resize", "add", "remove", "move", "replace", "write_text", "none")
_ATTR_OF_OP = {"recolor": "color", "reshape": "shape", "rematerial": "material", "resize": "size"}
_VALUES = {"color": tuple(S.COLORS), "shape": S.SHAPES, "material": S.MATERIALS, "size": S.SIZES}


class EditError(ValueError):
    """The edit cannot be applied to this scene (the pipeline rejects the row with ``reason``)."""

    reason = "edit_infeasible"


def apply_edit(scene: dict, edit: EditOp) -> dict:
    """A new scene graph with ``edit`` applied (``scene`` is left untouched)."""
    op = edit.op
    if op == "none":
        return scene
    if op not in EDIT_OPS:
        raise EditError(f"unknown edit operation {op!r} (known: {', '.join(EDIT_OPS)}).")
    world = S.is_world(scene)
    objects = dict(scene["objects"])
    out = {**scene, "objects": objects}
    args = edit.args or {}
    side = scene["width"]
    if op in _ATTR_OF_OP or op == "replace":
        obj = _target(objects, edit)
        new = dict(obj)
        changes = dict(args.get("object") or {}) if op == "replace" else {_ATTR_OF_OP[op]: args.get(_ATTR_OF_OP[op])}
        if op == "replace" and "name" in changes and "shape" not in changes and not world:
            new["name"] = changes.pop("name")
        for attr, value in changes.items():
            if attr not in _VALUES:
                raise EditError(f"{op}: unknown attribute {attr!r}.")
            if world and value not in _VALUES[attr]:
                raise EditError(f"{op}: {value!r} is not a {attr} of the world ({', '.join(_VALUES[attr])}).")
            if not isinstance(value, str) or not value:
                raise EditError(f"{op}: missing value for {attr}.")
            _set_attr(new, attr, value, world)
        if world:
            if "shape" not in new:
                raise EditError(f"{op}: {edit.target!r} is a board, not an object.")
            new["x"], new["y"], new["w"], new["h"] = S.object_box(new["shape"], new["size"], new["pos"], side)
            new["attributes"] = [new["size"], new["color"], new["material"]]
        objects[edit.target] = new
        # bottom-centres do not move, so relations are unchanged; no recomputation needed
        return out
    if op == "remove":
        _target(objects, edit)
        del objects[edit.target]
        if world:
            S.with_relations(_fresh(objects))
        else:
            for oid, o in objects.items():
                if any(r.get("object") == edit.target for r in o.get("relations", ())):
                    objects[oid] = {**o, "relations": [r for r in o["relations"] if r.get("object") != edit.target]}
        return out
    if op == "add":
        spec = dict(args.get("object") or {})
        count = int(args.get("count", 1))
        if count < 1:
            raise EditError("add: count must be at least 1.")
        if not world:
            name = spec.get("name") or spec.get("shape") or "object"
            for _ in range(count):
                nid = _new_id(objects, "n")
                attrs = [spec[k] for k in ("size", "color", "material") if spec.get(k)]
                objects[nid] = {"name": name, "x": 0, "y": 0, "w": 0, "h": 0, "attributes": attrs, "relations": [],
                                **{k: v for k, v in spec.items() if k in _VALUES}}
            return out
        for attr in ("shape", "color", "size", "material"):
            if spec.get(attr) not in _VALUES[attr]:
                raise EditError(f"add: the new object needs a {attr} of the world, got {spec.get(attr)!r}.")
        rng = _edit_rng(scene, edit)
        cells = _candidate_cells(scene, objects, args, rng, exclude=None)
        if len(cells) < count:
            raise EditError(f"add: room for {len(cells)} object(s) that satisfy the placement, {count} asked.")
        for col, row in cells[:count]:
            nid = _new_id(objects, "o")
            objects[nid] = S.make_object(spec["shape"], spec["color"], spec["size"], spec["material"],
                                         S.cell_anchor(col, row, rng), side)
        S.with_relations(_fresh(objects))
        return out
    if op == "move":
        if not world:
            raise EditError("move needs geometry: only world scenes support it.")
        obj = _target(objects, edit)
        if "shape" not in obj:
            raise EditError("move: boards stay on the wall.")
        rng = _edit_rng(scene, edit)
        cells = _candidate_cells(scene, objects, args, rng, exclude=edit.target)
        if not cells:
            raise EditError("move: no free cell satisfies the placement.")
        col, row = cells[0]
        new = dict(obj)
        new["pos"] = S.cell_anchor(col, row, rng)
        new["x"], new["y"], new["w"], new["h"] = S.object_box(new["shape"], new["size"], new["pos"], side)
        objects[edit.target] = new
        S.with_relations(_fresh(objects))
        return out
    if op == "write_text":
        text = str(args.get("text", "")).strip()
        if not text:
            raise EditError("write_text: empty text.")
        surface = args.get("surface") or "whiteboard"
        if edit.target is not None:
            obj = _target(objects, edit)
            if "shape" in obj:
                raise EditError("write_text: the target must be a board or sign, not a floor object.")
            objects[edit.target] = {**obj, "text": text, "surface": args.get("surface") or obj.get("surface", "sign"),
                                    "name": args.get("surface") or obj["name"]}
            return out
        if not world:
            objects[_new_id(objects, "b")] = {"name": surface, "x": 0, "y": 0, "w": 0, "h": 0, "attributes": [],
                                              "relations": [], "text": text, "surface": surface}
            return out
        if surface not in S.SURFACES:
            raise EditError(f"write_text: unknown surface {surface!r} ({', '.join(S.SURFACES)}).")
        slots = S.free_slots(out)
        if not slots:
            raise EditError("write_text: every wall slot already holds a board.")
        # prefer the centre slot, then left, then right: boards read best in the middle
        slot = min(slots, key=lambda s: (abs(s - 1), s))
        objects[_new_id(objects, "b")] = S.make_board(text, surface, slot, side)
        return out
    raise EditError(f"edit operation {op!r} is not supported here.")  # pragma: no cover


def edit_region(scene: dict, edit: EditOp, edited: dict | None = None, *, size: int | None = None) -> list[tuple]:
    """Pixel boxes (x, y, w, h) at ``size`` (default: the scene's) that the edit may change: the
    edited objects' boxes before and after. Everything outside them renders identically."""
    edited = apply_edit(scene, edit) if edited is None else edited
    side = size or scene["width"]
    before, after = scene["objects"], edited["objects"]
    boxes = []
    for oid in set(before) | set(after):
        a, b = before.get(oid), after.get(oid)
        if a is not None and b is not None and _drawn_same(a, b):
            continue
        for o in (a, b):
            if o is not None:
                boxes.append(_box_at(o, side))
    return boxes


def _box_at(obj: dict, side: int) -> tuple[int, int, int, int]:
    if "shape" in obj:
        return S.object_box(obj["shape"], obj["size"], obj["pos"], side)
    return S.board_box(obj["slot"], side)


def _drawn_same(a: dict, b: dict) -> bool:
    keys = ("shape", "color", "size", "material", "pos", "text", "surface", "slot")
    return all(a.get(k) == b.get(k) for k in keys)


def _target(objects: dict, edit: EditOp) -> dict:
    if edit.target is None or edit.target not in objects:
        raise EditError(f"{edit.op}: target {edit.target!r} is not an object of this scene.")
    return objects[edit.target]


def _set_attr(obj: dict, attr: str, value: str, world: bool) -> None:
    if world:
        obj[attr] = value
        if attr == "shape":
            obj["name"] = value
        return
    # GQA scene graph: swap the attribute word of that type (vocabulary from the executor)
    from uniedit_cli.synth.programs import ATTRIBUTE_VOCAB

    vocab = ATTRIBUTE_VOCAB.get(attr, frozenset())
    obj["attributes"] = [a for a in obj.get("attributes", ()) if a not in vocab] + [value]
    if attr in obj:
        obj[attr] = value


def _fresh(objects: dict) -> dict:
    """Copy the floor objects whose relations are about to be recomputed (never mutate the input)."""
    for oid, o in objects.items():
        if "shape" in o:
            objects[oid] = dict(o)
    return objects


def _new_id(objects: dict, prefix: str) -> str:
    k = 0
    while f"{prefix}{k}" in objects:
        k += 1
    return f"{prefix}{k}"


def _edit_rng(scene: dict, edit: EditOp) -> random.Random:
    world = scene.get("world", {})
    key = json.dumps([world.get("seed"), world.get("index"), sorted(scene["objects"]), edit.op, edit.target,
                      edit.args], sort_keys=True, default=str)
    return random.Random(key)


def placement_cells(scene: dict, args: dict, *, exclude: str | None = None) -> list[tuple[int, int]]:
    """Free cells (row-major) where an added object (or ``exclude`` moved) would satisfy the
    ``side``, ``where`` and ``cell`` placement args of add/move. Empty: the edit is infeasible."""
    objects = scene["objects"]
    taken = {S.cell_of(o["pos"]) for oid, o in objects.items() if "shape" in o and oid != exclude}
    cells = [(c, r) for r in range(S.GRID_ROWS) for c in range(S.GRID_COLS) if (c, r) not in taken]
    if "cell" in args:
        wanted = tuple(args["cell"])
        cells = [c for c in cells if c == wanted]
    side = args.get("side")
    if side in ("left", "right"):
        half = S.GRID_COLS // 2
        cells = [(c, r) for c, r in cells if (c < half) == (side == "left")]
    elif side is not None:
        raise EditError(f"unknown side {side!r} (left or right).")
    for rel, anchor_id in args.get("where") or []:
        anchor = objects.get(anchor_id)
        if anchor is None or "shape" not in anchor or anchor_id == exclude:
            raise EditError(f"placement anchor {anchor_id!r} is not an object of this scene.")
        if rel not in S.SPATIAL_RELATIONS:
            raise EditError(f"unknown placement relation {rel!r}.")
        # a cell centre is within jitter of any object placed in that cell, and the relations'
        # dead zone is wider than the jitter, so testing the centre is exact (see scene.py)
        cells = [c for c in cells if rel in S.relate_pair({"pos": S.cell_anchor(*c)}, anchor)]
    return cells


def _candidate_cells(scene: dict, objects: dict, args: dict, rng: random.Random, exclude: str | None) -> list:
    cells = placement_cells({**scene, "objects": objects}, args, exclude=exclude)
    rng.shuffle(cells)  # deterministic (seeded by the scene and the edit), but not always top-left
    return cells
