"""Tests for llava.mm_utils' image side: square padding, plain and anyres preprocessing, image loading.

Oracles are written out by hand: pixel values from the normalisation formula, tiles and resolutions by hand.
"""

from __future__ import annotations

import base64
import http.server
import re
import struct
import threading
import time
import zlib
from io import BytesIO
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava.mm_utils import (
    ImageTooLargeError,
    divide_to_patches,
    expand2square,
    get_anyres_image_grid_shape,
    load_image,
    load_image_from_base64,
    load_images,
    process_anyres_image,
    process_images,
    resize_and_pad_image,
    select_best_resolution,
)

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@pytest.fixture(scope="module")
def clip_processor():
    import warnings

    from transformers import CLIPImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIPImageProcessor(
            size={"shortest_edge": 336},
            crop_size={"height": 336, "width": 336},
            image_mean=MEAN,
            image_std=STD,
        )


def _normalised(rgb: tuple[int, int, int]) -> list[float]:
    return [(rgb[c] / 255 - MEAN[c]) / STD[c] for c in range(3)]


def _pixel(t: torch.Tensor, y: int, x: int) -> list[float]:
    return [float(v) for v in t[:, y, x]]


# --- process_images ------------------------------------------------------------------------------------------


def test_expand2square_centres():
    img = Image.new("RGB", (3, 1), (9, 9, 9))
    sq = expand2square(img, (1, 2, 3))
    assert sq.size == (3, 3)
    assert sq.getpixel((0, 0)) == (1, 2, 3) and sq.getpixel((0, 1)) == (9, 9, 9) and sq.getpixel((2, 2)) == (1, 2, 3)
    tall = expand2square(Image.new("RGB", (1, 2), (9, 9, 9)), (1, 2, 3))
    assert tall.size == (2, 2) and tall.getpixel((0, 0)) == (9, 9, 9) and tall.getpixel((1, 0)) == (1, 2, 3)
    assert expand2square(img.resize((2, 2)), (0, 0, 0)).size == (2, 2)


def test_process_images_pad(clip_processor):
    # 40x20 red image padded to 40x40 with int(mean*255) = (122, 116, 104); the image rows land at 84..251 of 336.
    images = [Image.new("RGB", (40, 20), (255, 0, 0)), Image.new("RGB", (20, 40), (0, 0, 255))]
    cfg = SimpleNamespace(image_aspect_ratio="pad")
    out = process_images(images, clip_processor, cfg)
    assert out.shape == (2, 3, 336, 336)
    border = _normalised((122, 116, 104))
    assert _pixel(out[0], 0, 0) == pytest.approx(border, abs=1e-5)
    assert _pixel(out[0], 335, 335) == pytest.approx(border, abs=1e-5)
    assert _pixel(out[0], 168, 168) == pytest.approx(_normalised((255, 0, 0)), abs=1e-5)
    assert _pixel(out[1], 0, 0) == pytest.approx(border, abs=1e-5)  # left border of the tall image
    assert _pixel(out[1], 168, 168) == pytest.approx(_normalised((0, 0, 255)), abs=1e-5)


def test_process_images_plain(clip_processor):
    images = [Image.new("RGB", (672, 336), (0, 255, 0))] * 3
    out = process_images(images, clip_processor, SimpleNamespace(image_aspect_ratio=None))
    assert out.shape == (3, 3, 336, 336)
    assert _pixel(out[2], 10, 10) == pytest.approx(_normalised((0, 255, 0)), abs=1e-5)


def test_select_best_resolution_hand_worked():
    # 672x336 fits (672, 336) exactly: effective 225792, waste 0 (672x672 and 1008x336 tie on effective, waste more).
    assert select_best_resolution((672, 336), PINPOINTS) == (672, 336)
    # 500x400: only 672x672 keeps every pixel (scale 1.344 -> capped at 200000); the others keep <= 141120.
    assert select_best_resolution((500, 400), PINPOINTS) == (672, 672)
    # Equal effective resolution 112896: 336x336 wastes 0, 672x672 wastes 338688.
    assert select_best_resolution((336, 336), [(672, 672), (336, 336)]) == (336, 336)
    # Full tie (same canvas twice): the first one listed wins.
    assert select_best_resolution((10, 10), [(20, 20), (20, 20)]) == (20, 20)


