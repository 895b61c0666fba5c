"""The ``shapes`` VQA source: the built-in scene world as VQARecords (no downloads).

::

    from uniedit_cli.synth.sources.shapes import ShapesSource

    source = ShapesSource(num_images=500, seed=0, size=256, questions_per_image=8, max_depth=2)
    source.check()                      # nothing to check (no files); kept for the source protocol
    for record in source:               # VQARecord, deterministic for (seed, size, ...)
        record.scene_graph              # GQA-schema scene graph (shared by the image's questions)
        record.program                  # GQA semantic program; record.answer = its execution
        world.render_source(record)     # the source picture (rendered lazily, not stored)
        world.render_target(record, instruction.edit)   # the exact target picture

Records leave ``image_bytes`` and ``image_path`` empty so nothing is rendered until a row is
actually written (``embed_images=True`` fills ``image_bytes`` with PNG instead, for consumers
that only know ``VQARecord.load_image``). ``source_id`` is ``"{seed}-{image:06d}-{question:02d}"``
and ``image_id`` ``"shapes-{seed}-{image:06d}"``; ``question_type`` is the GQA-style detailed
type (queryAttr, relS, count, math, readText, ...), ``extra`` holds the question family and
GQA ``types``. Questions of one image are generated from an rng seeded by (seed, image), so
any image can be regenerated on its own: ``records_of(image_index)``. ``count()`` (exact, it
generates the questions) and ``iter_range(start, stop)`` follow the external sources' contract.
"""

from __future__ import annotations

import random
from itertools import islice
from typing import Iterator

from uniedit_cli.synth.records import VQARecord

SOURCE_NAME = "shapes"


class ShapesSource:
    """Iterates the world's VQA records: ``num_images`` scenes x up to ``questions_per_image``."""

    name = SOURCE_NAME
    # ``uniedit synth`` sets every argument from its own flags: --vqa-option takes none here
    user_options: tuple[str, ...] = ()
    options_note = "The scene world follows --num-rows, --seed, --size and --max-depth."

    def __init__(self, num_images: int, seed: int = 0, size: int = 256, questions_per_image: int = 8, *,
                 max_depth: int = 2, embed_images: bool = False, families: dict[str, float] | None = None):
        if num_images < 0:
            raise ValueError("num_images must be >= 0.")
        if size < 32:
            raise ValueError("size must be at least 32 pixels.")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.size = int(size)
        self.questions_per_image = int(questions_per_image)
        self.max_depth = int(max_depth)
        self.embed_images = embed_images
        self.families = families

    def check(self) -> None:
        """Sources check their inputs before any work; the world has none."""

    def max_records(self) -> int:
        """An upper bound on the number of records (plain scenes may yield fewer questions)."""
        return self.num_images * self.questions_per_image

    def records_of(self, image_index: int) -> list[VQARecord]:
        from uniedit_cli import world

        scene = world.generate_scene(self.seed, image_index, self.size)
        rng = random.Random(f"uniedit-world-questions:{self.seed}:{image_index}:{self.max_depth}")
        questions = world.generate_questions(scene, rng, self.questions_per_image, max_depth=self.max_depth,
                                             families=self.families)
        image_bytes = world.render_png(scene) if self.embed_images else None
        image_id = f"shapes-{self.seed}-{image_index:06d}"
        return [VQARecord(source=SOURCE_NAME, source_id=f"{self.seed}-{image_index:06d}-{k:02d}", image_id=image_id,
                          question=q.question, answer=q.answer, image_bytes=image_bytes, program=q.program,
                          scene_graph=scene, annotations=q.annotations, question_type=q.types["detailed"],
                          extra={"family": q.family, "types": q.types})
                for k, q in enumerate(questions)]

    def __iter__(self) -> Iterator[VQARecord]:
        for i in range(self.num_images):
            yield from self.records_of(i)

    # The external sources' contract (``_base.py``): count() is exact, len() is not cheap here.
    has_cheap_len = False

    def count(self) -> int:
        """The exact number of records (generates the questions: ~0.3 ms per image)."""
        return sum(len(self.records_of(i)) for i in range(self.num_images))

    def iter_range(self, start: int, stop: int) -> Iterator[VQARecord]:
        """Records ``start..stop-1`` of the iteration order."""
        return islice(iter(self), start, stop)
