"""Step 4: the target image. The scene world renders it exactly from the edited scene graph;
other sources go through an editor model from the registry (batched, one seed per row);
``--editor none`` leaves it empty (instruction-only rows)."""

from __future__ import annotations

from uniedit_cli.synth.records import VQARecord


def source_image(planned, config):
    """The source image of a planned row (raises InputError for a missing or corrupt one)."""
    record: VQARecord = planned.record
    if record.source == "shapes" and record.image_bytes is None and record.image_path is None:
        from uniedit_cli import world

        return world.render(record.scene_graph, size=config.size)
    return record.load_image()


def make_targets(planned_rows, source_images, config, editor) -> list:
    """One target per row (None where there is none or the editor failed on that row)."""
    from uniedit_cli.synth.pipeline import WORLD_EDITOR

    if config.editor == WORLD_EDITOR:
        from uniedit_cli import world

        return [world.render(world.apply_edit(p.record.scene_graph, p.instruction.edit), size=config.size)
                for p in planned_rows]
    if editor is None or not planned_rows:
        return [None] * len(planned_rows)
    adapter, resolved = editor
    options = resolved.options()
    prompts = [p.instruction.explicit_prompt for p in planned_rows]
    seeds = [p.seed for p in planned_rows]
    out: list = []
    for start in range(0, len(planned_rows), config.batch_size):
        batch = slice(start, start + config.batch_size)
        try:
            out += adapter.edit(source_images[batch], prompts[batch], seeds=seeds[batch], **options)
        except Exception as exc:  # noqa: BLE001 - isolate the row that broke the batch
            if type(exc).__name__ == "OutOfMemoryError":
                raise
            for image, prompt, seed in zip(source_images[batch], prompts[batch], seeds[batch]):
                try:
                    out += adapter.edit([image], [prompt], seeds=[seed], **options)
                except Exception as row_exc:  # noqa: BLE001
                    if type(row_exc).__name__ == "OutOfMemoryError":
                        raise
                    out.append(None)
    return out

