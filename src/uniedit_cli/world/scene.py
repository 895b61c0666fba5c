"""Scenes of the built-in world: vocabulary, layout, seeded generation, scene graphs.

A scene is a plain dict in GQA's scene-graph schema (REFERENCE.md, "VQA sources"), so every
consumer that reads GQA scene graphs (the program executor, the instruction grammar) reads the
world's scenes with the same code::

    {"width": 256, "height": 256,
     "world": {"version": 1, "seed": 0, "index": 3},          # marks a world scene
     "objects": {"o0": {"name": "cube", "x": 20, "y": 101, "w": 44, "h": 44,
                        "attributes": ["large", "red", "metal"],
                        "relations": [{"name": "to the left of", "object": "o1"}, ...],
                        # the world's own explicit keys, next to the GQA ones:
                        "shape": "cube", "color": "red", "size": "large", "material": "metal",
                        "pos": [0.165, 0.51]},                   # bottom-centre, fraction of the side
                 "s0": {"name": "sign", ..., "text": "moon", "surface": "sign", "slot": 1}}}

Layout. The top of the picture is a wall, the rest a floor seen from the front. Floor objects
stand in a 4 x 3 grid of cells; an object's box always fits inside its cell whatever its
shape and size, so objects never overlap, and recolor/reshape/resize edits never collide with
a neighbour. Boards and signs hang on the wall in three slots. Geometry is stored as fractions
(``pos``) and the pixel box (x, y, w, h) is derived for the scene's own size, so the renderer can
draw the same scene at any size.

Relations are derived from geometry (never stored independently), the same way CLEVR does, but
with a dead zone so they are visually unambiguous: A is "to the left of" B when A's centre is
left of B's by more than ``REL_MARGIN`` of the width (objects in the same column have no
left/right relation); A is "in front of" B when A's base is lower in the picture by more than
``REL_MARGIN`` (objects in the same row have no front/behind relation).

Scene graphs are treated as immutable values: :func:`uniedit_cli.world.apply_edit` returns a
new dict and never mutates its input, so records may share one scene graph.
"""

from __future__ import annotations

import random
from typing import Any

WORLD_VERSION = 1
DEFAULT_SIZE = 256

SHAPES = ("cube", "sphere", "cylinder", "cone", "pyramid")
# Object colours (RGB). White and black are left out on purpose: boards, signs and text use them.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 45, 45),
    "green": (50, 160, 70),
    "blue": (45, 85, 215),
    "yellow": (235, 205, 45),
    "purple": (135, 65, 185),
    "cyan": (45, 195, 205),
    "brown": (135, 85, 45),
    "gray": (125, 125, 125),
    "orange": (240, 135, 35),
    "pink": (240, 125, 185),
}
SIZES = ("small", "large")
# Material-like textures, rendered visibly differently (flat shading / specular / stripes).
MATERIALS = ("matte", "metal", "striped")
SURFACES = ("sign", "whiteboard", "blackboard", "parchment", "neon sign")
SIGN_WORDS = ("moon", "star", "fish", "tree", "boat", "bird", "lamp", "rain", "open", "exit", "cafe", "home",
              "stop", "wolf", "kite", "rose", "gold", "milk", "sand", "snow")
ATTRIBUTE_KEYS = ("size", "color", "material", "shape")  # GQA attribute order: size colour material (+ name)

# Box side as a fraction of the picture side, per size; per-shape aspect (w, h) multipliers.
SIZE_SCALE = {"small": 0.11, "large": 0.17}
SHAPE_ASPECT = {"cube": (1.0, 1.0), "sphere": (1.0, 1.0), "cylinder": (0.8, 1.0), "cone": (0.9, 1.0),
                "pyramid": (1.0, 0.9)}