def test_grid_shape_and_string_pinpoints():
    text = "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]"
    assert get_anyres_image_grid_shape((672, 336), text, 336) == (2, 1)
    assert get_anyres_image_grid_shape((500, 400), PINPOINTS, 336) == (2, 2)
    with pytest.raises(ValueError, match="pinpoints"):
        get_anyres_image_grid_shape((10, 10), "__import__('os')", 336)


def test_resize_and_pad_image():
    # 100x50 into 336x336: width scale 3.36 < height scale 6.72 -> 336 x ceil(168.0) = 168, pasted at y = 84.
    out = resize_and_pad_image(Image.new("RGB", (100, 50), (200, 10, 10)), (336, 336))
    assert out.size == (336, 336)
    assert out.getpixel((0, 83)) == (0, 0, 0) and out.getpixel((0, 252)) == (0, 0, 0)
    assert out.getpixel((0, 84)) == (200, 10, 10) and out.getpixel((335, 251)) == (200, 10, 10)


def test_divide_to_patches_row_major():
    img = Image.new("RGB", (4, 4))
    for (x, y), colour in {(0, 0): (1, 0, 0), (2, 0): (2, 0, 0), (0, 2): (3, 0, 0), (2, 2): (4, 0, 0)}.items():
        img.paste(colour, (x, y, x + 2, y + 2))
    patches = divide_to_patches(img, 2)
    assert [p.size for p in patches] == [(2, 2)] * 4
    assert [p.getpixel((0, 0))[0] for p in patches] == [1, 2, 3, 4]


def test_process_anyres_tiles(clip_processor):
    # 672x336, left half red, right half blue: best canvas (672, 336) -> base view + 2 tiles (red, blue).
    img = Image.new("RGB", (672, 336), (255, 0, 0))
    img.paste((0, 0, 255), (336, 0, 672, 336))
    out = process_anyres_image(img, clip_processor, PINPOINTS)
    assert out.shape == (3, 3, 336, 336)
    assert _pixel(out[1], 168, 168) == pytest.approx(_normalised((255, 0, 0)), abs=1e-5)
    assert _pixel(out[2], 168, 168) == pytest.approx(_normalised((0, 0, 255)), abs=1e-5)
    # Base view: the whole image squeezed to 336x336, so its left quarter is red and right quarter blue.
    assert _pixel(out[0], 168, 40) == pytest.approx(_normalised((255, 0, 0)), abs=1e-5)
    assert _pixel(out[0], 168, 300) == pytest.approx(_normalised((0, 0, 255)), abs=1e-5)


def test_process_images_anyres_stack_or_list(clip_processor):
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=str(PINPOINTS))
    same = process_images([Image.new("RGB", (672, 336))] * 2, clip_processor, cfg)
    assert isinstance(same, torch.Tensor) and same.shape == (2, 3, 3, 336, 336)
    cfg = SimpleNamespace(image_aspect_ratio="anyres_max_9", image_grid_pinpoints=PINPOINTS)
    mixed = process_images([Image.new("RGB", (672, 336)), Image.new("RGB", (500, 400))], clip_processor, cfg)
    assert isinstance(mixed, list)
    assert [m.shape for m in mixed] == [(3, 3, 336, 336), (5, 3, 336, 336)]


# --- image loading -------------------------------------------------------------------------------------------


