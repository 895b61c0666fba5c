"""The one home for file I/O: loading user images safely, atomic writes, JSON lines.

Every command reads images through :func:`load_image` so that bad input (missing file, not
an image, truncated data, a decompression bomb, odd modes such as RGBA or 16-bit grayscale)
is handled the same way everywhere, and writes through the atomic helpers so that a killed
run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

from uniedit_cli.errors import InputError, UsageError

# Pillow's own guard is ~89.5 Mpx (a warning) and twice that (an error); we refuse anything
# over the limit, which users can raise on purpose.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


def max_image_pixels() -> int:
    value = os.environ.get("UNIEDIT_MAX_IMAGE_PIXELS")
    if value:
        try:
            return int(value)
        except ValueError as exc:
            raise InputError(
                f"UNIEDIT_MAX_IMAGE_PIXELS={value!r} is not an integer.",
                hint="Set it to a pixel count such as 200000000.",
            ) from exc
    return DEFAULT_MAX_IMAGE_PIXELS


def load_image(path: str | os.PathLike, *, what: str = "image"):
    """Open ``path`` as an 8-bit RGB PIL image, or raise :class:`InputError` naming it.

    Transparent images are composited on white, 16-bit images are scaled to 8 bits, palette
    and grayscale images are converted, and the EXIF orientation is applied.
    """
    return to_rgb(_open_image(path, what, decode=True))


def check_image(path: str | os.PathLike, *, what: str = "image") -> None:
    """What :func:`load_image` would refuse, without decoding the pixels: a missing file, a
    folder, a non-image, a file too large to open safely, and (where the format allows, PNG for
    one) a truncated or corrupt file. Cheap enough to run on every row before a model loads."""
    _open_image(path, what, decode=False)


def _open_image(path: str | os.PathLike, what: str, *, decode: bool):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {str(p)!r}: no such file.", hint="Check the path.")
    if p.is_dir():
        raise InputError(f"{what} {str(p)!r} is a folder, not an image file.")
    limit = max_image_pixels()
    saved_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(p)
                if decode:
                    img.load()
                else:
                    with img:
                        img.verify()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise InputError(
                    f"{what} {str(p)!r} is too large to open safely ({exc}).",
                    hint="Resize it, or raise the limit with UNIEDIT_MAX_IMAGE_PIXELS if you trust the file.",
                ) from None
            except UnidentifiedImageError:
                raise InputError(
                    f"{what} {str(p)!r} is not an image Pillow can read.",
                    hint="Pass a PNG, JPEG or WebP file.",
                ) from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise InputError(
                    f"{what} {str(p)!r} is truncated or corrupt ({exc}).",
                    hint="Re-export or re-download the file.",
                ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    return img


def to_rgb(img):
    """Convert any PIL image to 8-bit RGB the way a person would expect to see it."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not make the pixels unusable
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr8 = ((arr - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(arr)
        elif img.mode.startswith("I;16") or arr.max() > 255:
            # 16-bit samples (PNG stores grayscale 16-bit as I;16 or I): full range is 65535.
            arr8 = arr.astype(np.float64) / 257.0
        else:
            arr8 = arr
        img = Image.fromarray(np.clip(np.rint(arr8), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _umask() -> int:
    global _UMASK
    if _UMASK is None:  # read once: os.umask can only be read by setting it
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:  # mkstemp creates 0600; the renamed file gets the mode a plain open() would (0644 at umask 022)
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def remove_stale_temporaries(folder: str | os.PathLike, *, recursive: bool = True) -> int:
    """Delete the hidden ``.<name>.<random>.tmp`` files that atomic writes cut short by a kill
    leave behind. Call it before any process of a run starts writing into ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def save_image(img, path: str | os.PathLike, *, format: str | None = None) -> Path:
    """Write ``img`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        img.save(tmp, format=format or (path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON line; a single write() of a short line, flushed and synced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield ``(line_number, row, error)`` for each non-empty line; a bad line gives an error."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"batch file {str(path)!r}: no such file.", hint="Pass a .jsonl file with one JSON object per line.")
    if path.is_dir():
        raise InputError(f"batch file {str(path)!r} is a folder.", hint="Pass a .jsonl file with one JSON object per line.")
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").strip().lstrip("\ufeff")  # a BOM from some editors
            except UnicodeDecodeError as exc:
                yield number, None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8"
                continue
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"malformed JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"
                continue
            if not isinstance(row, dict):
                yield number, None, "not a JSON object"
                continue
            yield number, row, None


def read_yaml_mapping(path: str | os.PathLike, *, flag: str, hint: str, suffixes=(".yaml", ".yml")) -> dict:
    """A YAML file that must hold a mapping (a config): a folder, a missing file, a YAML syntax
    error (with its line and column) or a list is one usage error naming ``flag``."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a folder, not a YAML file.", hint=hint)
    if not path.is_file():
        raise UsageError(f"{flag} {str(path)!r}: no such file.", hint=hint)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {str(path)!r}: expected a {'/'.join(suffixes)} file.", hint=hint)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{flag} {str(path)!r} is not valid YAML: {problem}{where}.", hint=hint) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{flag} {str(path)!r} holds a {type(data).__name__}, not a mapping of settings.", hint=hint)
    return data

