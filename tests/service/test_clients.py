"""BentoML's own clients against a real server: every route called with keyword arguments, sync and async,
jobs included (issue 16: keyword calls raised `Expected one positional argument for root input`)."""
from __future__ import annotations

import asyncio
import base64
import io
import time
import zipfile
from pathlib import Path

import bentoml
import numpy as np
from PIL import Image

from tests.service.conftest import png


def _image_bytes(out) -> bytes:
    """A PIL image or a downloaded file (what the clients return for image outputs) as PNG bytes."""
    if isinstance(out, Image.Image):
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        return buf.getvalue()
    return Path(out).read_bytes()


def test_sync_client_keyword_calls_for_every_route(server, tmp_path):
    src = tmp_path / "edges.png"
    src.write_bytes(png(np.where(np.random.default_rng(2).random((28, 28)) > 0.8, 0, 255).astype(np.uint8)))
    with bentoml.SyncHTTPClient(server.url) as c:
        out = c.generate(class_name="sneaker", n=4, seed=7)
        assert [im["seed"] for im in out["images"]] == [7, 8, 9, 10] and out["class_name"] == "Sneaker"
        picked = c.generate(class_name=3)  # no seed: the server picks one and returns it
        assert isinstance(picked["images"][0]["seed"], int)
        grid = c.generate_image(class_name="bag", n=4, seed=1)
        assert Image.open(io.BytesIO(_image_bytes(grid))).size == (62, 62)
        lone = c.generate_image(class_name="bag")  # the server picks the seed
        lone = lone if isinstance(lone, Image.Image) else Image.open(lone)
        seed = int(lone.info["seed"])  # what X-Seed says, through the client
        assert lone.info["class"] == "Bag"
        again = c.generate(class_name="bag", seed=seed)["images"][0]["png"]
        assert np.array_equal(np.asarray(lone), np.asarray(Image.open(io.BytesIO(base64.b64decode(again)))))
        translated = c.translate(image=src)
        assert Image.open(io.BytesIO(_image_bytes(translated))).size == (28, 28)
        assert {m["name"] for m in c.models()["models"]} >= {"tiny-cgan", "tiny-i2i"}
        job = c.augment_submit(total=6, seed=11, format="npz")
        job_id = job["job_id"]
        deadline = time.monotonic() + 120
        while (status := c.augment_status(job_id=job_id))["state"] != "done":
            assert time.monotonic() < deadline and status["state"] in ("queued", "running"), status
            time.sleep(0.2)
        result = c.augment_result(job_id=job_id)
        assert np.load(Path(result))["seeds"].tolist() == list(range(11, 17))
        assert job_id in [j["job_id"] for j in c.augment_list(limit=1000)["jobs"]]
        assert c.augment_delete(job_id=job_id)["deleted"] is True
        other = c.augment_submit(total=5000, seed=1)["job_id"]
        c.augment_cancel(job_id=other)
        deadline = time.monotonic() + 60
        while c.augment_status(job_id=other)["state"] != "cancelled":  # a running one stops after its batch
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert c.augment_retry(job_id=other)["state"] in ("queued", "running")
        c.augment_cancel(job_id=other)


def test_async_client_keyword_calls_for_every_route(server, tmp_path):
    src = tmp_path / "edges.png"
    src.write_bytes(png(np.full((28, 28), 255, np.uint8)))

    async def main() -> None:
        async with bentoml.AsyncHTTPClient(server.url) as c:
            out = await c.generate(class_name="sneaker", n=2, seed=7)
            assert [im["seed"] for im in out["images"]] == [7, 8]
            grid = await c.generate_image(class_name="bag", seed=1, scale=2)
            assert Image.open(io.BytesIO(_image_bytes(grid))).size == (56, 56)
            assert Image.open(io.BytesIO(_image_bytes(await c.translate(image=src)))).size == (28, 28)
            assert (await c.models())["defaults"]["conditional"] == "tiny-cgan"
            job_id = (await c.augment_submit(per_class={"bag": 3}, seed=5))["job_id"]
            deadline = time.monotonic() + 120
            while (await c.augment_status(job_id=job_id))["state"] != "done":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            with zipfile.ZipFile(Path(await c.augment_result(job_id=job_id))) as zf:
                assert "manifest.csv" in zf.namelist()
            assert (await c.augment_list(limit=5))["jobs"][0]["job_id"] >= job_id
            assert (await c.augment_delete(job_id=job_id))["deleted"] is True

    asyncio.run(main())