def _png_bytes(size=(4, 3), colour=(1, 2, 3), mode="RGB") -> bytes:
    buf = BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces width x height but carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_load_image_path_base64_and_data_uri(tmp_path):
    path = tmp_path / "grey.png"
    path.write_bytes(_png_bytes(mode="L", colour=(50,)))
    img = load_image(str(path))
    assert img.mode == "RGB" and img.size == (4, 3) and img.getpixel((0, 0)) == (50, 50, 50)
    b64 = base64.b64encode(_png_bytes()).decode()
    assert load_image(b64).getpixel((1, 1)) == (1, 2, 3)
    assert load_image("data:image/png;base64," + b64).size == (4, 3)
    assert load_image_from_base64(b64).size == (4, 3)
    assert [i.size for i in load_images([path, b64])] == [(4, 3), (4, 3)]


def test_load_image_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope" / "cat.jpg"
    with pytest.raises(FileNotFoundError, match="cat.jpg"):
        load_image(str(missing))


def test_load_image_corrupt_file_names_it(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(bad)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png_bytes(size=(64, 64))[:60])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(truncated)
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)


def test_load_image_oversized_header_refused_before_decoding(tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(9000, 8000))  # 72,000,000 > 64,000,000 pixels, no pixel data at all
    with pytest.raises(ImageTooLargeError, match=r"huge\.png.*9000x8000"):
        load_image(huge)
    small = tmp_path / "small.png"
    small.write_bytes(_png_bytes(size=(20, 20)))
    with pytest.raises(ValueError, match=r"small\.png.*400 pixels.*limit of 100"):
        load_image(small, max_pixels=100)
    assert load_image(small, max_pixels=None).size == (20, 20)
    with pytest.raises(ImageTooLargeError):
        load_image_from_base64(base64.b64encode(_png_header_only(9000, 8000)).decode())


class _OneImageHandler(http.server.BaseHTTPRequestHandler):
    """Serves a 5x5 PNG at /a.png and 404 elsewhere."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        if self.path != "/a.png":
            self.send_error(404)
            return
        body = _png_bytes(size=(5, 5))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


def test_load_image_from_a_real_http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert load_image(f"{base}/a.png", timeout=5.0).size == (5, 5)
        with pytest.raises(ValueError, match=f"{base}/missing.png"):
            load_image(f"{base}/missing.png", timeout=5.0)
    finally:
        server.shutdown()
        server.server_close()


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    """/big.png: a valid PNG padded to 3 MiB (announced); /big-chunked.png: the same without Content-Length;
    /slow.png: a 5x5 PNG sent a few bytes every 0.1 s (several seconds in all)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the http.server API)
        png = _png_bytes(size=(5, 5))
        if self.path in ("/big.png", "/big-chunked.png"):
            body = png + b"\0" * (3 * 1024 * 1024)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            if self.path == "/big.png":
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for start in range(0, len(body), 65536):
                        self.wfile.write(body[start:start + 65536])
                except OSError:  # the client hung up, as it should
                    pass
                self.close_connection = True
            return
        if self.path == "/slow.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            try:
                for start in range(0, len(png), 4):
                    self.wfile.write(png[start:start + 4])
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return
        self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture()
def hostile_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", ["/big.png", "/big-chunked.png"])
def test_url_download_stops_past_the_size_limit(hostile_server, path):
    url = hostile_server + path
    with pytest.raises(ValueError, match=re.escape(url) + ".*over the limit of 1048576 bytes"):
        load_image(url, timeout=5.0, max_download_bytes=1024 * 1024)
    # under a limit it fits, the padded PNG still loads
    assert load_image(url, timeout=5.0, max_download_bytes=8 * 1024 * 1024).size == (5, 5)


def test_url_download_stops_past_the_time_limit(hostile_server):
    url = hostile_server + "/slow.png"
    started = time.monotonic()
    with pytest.raises(ValueError, match=re.escape(url) + ".*longer than the limit of 0.5 s"):
        load_image(url, timeout=5.0, download_time_limit=0.5)
    assert time.monotonic() - started < 2.0  # well before the trickle ends (each read alone is under timeout)