# Floor grid. Cells are 0.24 wide and ~0.223 high; the largest box (0.17) plus a margin fits
# with room for a little jitter, which is what makes "no overlap, ever" hold under edits.
GRID_COLS, GRID_ROWS = 4, 3
FLOOR_LEFT, FLOOR_RIGHT = 0.02, 0.98
FLOOR_TOP, FLOOR_BOTTOM = 0.30, 0.97
HORIZON = 0.28
CELL_W = (FLOOR_RIGHT - FLOOR_LEFT) / GRID_COLS
CELL_H = (FLOOR_BOTTOM - FLOOR_TOP) / GRID_ROWS
CELL_MARGIN = 0.01
_MAX_BOX = max(SIZE_SCALE.values())
JITTER_X = (CELL_W - _MAX_BOX) / 2 - CELL_MARGIN
JITTER_Y = (CELL_H - _MAX_BOX) / 2 - CELL_MARGIN
REL_MARGIN = 0.08  # larger than twice the jitter, smaller than a cell: see the module docstring

# Wall slots for boards and signs: centre x, and the board box (fractions).
WALL_SLOTS = (0.19, 0.5, 0.81)
BOARD_W, BOARD_H, BOARD_TOP = 0.28, 0.17, 0.045

MIN_OBJECTS, MAX_OBJECTS = 3, 7
SIGN_PROBABILITY = 0.35

LEFT_OF, RIGHT_OF, IN_FRONT_OF, BEHIND = "to the left of", "to the right of", "in front of", "behind"
SPATIAL_RELATIONS = (LEFT_OF, RIGHT_OF, IN_FRONT_OF, BEHIND)


def object_box(shape: str, size: str, pos, side: int) -> tuple[int, int, int, int]:
    """Pixel box (x, y, w, h) of a floor object whose bottom-centre is ``pos`` (fractions) on a
    ``side`` x ``side`` picture. Shared by the scene graph and the renderer so they always agree."""
    scale = SIZE_SCALE[size]
    aw, ah = SHAPE_ASPECT[shape]
    w = max(2, round(scale * aw * side))
    h = max(2, round(scale * ah * side))
    x = round(pos[0] * side - w / 2)
    y = round(pos[1] * side) - h
    return x, y, w, h


def board_box(slot: int, side: int) -> tuple[int, int, int, int]:
    w, h = round(BOARD_W * side), round(BOARD_H * side)
    return round(WALL_SLOTS[slot] * side - w / 2), round(BOARD_TOP * side), w, h


def cell_of(pos) -> tuple[int, int]:
    col = min(GRID_COLS - 1, max(0, int((pos[0] - FLOOR_LEFT) / CELL_W)))
    row = min(GRID_ROWS - 1, max(0, int((pos[1] - FLOOR_TOP) / CELL_H)))
    return col, row


def cell_anchor(col: int, row: int, rng: random.Random | None = None) -> list[float]:
    """Bottom-centre of an object in a cell (fractions), jittered by ``rng`` when given. The
    bottom sits where the largest box fits: resizing or reshaping in place never leaves the cell."""
    cx = FLOOR_LEFT + (col + 0.5) * CELL_W
    bottom = FLOOR_TOP + (row + 1) * CELL_H - CELL_MARGIN - JITTER_Y
    if rng is not None:
        cx += rng.uniform(-JITTER_X, JITTER_X)
        bottom += rng.uniform(-JITTER_Y, JITTER_Y)
    return [round(cx, 4), round(bottom, 4)]


def is_world(scene_graph: dict | None) -> bool:
    """True for a scene graph made by this world (exact semantics, exact renders)."""
    return bool(scene_graph) and isinstance(scene_graph.get("world"), dict)


def is_floor_object(obj: dict) -> bool:
    return "shape" in obj


def make_object(shape: str, color: str, size: str, material: str, pos, side: int) -> dict[str, Any]:
    """A floor object in GQA schema plus the world's explicit keys (relations filled later)."""
    x, y, w, h = object_box(shape, size, pos, side)
    return {"name": shape, "x": x, "y": y, "w": w, "h": h, "attributes": [size, color, material],
            "relations": [], "shape": shape, "color": color, "size": size, "material": material,
            "pos": [float(pos[0]), float(pos[1])]}


