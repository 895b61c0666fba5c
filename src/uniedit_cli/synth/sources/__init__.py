"""VQA sources for ``uniedit synth --vqa NAME``: name -> "module:Class", imported only when used.

Every source is ``Class(path, split=..., **options)``; ``check()`` validates the data layout
before any work (a :class:`~uniedit_cli.errors.UsageError` that says what is missing and where
to get it); iterating yields :class:`~uniedit_cli.synth.records.VQARecord` or
:class:`~uniedit_cli.synth.records.BadRecord` in a stable order; ``count()`` says how many
items that is. The external sources share the contract documented in ``_base.py``; options per
source are keyword arguments of its class (``limit`` everywhere; ``balanced``, ``image_dir``,
``scene_graphs``... where they apply).
"""

from __future__ import annotations

import difflib
import importlib
import inspect

from uniedit_cli.errors import UsageError

SOURCES: dict[str, str] = {
    "shapes": "uniedit_cli.synth.sources.shapes:ShapesSource",
    "gqa": "uniedit_cli.synth.sources.gqa:GQASource",
    "vqav2": "uniedit_cli.synth.sources.vqav2:VQAv2Source",
    "clevr": "uniedit_cli.synth.sources.clevr:CLEVRSource",
    "jsonl": "uniedit_cli.synth.sources.jsonl:JSONLSource",
}


def source_class(name: str):
    """The class registered as ``name`` (UsageError for an unknown name, with close matches)."""
    key = (name or "").strip().lower()
    if key not in SOURCES:
        close = difflib.get_close_matches(key, list(SOURCES), n=3, cutoff=0.5)
        raise UsageError(f"unknown VQA source {name!r}.",
                         hint=f"Known sources: {', '.join(SOURCES)}." + (f" Did you mean {', '.join(close)}?" if close else ""))
    module_name, _, class_name = SOURCES[key].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def open_source(name: str, path=None, split: str | None = None, **options):
    """Construct source ``name`` (no I/O yet: call ``check()`` before starting work).

    ``path`` and ``split`` go to the class when it takes them: the built-in world reads no files
    and has no splits, so a path given to it is an error and the (default) split is dropped.
    Options the source does not take are a UsageError listing the ones it does, instead of a
    TypeError from deep inside.
    """
    cls = source_class(name)
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = dict(options)
    if "path" in params:
        kwargs["path"] = path
    elif path not in (None, ""):
        raise UsageError(f"--vqa {name} reads no dataset files: drop --vqa-path {str(path)!r}.")
    if split is not None and ("split" in params or takes_any):
        kwargs["split"] = split
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        known = [p.name for p in params.values()
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("path", "split", "self")]
        raise UsageError(f"--vqa {name}: {exc}.", hint=f"Options of {name}: {', '.join(known) or 'none'}.") from None
    return cls(**kwargs)


__all__ = ["SOURCES", "open_source", "source_class"]
