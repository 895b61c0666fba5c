"""The one image loader: bad input becomes a clear InputError; odd modes become 8-bit RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from uniedit_cli.errors import InputError
from uniedit_cli.io import load_image, read_jsonl, save_image, write_json


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red
    arr[:2, :, 3] = 255  # top half opaque, bottom half transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    out = np.asarray(img)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_grayscale_and_palette_become_rgb(tmp_path):
    Image.new("L", (5, 3), 77).save(tmp_path / "l.png")
    Image.new("P", (5, 3), 3).save(tmp_path / "p.png")
    for name in ("l.png", "p.png"):
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (5, 3)
    assert tuple(np.asarray(load_image(tmp_path / "l.png"))[0, 0]) == (77, 77, 77)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    assert img.mode == "RGB"
    values = np.asarray(img)[0, :, 0].tolist()
    assert values == [0, 128, 255]


def test_missing_not_an_image_truncated_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        load_image(tmp_path / "text.png")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused_and_limit_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setenv("UNIEDIT_MAX_IMAGE_PIXELS", "10000")
    with pytest.raises(InputError, match="too large"):
        load_image(path)
    monkeypatch.setenv("UNIEDIT_MAX_IMAGE_PIXELS", "100000")
    assert load_image(path).size == (300, 300)
    monkeypatch.setenv("UNIEDIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="not an integer"):
        load_image(path)


def test_atomic_writes_leave_no_temporaries(tmp_path):
    save_image(Image.new("RGB", (3, 3)), tmp_path / "a" / "x.png")
    write_json(tmp_path / "a" / "x.json", {"k": 1})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "x.png"]


def test_read_jsonl_reports_bad_lines(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n[1, 2]\n{"b": 2}\n')
    rows = list(read_jsonl(path))
    assert [(line, err is None) for line, _, err in rows] == [(1, True), (3, False), (4, False), (5, True)]
    assert "malformed JSON" in rows[1][2]


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        for path in (save_image(Image.new("RGB", (3, 3)), tmp_path / "x.png"), write_json(tmp_path / "x.json", {})):
            assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # others on a shared cluster can read results
    finally:
        os.umask(old)


def test_read_jsonl_skips_a_non_utf8_line_and_reads_a_bom(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"p": "caf\xe9"}\n{"a": "x\n{"b": 2}\n')
    rows = list(read_jsonl(path))
    assert [(line, err is None) for line, _, err in rows] == [(1, True), (2, False), (3, False), (4, True)]
    assert rows[0][1] == {"a": 1}
    assert "not UTF-8" in rows[1][2] and "0xe9" in rows[1][2]
    assert rows[2][2] == "malformed JSON (Unterminated string starting at column 7)"
    with pytest.raises(InputError, match="is a folder"):
        list(read_jsonl(tmp_path))