def make_board(text: str, surface: str, slot: int, side: int) -> dict[str, Any]:
    """A board or sign on the wall; its ``name`` is the surface ("sign", "whiteboard", ...)."""
    x, y, w, h = board_box(slot, side)
    return {"name": surface, "x": x, "y": y, "w": w, "h": h, "attributes": [], "relations": [],
            "text": text, "surface": surface, "slot": slot}


def relate_pair(a: dict, b: dict) -> list[str]:
    """Spatial relations that hold from floor object ``a`` to ``b`` (a <rel> b)."""
    rels = []
    dx = a["pos"][0] - b["pos"][0]
    if dx < -REL_MARGIN:
        rels.append(LEFT_OF)
    elif dx > REL_MARGIN:
        rels.append(RIGHT_OF)
    dy = a["pos"][1] - b["pos"][1]
    if dy > REL_MARGIN:
        rels.append(IN_FRONT_OF)
    elif dy < -REL_MARGIN:
        rels.append(BEHIND)
    return rels


def with_relations(objects: dict[str, dict]) -> dict[str, dict]:
    """Recompute every floor object's GQA ``relations`` from geometry (in place; returns objects).
    Relations are stored on the subject, one entry per (relation, object), like GQA."""
    floor = [(oid, o) for oid, o in objects.items() if "shape" in o]
    for oid, obj in floor:
        rels = []
        for other_id, other in floor:
            if other_id != oid:
                for name in relate_pair(obj, other):
                    rels.append({"name": name, "object": other_id})
        obj["relations"] = rels
    return objects


def generate_scene(seed: int, index: int = 0, size: int = DEFAULT_SIZE, *, num_objects: int | None = None,
                   sign_probability: float = SIGN_PROBABILITY) -> dict[str, Any]:
    """The ``index``-th scene of the world for ``seed``: same arguments, same scene (string seeds
    go through SHA-512 in ``random``, so this does not depend on PYTHONHASHSEED)."""
    rng = random.Random(f"uniedit-world:{WORLD_VERSION}:{seed}:{index}")
    n = num_objects if num_objects is not None else rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    if not 0 <= n <= GRID_COLS * GRID_ROWS:
        raise ValueError(f"num_objects must be between 0 and {GRID_COLS * GRID_ROWS}, got {n}.")
    cells = rng.sample([(c, r) for r in range(GRID_ROWS) for c in range(GRID_COLS)], n)
    color_names = list(COLORS)
    objects: dict[str, dict] = {}
    for k, (col, row) in enumerate(cells):
        objects[f"o{k}"] = make_object(rng.choice(SHAPES), rng.choice(color_names), rng.choice(SIZES),
                                       rng.choice(MATERIALS), cell_anchor(col, row, rng), size)
    if rng.random() < sign_probability:
        objects["s0"] = make_board(rng.choice(SIGN_WORDS), "sign", rng.randrange(len(WALL_SLOTS)), size)
    with_relations(objects)
    return {"width": size, "height": size, "world": {"version": WORLD_VERSION, "seed": seed, "index": index},
            "objects": objects}


def floor_objects(scene: dict) -> dict[str, dict]:
    return {oid: o for oid, o in scene["objects"].items() if "shape" in o}


def occupied_cells(scene: dict) -> set[tuple[int, int]]:
    return {cell_of(o["pos"]) for o in scene["objects"].values() if "shape" in o}


def free_cells(scene: dict) -> list[tuple[int, int]]:
    """Empty floor cells in row-major order (where an add or move can put an object)."""
    taken = occupied_cells(scene)
    return [(c, r) for r in range(GRID_ROWS) for c in range(GRID_COLS) if (c, r) not in taken]


def free_slots(scene: dict) -> list[int]:
    taken = {o["slot"] for o in scene["objects"].values() if "slot" in o}
    return [s for s in range(len(WALL_SLOTS)) if s not in taken]


def hposition(obj: dict, width: float) -> str:
    """GQA's ``hposition`` (left/right) from the box centre; shared with the program executor."""
    return "left" if obj["x"] + obj["w"] / 2 < width / 2 else "right"


def vposition(obj: dict, height: float) -> str:
    return "top" if obj["y"] + obj["h"] / 2 < height / 2 else "bottom"
