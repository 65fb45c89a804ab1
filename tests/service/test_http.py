"""The service over real HTTP: `bentoml serve` in a subprocess on a free port, with a temporary BENTOML_HOME."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import models
import models.sampling
from service.testing import Server
from tests.service.conftest import BUNDLED, ROOT, bundled_present, decode, png

CONCURRENT = 48


def images_of(response) -> np.ndarray:
    return np.stack([decode(base64.b64decode(im["png"])) for im in response.json()["images"]])


def batch_histogram(http) -> tuple[float, float, float]:
    """(sum, count, le=1 bucket) of BentoML's adaptive batch size histogram for render_batch; 0s if absent."""
    values: dict[str, float] = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_") and 'method_name="render_batch"' in line:
            kind = line.split("{")[0].rsplit("_", 1)[1]  # sum | count | bucket
            if kind != "bucket" or 'le="1.0"' in line:
                values[kind] = values.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return values.get("sum", 0.0), values.get("count", 0.0), values.get("bucket", 0.0)


def route_requests(http, route: str) -> float:
    """BentoML's HTTP request counter for one route (all status codes)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in http.get("/metrics").text.splitlines()
               if line.startswith("bentoml_service_request_total") and f'endpoint="{route}"' in line)


def forward_passes(http, name: str = "tiny-cgan") -> tuple[int, int]:
    m = next(m for m in http.post("/models").json()["models"] if m["name"] == name)
    return m["forward_passes"], m["images"]


def fire(http, n_requests: int) -> list:
    """n_requests concurrent n = 1 requests (distinct class/seed), all in flight together."""
    def one(i: int):
        return http.post("/generate", json={"class_name": i % 10, "n": 1, "seed": 1000 + i})
    with cf.ThreadPoolExecutor(n_requests) as pool:
        return list(pool.map(one, range(n_requests)))


def test_health_and_metrics(server):
    assert server.http.get("/readyz").status_code == 200
    assert server.http.get("/livez").status_code == 200
    r = server.http.get("/metrics")
    assert r.status_code == 200 and "bentoml_service_request_total" in r.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the worker's /proc/PID/maps")
def test_server_worker_runs_uvloop_and_httptools(server):
    """uvicorn picks uvloop and httptools when they import (project dependencies); without them it falls back
    to asyncio and the pure-Python h11 parser, which cost throughput under concurrency (RESULTS.md)."""
    workers = server.workers()
    assert workers
    for worker in workers:
        maps = Path(f"/proc/{worker.pid}/maps").read_text()
        assert "uvloop" in maps and "httptools" in maps
    assert server.http_stack() == "uvloop + httptools"


def test_generate_over_http_matches_direct_sampling(server, checkpoints):
    r = server.http.post("/generate", json={"class_name": "sneaker", "n": 4, "seed": 7})
    assert r.status_code == 200, r.text
    G, meta = models.load(checkpoints["tiny-cgan"])
    expected = models.sampling.to_uint8(models.sampling.generate(G, [7] * 4, [7, 8, 9, 10]), meta)
    assert np.array_equal(images_of(r), expected)


def test_generate_image_and_models_over_http(server):
    r = server.http.post("/generate_image", json={"class_name": "sneaker", "n": 16, "seed": 7})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert decode(r.content).shape == (122, 122)
    body = server.http.post("/models").json()
    assert {m["name"] for m in body["models"]} >= {"tiny-cgan", "tiny-i2i"}
    assert all(m["device"] == "cpu" and m["dtype"] == "float32" for m in body["models"])


def test_translate_over_http(server):
    src = np.where(np.random.default_rng(1).random((40, 24)) > 0.8, 0, 255).astype(np.uint8)
    r = server.http.post("/translate", files={"image": ("edges.png", png(src), "image/png")})
    assert r.status_code == 200, r.text
    assert decode(r.content).shape == (40, 24)


@pytest.mark.parametrize("route,kwargs,status", [
    ("/generate", {"json": {"class_name": "unicorn"}}, 400),
    ("/generate", {"json": {"class_name": 1, "n": 1000}}, 400),
    ("/generate", {"content": b'{"class_name": 1, "truncation": NaN}',
                   "headers": {"content-type": "application/json"}}, 400),
    ("/generate", {"content": b"x" * 100_000, "headers": {"content-type": "application/json"}}, 413),
    ("/translate", {"files": {"image": ("x.png", b"not an image")}}, 400),
    ("/translate", {"data": {"image": "http://169.254.169.254/latest/meta-data"}}, 415),  # a form: never fetched
    ("/translate", {"files": {"image": ("x.png", png(np.zeros((4000, 4000), np.uint8)))}}, 400),
])
def test_bad_input_over_http_is_4xx_without_traceback(server, route, kwargs, status):
    r = server.http.post(route, **kwargs)
    assert r.status_code == status, (r.status_code, r.text)
    assert "Traceback" not in r.text and "File \"" not in r.text


def test_concurrent_requests_are_merged_into_batches(server):
    """BentoML's adaptive batcher merges concurrent requests: fewer forward passes than requests, and its
    batch-size histogram records batches larger than one. A request with no other in flight skips the batcher
    (nothing to merge with) and has its own pass."""
    for _ in range(3):  # let the dispatcher finish its calibration rounds (concurrent: lone ones skip it)
        fire(server.http, 8)
    sum0, count0, ones0 = batch_histogram(server.http)
    passes0, images0 = forward_passes(server.http)
    hops0 = route_requests(server.http, "/internal/render_batch")
    responses = fire(server.http, CONCURRENT)
    assert [r.status_code for r in responses] == [200] * CONCURRENT, [r.text[:200] for r in responses]
    sum1, count1, ones1 = batch_histogram(server.http)
    passes1, images1 = forward_passes(server.http)
    lone = CONCURRENT - (sum1 - sum0)  # requests that found no other in flight: their own pass, no batcher
    assert 0 <= lone < CONCURRENT // 2
    assert images1 - images0 == CONCURRENT
    assert 1 <= count1 - count0 < CONCURRENT - lone  # the others went through the batcher, in fewer calls
    assert passes1 - passes0 == count1 - count0 + lone  # one forward pass per batcher call or lone request
    assert (count1 - count0) - (ones1 - ones0) >= 1  # at least one call merged several requests
    # the items reach the batcher in process, with no HTTP round trip through the internal route
    assert route_requests(server.http, "/internal/render_batch") == hops0
    direct = server.http.post("/internal/render_batch", json={"items": [{"model": "tiny-cgan", "label": 1, "seed": 1}]})
    assert direct.status_code == 404  # issue 16.2 (BentoML's request counter, outside the middleware, counts it)
    # merging does not change what a seed means (up to batch-composition rounding, see test_inprocess)
    for i in (0, 17, CONCURRENT - 1):
        alone = server.http.post("/generate", json={"class_name": i % 10, "n": 1, "seed": 1000 + i})
        diff = np.abs(images_of(responses[i]).astype(int) - images_of(alone).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.01


def test_sustained_concurrency_has_no_errors(server):
    """Regression: BentoML's self-client replaced its aiohttp session every 100 calls while other calls were
    in flight on it, so sustained load (not one burst) answered some requests with 500s."""
    def one(i: int):
        return server.http.post("/generate", json={"class_name": i % 10, "n": 1, "seed": i}).status_code
    with cf.ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(one, range(320)))
    assert codes == [200] * 320, {c: codes.count(c) for c in set(codes)}


def test_without_batching_every_request_is_its_own_forward_pass(server_env):
    """The control for the test above: the same load with GANFORGE_BATCHING=off gives one pass per request."""
    home = ROOT / "bentoml-unbatched"
    shutil.copytree(ROOT / "bentoml" / "models", home / "models")  # own home: BentoML wipes its metrics dir
    s = Server({**server_env, "GANFORGE_BATCHING": "off", "BENTOML_HOME": str(home)}, ROOT / "server-off.log")
    try:
        passes0, _ = forward_passes(s.http)
        responses = fire(s.http, CONCURRENT)
        assert [r.status_code for r in responses] == [200] * CONCURRENT
        passes1, _ = forward_passes(s.http)
        assert passes1 - passes0 == CONCURRENT
        assert batch_histogram(s.http)[1] == 0
    finally:
        s.close()


@pytest.mark.skipif(not bundled_present("fashion_mnist_cgan"), reason="checkpoints/fashion_mnist_cgan not trained yet")
def test_bundled_cgan_over_http_matches_ganforge_sample(server):
    from training.sample import sample_arrays

    r = server.http.post("/generate", json={"class_name": "sneaker", "n": 4, "seed": 7,
                                            "model": "fashion_mnist_cgan"})
    assert r.status_code == 200, r.text
    cli, _, _, meta = sample_arrays(str(BUNDLED["fashion_mnist_cgan"]), 4, 7, ["sneaker"], device="cpu")
    assert np.array_equal(images_of(r), cli)
    info = next(m for m in server.http.post("/models").json()["models"] if m["name"] == "fashion_mnist_cgan")
    assert info["class_names"] == meta["class_names"] and info["provenance"]["dataset"] == "fashion-mnist"


@pytest.mark.skipif(not bundled_present("fashion_mnist_edges2image"),
                    reason="checkpoints/fashion_mnist_edges2image not trained yet")
def test_bundled_edges2image_over_http(server):
    G, meta = models.load(BUNDLED["fashion_mnist_edges2image"])
    src = np.full((28, 28), 255, np.uint8)
    src[6:22, 8] = src[6:22, 19] = src[6, 8:20] = src[21, 8:20] = 0  # a box outline, black on white
    r = server.http.post("/translate", files={"image": ("edges.png", png(src))},
                         data={"model": "fashion_mnist_edges2image"})
    assert r.status_code == 200, r.text
    assert np.array_equal(decode(r.content), models.sampling.translate(G, src[None], meta)[0])


def test_a_lone_request_skips_the_batcher(server):
    """With no other request in flight there is nothing to merge: no batcher queue, one pass of its own."""
    sum0, count0, _ = batch_histogram(server.http)
    passes0, images0 = forward_passes(server.http)
    for i in range(3):
        r = server.http.post("/generate", json={"class_name": "bag", "n": 2, "seed": 40 + i})
        assert r.status_code == 200 and len(r.json()["images"]) == 2
    assert batch_histogram(server.http)[:2] == (sum0, count0)
    assert forward_passes(server.http) == (passes0 + 3, images0 + 6)
