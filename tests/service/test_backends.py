"""The same requests over the real ASGI app on every backend: answers identical in shape, pixels within the
backends' tolerance of float32 eager, and /models saying which backend runs and why."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backends.select import MAX_LEVEL_DIFF, MAX_MEAN_LEVEL_DIFF
from tests.conftest import PROJECT_ROOT

BACKENDS = ("torch", "torch-autocast", "onnxruntime", "auto")


def ask(c) -> dict:
    """The same four requests to a client of the app (starlette's TestClient); JSON-able answers."""
    from PIL import Image

    def decode(data: bytes) -> list:
        return np.asarray(Image.open(io.BytesIO(data))).tolist()

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 36), dtype=np.uint8)).save(buf, format="PNG")
    rs = [c.post("/generate", json={"class_name": "sneaker", "n": 5, "seed": 21}),
          c.post("/generate_image", json={"class_name": "bag", "n": 4, "seed": 2, "nrow": 2}),
          c.post("/translate", files={"image": ("a.png", buf.getvalue(), "image/png")}, data={"model": "tiny-i2i"}),
          c.post("/models", json={})]
    assert all(r.status_code == 200 for r in rs), [(r.status_code, r.text[:300]) for r in rs]
    body = rs[0].json()
    return {"generate": body, "images": [decode(base64.b64decode(i["png"])) for i in body["images"]],
            "grid": decode(rs[1].content), "grid_headers": [rs[1].headers["x-seed"], rs[1].headers["x-class"]],
            "translate": decode(rs[2].content), "models": {m["name"]: m for m in rs[3].json()["models"]}}


# Each backend in a child process of its own: BentoML registers its Prometheus metrics once per process and
# binds its batcher to the first event loop, so neither a second app nor a second lifespan of one would work;
# and the session's in-process app is not used, because its metrics files would share the folder the session's
# real server reads (its batch histogram then stops adding up, tests/service/test_http.py).
CHILD = """
import dataclasses, json, sys, tempfile, warnings
warnings.simplefilter("ignore")
import service.service as svc
from starlette.testclient import TestClient
from tests.service.test_backends import ask
svc.SETTINGS = dataclasses.replace(svc.SETTINGS, jobs_dir=tempfile.mkdtemp())
with TestClient(svc.Generator.to_asgi(), raise_server_exceptions=False) as c:
    json.dump(ask(c), sys.stdout)
"""


@pytest.fixture(scope="module")
def answers(store, tmp_path_factory):
    def env(backend: str) -> dict[str, str]:  # its own metrics folder: the session's servers read theirs
        return {**os.environ, "GANFORGE_BACKEND": backend,
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("prometheus"))}

    children = {b: subprocess.Popen([sys.executable, "-c", CHILD], cwd=PROJECT_ROOT, text=True, env=env(b),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for b in BACKENDS}
    out = {}
    for backend, child in children.items():
        stdout, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, stderr[-3000:]
        out[backend] = json.loads(stdout)
    for answer in out.values():
        for key in ("images", "grid", "translate"):
            answer[key] = np.asarray(answer[key], dtype=np.uint8)
    return out


def within_tolerance(a: np.ndarray, b: np.ndarray) -> bool:
    diff = np.abs(a.astype(int) - b.astype(int))
    return a.shape == b.shape and a.dtype == b.dtype and diff.mean() <= MAX_MEAN_LEVEL_DIFF and \
        diff.max() <= MAX_LEVEL_DIFF


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_answers_match_float32_eager_in_shape_and_within_tolerance(answers, backend):
    ref, got = answers["torch"], answers[backend]
    strip = lambda body: {k: v for k, v in body.items() if k != "images"}  # noqa: E731
    assert strip(got["generate"]) == strip(ref["generate"])
    assert [i["seed"] for i in got["generate"]["images"]] == [21, 22, 23, 24, 25]
    assert got["grid_headers"] == ref["grid_headers"]
    for key in ("images", "grid", "translate"):
        assert within_tolerance(got[key], ref[key]), key
    if backend == "onnxruntime":  # float32 both: at most a rounding flip
        assert np.abs(got["images"].astype(int) - ref["images"].astype(int)).max() <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_models_reports_the_backend_its_timings_and_its_check(answers, backend):
    for name, info in answers[backend]["models"].items():
        chosen, check = info["backend"], info["precision_check"]
        assert check["requested"] == backend and check["tolerance"]["max_level_diff"] == MAX_LEVEL_DIFF
        served = set(chosen["by_batch_size"].values())
        assert set(chosen["runtimes"]) == served and chosen["name"] == "+".join(dict.fromkeys(
            chosen["by_batch_size"].values()))
        candidates = {c["backend"]: c for c in check["candidates"]}
        assert all(candidates[n].get("accurate", True) for n in served)  # only checked backends serve
        if backend == "auto":
            assert set(candidates) == {"torch", "torch-autocast", "onnxruntime"}
            assert all(set(c["seconds"]) == set(chosen["by_batch_size"]) for c in candidates.values()
                       if c.get("accurate", True))
            assert check["served"] == chosen["by_batch_size"]
            expected_sizes = {"1", "8", "32", "64"} if info["kind"] == "conditional" else {"1"}
            assert set(chosen["by_batch_size"]) == expected_sizes
        else:
            assert served == {backend}, check
