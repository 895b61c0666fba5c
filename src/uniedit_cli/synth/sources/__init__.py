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
    known = _parameters(cls)
    unknown = [key for key in options if key not in known and key not in ("path", "split")]
    if unknown and not takes_any:
        raise _unknown_options(name, unknown, known)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise UsageError(f"--vqa {name}: {exc}.", hint=f"Options of {name}: {', '.join(known) or 'none'}.") from None
    return cls(**kwargs)


def _parameters(cls) -> list[str]:
    params = inspect.signature(cls).parameters
    return [p.name for p in params.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("path", "split", "self")]


def option_names(name: str) -> list[str]:
    """The options a user may pass to source ``name`` with ``--vqa-option``: its class's
    ``user_options`` when it declares them (the built-in world's are set by synth's own flags),
    else the keyword arguments of its class."""
    cls = source_class(name)
    declared = getattr(cls, "user_options", None)
    return list(declared) if declared is not None else _parameters(cls)


def check_options(name: str, options: dict) -> None:
    """Every source refuses an unknown ``--vqa-option`` the same way, naming the ones it takes
    (a UsageError before any work, not an option silently ignored)."""
    known = option_names(name)
    unknown = [key for key in options if key not in known]
    if unknown:
        raise _unknown_options(name, unknown, known, note=getattr(source_class(name), "options_note", ""))


def _unknown_options(name: str, unknown: list[str], known: list[str], *, note: str = "") -> UsageError:
    key = (name or "").strip().lower()
    what = "option" if len(unknown) == 1 else "options"
    takes = f"Options of {key}: {', '.join(known)}." if known else f"--vqa {key} takes no --vqa-option."
    return UsageError(f"--vqa-option: --vqa {key} has no {what} {', '.join(map(repr, unknown))}.",
                      hint=takes + (f" {note}" if note else ""))


__all__ = ["SOURCES", "check_options", "open_source", "option_names", "source_class"]
