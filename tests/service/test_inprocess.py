"""The service in-process: the class called directly, and its real ASGI app through starlette's TestClient."""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures as cf

import numpy as np
import pytest

import models
import models.sampling
from models.sampling import MAX_SEED
from tests.service.conftest import FASHION, decode, png

# Two images of the same seed computed in different batch compositions may differ by one grey level in a
# few pixels (float summation order changes with the batch size); identical compositions are bit-exact.
ONE_LEVEL = 1


def images_of(response) -> np.ndarray:
    return np.stack([decode(base64.b64decode(im["png"])) for im in response.json()["images"]])


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to batch-composition rounding: at most one level, in at most 1% of the pixels."""
    diff = np.abs(a.astype(int) - b.astype(int))
    return a.shape == b.shape and diff.max() <= ONE_LEVEL and (diff > 0).mean() <= 0.01


def reference(checkpoint, label: int, seed: int, n: int) -> np.ndarray:
    """What `ganforge sample` computes for these seeds, in one batch."""
    G, meta = models.load(checkpoint)
    return models.sampling.to_uint8(models.sampling.generate(G, [label] * n, list(range(seed, seed + n))), meta)


# --- the class called directly (no server, no batching) ----------------------------------------------------

def test_direct_call_is_the_cli_sampling_path(store, checkpoints):
    from service.service import Generator
    from training.sample import sample_arrays

    svc = Generator()
    out = asyncio.run(svc.generate(class_name="sneaker", n=4, seed=7))  # keywords, as BentoML's clients call it
    got = np.stack([decode(base64.b64decode(im.png)) for im in out.images])
    cli, labels, seeds, _ = sample_arrays(str(checkpoints["tiny-cgan"]), 4, 7, ["sneaker"], device="cpu")
    assert (out.class_index, out.class_name, [im.seed for im in out.images]) == (7, "Sneaker", [7, 8, 9, 10])
    assert seeds.tolist() == [7, 8, 9, 10] and set(labels.tolist()) == {7}
    assert np.array_equal(got, cli)  # same batch of 4 as the CLI: bit-exact


def test_worker_start_up_heap_is_frozen_out_of_the_gc(store):
    import gc

    from service.service import GC_THRESHOLDS, Generator

    gc.unfreeze()
    Generator()
    assert gc.get_freeze_count() > 10_000 and gc.get_threshold() == GC_THRESHOLDS  # torch alone is more


# --- HTTP semantics in-process -----------------------------------------------------------------------------

def test_generate_happy_path(client, checkpoints):
    r = client.post("/generate", json={"class_name": "sneaker", "n": 4, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["class_index"], body["class_name"]) == ("tiny-cgan", 7, "Sneaker")
    assert (body["width"], body["height"], body["channels"]) == (28, 28, 1)
    assert [im["seed"] for im in body["images"]] == [7, 8, 9, 10]
    got = images_of(r)
    assert got.shape == (4, 28, 28) and got.dtype == np.uint8 and got.std() > 0
    assert np.array_equal(got, reference(checkpoints["tiny-cgan"], 7, 7, 4))


def test_same_seed_same_image(client):
    req = {"class_name": 3, "n": 5, "seed": 1234}
    a, b = client.post("/generate", json=req), client.post("/generate", json=req)
    assert np.array_equal(images_of(a), images_of(b))
    # image i of a request is the n = 1 request with seed + i
    third = client.post("/generate", json={"class_name": 3, "n": 1, "seed": 1236})
    assert close(images_of(a)[2], images_of(third)[0])
    other = client.post("/generate", json={**req, "seed": 1235})
    assert not np.array_equal(images_of(a)[0], images_of(other)[0])


@pytest.mark.parametrize("spelling", ["Sneaker", "SNEAKER", " sneaker ", 7, "7"])
def test_class_by_name_alias_or_index(client, spelling):
    r = client.post("/generate", json={"class_name": spelling, "seed": 0})
    assert r.status_code == 200, r.text
    assert r.json()["class_index"] == 7


def test_class_alias_tshirt(client):
    assert client.post("/generate", json={"class_name": "tshirt"}).json()["class_name"] == "T-shirt/top"


def test_seed_omitted_is_returned_and_replayable(client):
    first = client.post("/generate", json={"class_name": "bag", "n": 2})
    seed = first.json()["images"][0]["seed"]
    again = client.post("/generate", json={"class_name": "bag", "n": 2, "seed": seed})
    assert np.array_equal(images_of(first), images_of(again))


def test_truncation_changes_images_deterministically(client):
    plain = client.post("/generate", json={"class_name": 0, "n": 4, "seed": 3})
    t1 = client.post("/generate", json={"class_name": 0, "n": 4, "seed": 3, "truncation": 0.5})
    t2 = client.post("/generate", json={"class_name": 0, "n": 4, "seed": 3, "truncation": 0.5})
    assert t1.json()["truncation"] == 0.5
    assert np.array_equal(images_of(t1), images_of(t2))
    assert not np.array_equal(images_of(plain), images_of(t1))


def test_generate_image_single_and_grid(client):
    one = client.post("/generate_image", json={"class_name": "dress", "seed": 5})
    assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    assert one.headers["x-seed"] == "5" and one.headers["x-class"] == "Dress"
    json_one = images_of(client.post("/generate", json={"class_name": "dress", "seed": 5}))[0]
    assert np.array_equal(decode(one.content), json_one)
    grid = decode(client.post("/generate_image", json={"class_name": "dress", "n": 16, "seed": 5}).content)
    assert grid.shape == (4 * 30 + 2, 4 * 30 + 2)  # 4 x 4 tiles of 28 px with 2 px gaps
    json_16 = images_of(client.post("/generate", json={"class_name": "dress", "n": 16, "seed": 5}))
    for i, image in enumerate(json_16):  # the grid tiles raw pixels: the same images as the PNGs of /generate
        top, left = 2 + 30 * (i // 4), 2 + 30 * (i % 4)
        assert np.array_equal(grid[top : top + 28, left : left + 28], image)
    wide = decode(client.post("/generate_image", json={"class_name": "dress", "n": 6, "nrow": 3, "scale": 2}).content)
    assert wide.shape == (2 * (2 * 30 + 2), 2 * (3 * 30 + 2))


def test_models_endpoint(client, store):
    r = client.post("/models")
    assert r.status_code == 200, r.text
    body = r.json()
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"tiny-cgan", "tiny-i2i"}
    cgan, i2i = by_name["tiny-cgan"], by_name["tiny-i2i"]
    assert cgan["kind"] == "conditional" and cgan["class_names"] == FASHION
    assert (cgan["img_resolution"], cgan["img_channels"], cgan["native_size"]) == (32, 1, [28, 28])
    assert cgan["provenance"]["steps"] == 0 and cgan["metrics"] == {"fid_domain": 123.4}
    assert cgan["tag"] == store["tiny-cgan"] and len(cgan["sha256"]) == 64
    assert (cgan["device"], cgan["dtype"]) == ("cpu", "float32")
    assert i2i["kind"] == "image-to-image" and i2i["task"]["derivation"] == "edges"
    assert body["defaults"] == {"conditional": "tiny-cgan", "image-to-image": "tiny-i2i"}
    assert body["settings"]["max_n"] == 64 and body["settings"]["batching"] is True


# --- bad input: 4xx naming the field, never a 5xx --------------------------------------------------------

BAD_GENERATE = [
    ({"class_name": "unicorn"}, "class_name", "Sneaker"),  # lists the valid classes
    ({"class_name": 10}, "class_name", "0..9"),
    ({"class_name": -1}, "class_name", None),
    ({"class_name": ""}, "class_name", None),
    ({"class_name": True}, "class_name", None),
    ({"class_name": None}, "class_name", None),
    ({"class_name": [1]}, "class_name", None),
    ({}, "class_name", None),
    ({"class_name": 1, "model": "nope"}, "model", "tiny-cgan"),  # lists the valid models
    ({"class_name": 1, "model": "tiny-i2i"}, "model", "tiny-cgan"),  # wrong kind
    ({"class_name": 1, "n": 0}, "n", None),
    ({"class_name": 1, "n": 65}, "n", None),
    ({"class_name": 1, "n": "4"}, "n", None),
    ({"class_name": 1, "n": 1.5}, "n", None),
    ({"class_name": 1, "n": True}, "n", None),
    ({"class_name": 1, "seed": -1}, "seed", None),
    ({"class_name": 1, "seed": 2**63}, "seed", None),
    ({"class_name": 1, "seed": 10**30}, "seed", None),
    ({"class_name": 1, "seed": "7"}, "seed", None),
    ({"class_name": 1, "seed": 0.5}, "seed", None),
    ({"class_name": 1, "n": 2, "seed": MAX_SEED}, "seed", None),  # seed + n - 1 overflows
    ({"class_name": 1, "truncation": 0}, "truncation", None),
    ({"class_name": 1, "truncation": -1.0}, "truncation", None),
    ({"class_name": 1, "truncation": 1e9}, "truncation", None),
    ({"class_name": 1, "truncation": "x"}, "truncation", None),
    ({"class_name": 1, "classname": 2}, "classname", None),  # misspelt field
]


@pytest.mark.parametrize("payload,field,listed", BAD_GENERATE)
@pytest.mark.parametrize("route", ["/generate", "/generate_image"])
def test_bad_generate_input_is_400_naming_the_field(client, route, payload, field, listed):
    r = client.post(route, json=payload)
    assert r.status_code == 400, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert any(field in map(str, d["loc"]) for d in detail), detail
    if listed:
        assert listed in r.text
    assert "Traceback" not in r.text


@pytest.mark.parametrize("raw,field", [(b'{"class_name": 1, "truncation": NaN}', "truncation"),
                                       (b'{"class_name": 1, "truncation": Infinity}', "truncation"),
                                       (b'{"class_name": 1, "n": 1e400}', "n")])
def test_non_finite_numbers_rejected(client, raw, field):
    r = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert any(field in map(str, d["loc"]) for d in r.json()["detail"])


@pytest.mark.parametrize("payload,field", [({"class_name": 1, "nrow": 0}, "nrow"), ({"class_name": 1, "scale": 9}, "scale"),
                                           ({"class_name": 1, "scale": "2"}, "scale")])
def test_bad_grid_options(client, payload, field):
    r = client.post("/generate_image", json=payload)
    assert r.status_code == 400 and any(field in map(str, d["loc"]) for d in r.json()["detail"])


@pytest.mark.parametrize("body,ctype", [(b"{not json", "application/json"), (b"[1, 2]", "application/json"),
                                        (b"", "application/json")])
def test_malformed_bodies_are_400(client, body, ctype):
    r = client.post("/generate", content=body, headers={"content-type": ctype})
    assert r.status_code == 400, (r.status_code, r.text)


def test_request_size_is_bounded(client):
    big = b'{"class_name": "' + b"a" * 70_000 + b'"}'
    assert client.post("/generate", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks():  # no Content-Length: the limit still holds
        for _ in range(100):
            yield b" " * 1024

    assert client.post("/generate", content=chunks(), headers={"content-type": "application/json"}).status_code == 413


def test_internal_render_never_fails_the_batch(store):
    """render_batch (reached only in process, through the batcher) answers null for an item it cannot render,
    so one bad item cannot fail the other requests merged into its batch."""
    import pydantic

    from service import codec
    from service.schemas import RenderItem
    from service.service import Generator

    service = Generator()
    try:
        items = [RenderItem(model="tiny-cgan", label=99, seed=1), RenderItem(model="tiny-cgan", label=1, seed=1)]
        bad, good = service.render_batch(items)
        assert bad is None and decode(base64.b64decode(good)).shape == (28, 28)
        raw, = service.render_batch([RenderItem(model="tiny-cgan", label=1, seed=1, encoding="raw")])
        assert np.array_equal(codec.from_raw_b64(raw, (28, 28)), decode(base64.b64decode(good)))
    finally:
        service.jobs.stop()
    with pytest.raises(pydantic.ValidationError, match="encoding"):
        RenderItem(model="tiny-cgan", label=1, seed=1, encoding="jpeg")


def test_internal_routes_are_not_served(client):
    r = client.post("/internal/render_batch", json={"items": [{"model": "tiny-cgan", "label": 1, "seed": 1}]})
    assert r.status_code == 404 and "internal" in r.json()["error"]


def test_raw_pixels_round_trip():
    from service import codec

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert models.sampling.image_shape({"img_resolution": 8, "img_channels": 3, "native_size": [5, 7]}) == (5, 7, 3)
    assert models.sampling.image_shape({"img_resolution": 32, "img_channels": 1}) == (32, 32)
    assert np.array_equal(codec.from_raw_b64(codec.raw_b64(rgb), rgb.shape), rgb)


# --- translation ---------------------------------------------------------------------------------------------

def edges_like(h: int = 28, w: int = 20, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = np.where(rng.random((h, w)) > 0.8, 0, 255).astype(np.uint8)
    return a if channels == 1 else np.repeat(a[..., None], channels, -1)


def test_translate_happy_path(client, checkpoints):
    src = edges_like()
    r = client.post("/translate", files={"image": ("edges.png", png(src), "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = decode(r.content)
    assert out.shape == src.shape
    G, meta = models.load(checkpoints["tiny-i2i"])
    assert np.array_equal(out, models.sampling.translate(G, src[None], meta)[0])
    again = client.post("/translate", files={"image": ("edges.png", png(src), "image/png")})
    assert again.content == r.content


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "1"), ("JPEG", "L"),
                                      ("BMP", "RGB"), ("WEBP", "RGB"), ("GIF", "L")])
def test_translate_accepts_common_formats_and_modes(client, fmt, mode):
    r = client.post("/translate", files={"image": ("x", png(edges_like(channels=3), fmt, mode))})
    assert r.status_code == 200, r.text
    assert decode(r.content).shape[:2] == (28, 20)


def test_translate_derive(client):
    photo = (np.linspace(0, 255, 28 * 28).reshape(28, 28)).astype(np.uint8)
    r = client.post("/translate", files={"image": ("p.png", png(photo))}, data={"derive": "true"})
    assert r.status_code == 200, r.text
    plain = client.post("/translate", files={"image": ("p.png", png(photo))})
    assert r.content != plain.content


def bomb_png(side: int) -> bytes:
    """A valid PNG of side x side black pixels: kilobytes on the wire, side**2 bytes once decoded."""
    return png(np.zeros((side, side), np.uint8))


def sixteen_bit_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(buf, format="PNG")  # mode I;16
    return buf.getvalue()


BAD_UPLOADS = [
    ("not an image", lambda: ("x.png", b"hello, world", "image/png"), 400),
    ("empty", lambda: ("x.png", b"", "image/png"), 400),
    ("truncated", lambda: ("x.png", png(edges_like())[:60], "image/png"), 400),
    ("decompression bomb", lambda: ("x.png", bomb_png(4000), "image/png"), 400),
    ("too long a side", lambda: ("x.png", png(np.zeros((1, 3000), np.uint8)), "image/png"), 400),
    ("CMYK", lambda: ("x.jpg", png(edges_like(channels=3), "JPEG", "CMYK"), "image/jpeg"), 400),
    ("16-bit", lambda: ("x.png", sixteen_bit_png(), "image/png"), 400),
    ("too many bytes", lambda: ("x.png", b"\x89PNG" + b"\0" * (5 << 20), "image/png"), 413),
    ("foreign format", lambda: ("x.ico", png(edges_like(16, 16), "ICO"), "image/x-icon"), 400),
]


@pytest.mark.parametrize("name,make,status", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads(client, name, make, status):
    r = client.post("/translate", files={"image": make()})
    assert r.status_code == status, (r.status_code, r.text)
    if status == 400:
        assert any("image" in map(str, d["loc"]) for d in r.json()["detail"]), r.text


def test_file_over_the_upload_limit_inside_the_body_allowance_is_400(client):
    """The body limit leaves room for multipart overhead; the file itself is held to GANFORGE_MAX_UPLOAD_BYTES."""
    from service.config import SETTINGS

    data = png(edges_like()) + b"\0" * (SETTINGS.max_upload_bytes + 1000)
    r = client.post("/translate", files={"image": ("x.png", data, "image/png")})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "bytes" in r.text and any("image" in map(str, d["loc"]) for d in r.json()["detail"])


@pytest.mark.parametrize("kwargs,status", [
    ({"data": {"image": "http://example.com/edges.png"}}, 415),  # a form, not multipart: a URL is never fetched
    ({"json": {"image": "aGVsbG8="}}, 415),
])
def test_translate_takes_multipart_only(client, kwargs, status):
    r = client.post("/translate", **kwargs)
    assert r.status_code == status and "multipart/form-data" in r.json()["error"]


@pytest.mark.parametrize("kwargs,field", [
    ({"data": {"image": "http://example.com/edges.png"}, "files": {"other": ("a", b"b")}}, "image"),
    ({"files": [("image", ("a.png", png(edges_like()))), ("image", ("b.png", png(edges_like())))]}, "image"),
    ({"files": {"image": ("x.png", png(edges_like()))}, "data": {"model": "tiny-cgan"}}, "model"),
    ({"files": {"image": ("x.png", png(edges_like()))}, "data": {"model": "nope"}}, "model"),
    ({"files": {"image": ("x.png", png(edges_like()))}, "data": {"derive": "maybe"}}, "derive"),
])
def test_bad_translate_requests(client, kwargs, field):
    r = client.post("/translate", **kwargs)
    assert r.status_code == 400, (r.status_code, r.text)
    assert any(field in map(str, d["loc"]) for d in r.json()["detail"]), r.text


# --- batching, health, metrics ---------------------------------------------------------------------------------

def test_concurrent_requests_share_forward_passes(client):
    """In-process proof (the HTTP one is in test_http.py): 48 concurrent requests, fewer forward passes."""
    def passes() -> int:
        return next(m for m in client.post("/models").json()["models"] if m["name"] == "tiny-cgan")["forward_passes"]

    before = passes()
    with cf.ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda i: client.post("/generate", json={"class_name": i % 10, "seed": i}).status_code,
                              range(48)))
    assert codes == [200] * 48, codes
    used = passes() - before
    assert 1 <= used < 48, used


def test_health_metrics_and_openapi(client):
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    spec = client.get("/docs.json").json()
    assert {"/generate", "/generate_image", "/translate", "/models"} <= set(spec["paths"])

