"""ganforge's BentoML service: class-conditional generation, image-to-image translation, model metadata.

    bentoml serve service.service:Generator        # or `make serve` (PORT=3000)

Routes: POST /generate (JSON: base64 PNGs + seeds), /generate_image (one PNG: image or grid),
/translate (multipart upload -> PNG), /models (metadata), /augment/{submit,status,result,list} (durable
augmentation jobs, service/jobs.py); BentoML adds /readyz, /livez, /metrics, /docs.json.

Concurrent /generate and /generate_image requests are merged: each is cut into one item per image and handed
to the adaptive batcher BentoML runs for the batchable `render_batch` API (in process, see `_render`), which
merges items from concurrent requests into one generator forward pass of at most GANFORGE_MAX_BATCH_SIZE
images. Public APIs are `async` and only validate and wait, so the worker's `threads` go to the model.
Augmentation jobs render through the same `served.render` in a background thread that gives way to
online requests between its small batches (service/jobs.py). Settings come from GANFORGE_* variables
(service/config.py).
"""
from __future__ import annotations

import gc
import logging
import math
import os
import secrets
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Optional

import bentoml
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import Strict
from starlette.concurrency import run_in_threadpool

from augment import AugmentJob, JobSpecError, resolve_counts
from models.checkpoint import image_geometry
from models.sampling import class_index, grid, image_shape

from . import bentoml_internals, codec, uploads, watchdog
from .gate import OnlineGate
from .served import KINDS, Served, load_served, render, translate, verify
from .config import SETTINGS, jobs_root
from .jobs import JobConflict, JobManager, JobNotFound, JobNotReady, StorageFull, TooManyJobs
from .limits import RequestLimits
from .openapi import PublishedDocument
from .selection import request_selection
from .schemas import (
    AugmentRequest,
    GeneratedImage,
    GenerateImageRequest,
    GenerateRequest,
    GenerateResponse,
    JobDeleted,
    JobList,
    JobPage,
    JobRef,
    JobStatus,
    ModelInfo,
    ModelName,
    ModelsResponse,
    RenderItem,
    field_error,
)

logger = logging.getLogger("ganforge.service")

# glibc gives each thread that allocates its own malloc arena (up to 8 per core) and rarely returns their
# free pages; under concurrent load the worker's resident memory grew by 1.2 GB over 5,000 mixed requests
# with the default and by 0.65 GB with 2 arenas (benchmarks/RESULTS.md, "Service hardening"). The variable is
# read when a process starts, so it is set here, in the `bentoml serve` process that imports this module
# before it starts the workers (which inherit it); a value already in the environment wins.
os.environ.setdefault("MALLOC_ARENA_MAX", "2")

UPLOADS = {"/translate": "image"}  # upload route -> its file field (bounded and checked by RequestLimits)
MULTIPART_OVERHEAD = 64 << 10  # form fields and part headers around the uploaded file
GC_THRESHOLDS = (50_000, 50, 1000)  # Python's defaults are (700, 10, 10)
# BentoML packs (`bentoml build`) the models it finds as class attributes; which ones is configuration.
MODEL_REFS = {name: bentoml.models.BentoModel(f"{name}:latest") for name in SETTINGS.models}
# Every process that imports the service checks the weights it will serve against their recorded sha256, so
# `bentoml serve` itself exits non-zero with the message (model, both hashes) before it starts any worker,
# instead of its workers failing and being restarted forever (issue 16.17/18).
KINDS_SERVED = {}  # name -> kind, for the published document
for _name, _ref in MODEL_REFS.items():
    verify(_name, _ref.stored)
    KINDS_SERVED[_name] = _ref.stored.info.metadata.get("kind", "")


def _declare_models(cls: type) -> type:
    for name, ref in MODEL_REFS.items():
        setattr(cls, "model_" + name.replace("-", "_").replace(".", "_"), ref)
    return cls


@bentoml.service(
    name="ganforge",
    workers=SETTINGS.workers,
    threads=SETTINGS.threads,  # sync work (render_batch, translate) runs on these; default BentoML is 1
    traffic={"timeout": SETTINGS.timeout_s},
    **({"resources": {"gpu": SETTINGS.gpus}} if SETTINGS.gpus else {}),
)
@_declare_models
class Generator:
    def __init__(self) -> None:
        worker = bentoml_internals.in_worker()
        if worker:
            watchdog.exit_with_parent()  # workers run in their own session: end them when the server is gone
        self.served: dict[str, Served] = {}
        for name, ref in MODEL_REFS.items():
            largest = SETTINGS.max_batch_size if SETTINGS.batching else SETTINGS.max_n  # one pass at most
            try:
                self.served[name] = load_served(name, ref.stored, SETTINGS.device, SETTINGS.backend,
                                                SETTINGS.dtype, largest, SETTINGS.job_batch_size)
            except Exception as e:
                if worker:  # BentoML would restart this worker every ~10 s, forever
                    watchdog.stop_server(f"cannot serve model {name!r}: {type(e).__name__}: {e}")
                raise
            s = self.served[name]
            logger.info("serving %s (%s) on %s with %s (%s), by batch size %s", s.tag, s.kind, s.device,
                        s.backend.name, s.backend.precision, s.backend.describe()["by_batch_size"])
        self.gate = OnlineGate(SETTINGS.job_quiet_ms / 1000)  # online requests in flight; jobs give way
        self.jobs = JobManager(jobs_root(SETTINGS), self.served, self.gate, max_active=SETTINGS.job_max_active,
                               batch_wait_s=SETTINGS.job_max_wait_ms / 1000, pause_s=SETTINGS.job_pause_ms / 1000,
                               retention_s=SETTINGS.job_retention_hours * 3600)
        self.jobs.start()  # resumes the jobs an earlier run left unfinished
        # Python's cyclic GC stops every thread while it scans; a full collection over the start-up heap
        # (torch, BentoML, the models) stalled the event loop and the batcher for long enough to double the
        # p99 latency at concurrency 64 (benchmarks/RESULTS.md). Move that heap out of the GC's sight and
        # collect the young generation less often (most request garbage is freed by reference counting; the
        # cycles that remain are still collected).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    @bentoml.on_shutdown
    def _stop_jobs(self) -> None:
        self.jobs.stop()  # the running job stops after its batch and resumes at the next start

    # --- class-conditional generation -------------------------------------------------------------

    @bentoml.api(input_spec=GenerateRequest)
    async def generate(self, **fields) -> GenerateResponse:
        """`n` images of one class as base64 PNGs, each with its seed (image i uses seed + i)."""
        request = GenerateRequest.model_construct(**fields)  # validated by BentoML against input_spec
        served, label, seed, pngs = await self._generate(request, "png")
        channels, h, w = image_geometry(served.meta)
        return GenerateResponse(
            model=served.name, class_index=label, class_name=served.meta["class_names"][label],
            truncation=request.truncation, width=w, height=h, channels=channels,
            images=[GeneratedImage(seed=seed + i, png=png) for i, png in enumerate(pngs)])

    @bentoml.api(input_spec=GenerateImageRequest)
    async def generate_image(self, ctx: bentoml.Context, **fields) -> Image.Image:
        """One PNG: the image for n = 1, else a grid (row-major, `nrow` per row). The first seed and the class
        are in the headers X-Seed and X-Class and in the PNG's text chunks `seed` and `class`."""
        request = GenerateImageRequest.model_construct(**fields)
        served, label, seed, pixels = await self._generate(request, "raw")
        nrow = request.nrow or math.ceil(math.sqrt(len(pixels)))

        def assemble() -> Image.Image:
            shape = image_shape(served.meta)
            images = np.stack([codec.from_raw_b64(p, shape) for p in pixels])
            picture = images[0] if len(images) == 1 else grid(images, nrow)
            if request.scale > 1:
                picture = picture.repeat(request.scale, axis=0).repeat(request.scale, axis=1)
            out = Image.fromarray(picture)
            # The seed and class travel in the PNG itself too (tEXt chunks), so BentoML's clients, which return
            # the image without the response headers, still have them: Image.open(...).info["seed"].
            text = PngInfo()
            text.add_text("seed", str(seed))
            text.add_text("class", served.meta["class_names"][label])
            out.encoderinfo = {"pnginfo": text}  # Pillow applies it when BentoML saves the image
            return out

        ctx.response.headers["X-Seed"] = str(seed)
        ctx.response.headers["X-Class"] = served.meta["class_names"][label]
        return await run_in_threadpool(assemble)

    @bentoml.api(route="/internal/render_batch", batchable=SETTINGS.batching, batch_dim=0,
                 max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def render_batch(self, items: list[RenderItem]) -> list[Optional[str]]:
        """Internal (called in process by /generate and /generate_image through the batcher; the middleware
        answers 404 to /internal/* over HTTP): one base64 string per item, a PNG or the raw pixels as the item
        asks; items of one model and truncation share a forward pass. An item naming an unserved model or
        class gets null, so one bad item cannot fail the other requests merged into its batch."""
        return self._render_items(items)

    def _render_items(self, items: list[RenderItem]) -> list[Optional[str]]:
        out: list[Optional[str]] = [None] * len(items)
        groups: dict[tuple[str, Optional[float]], list[int]] = {}
        for i, item in enumerate(items):
            served = self.served.get(item.model)
            if served and served.kind == "conditional" and item.label < len(served.meta["class_names"]):
                groups.setdefault((item.model, item.truncation), []).append(i)
        for (name, truncation), index in groups.items():
            images = render(self.served[name], [items[i].label for i in index],
                            [items[i].seed for i in index], truncation)
            for i, image in zip(index, images):
                out[i] = codec.png_b64(image) if items[i].encoding == "png" else codec.raw_b64(image)
        return out

    async def _generate(self, request: GenerateRequest,
                        encoding: str) -> tuple[Served, int, int, list[str]]:
        served = self._pick(request.model, "conditional")
        try:
            label = class_index(served.meta["class_names"], request.class_name)
        except ValueError as e:
            raise field_error("class_name", request.class_name, str(e)) from None
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        items = [RenderItem(model=served.name, label=label, seed=seed + i, truncation=request.truncation,
                            encoding=encoding) for i in range(request.n)]
        with self.gate.online():
            encoded = await self._render(items, alone=self.gate.active == 1)
        if any(p is None for p in encoded):  # cannot happen for validated items; never answer a broken image
            raise bentoml.exceptions.InternalServerError("render_batch returned no image")
        return served, label, seed, encoded

    async def _render(self, items: list[RenderItem], alone: bool = False) -> list[Optional[str]]:
        """render_batch through the server's adaptive batcher, so that concurrent requests share passes.

        In a server, the items go straight to the batcher BentoML built for the render_batch route (its
        `CorkDispatcher`, the same queue, limits and `adaptive_batch_size` metric an HTTP call to the route
        would get; see service/bentoml_internals.py). Called directly (no server), or if a BentoML version
        lays its app out differently, the items are rendered in a worker thread, one request per pass.
        `alone`: no other online request is in flight, so there is no company to merge with: the items skip
        the batcher and render in a worker thread at once (its queue, dispatcher loop and thread hop took
        ~20 ms of a lone n = 1 request's p50 on the 2 busy cores, against 3.9 ms without them; RESULTS.md,
        "Deploy anywhere, fast")."""
        if not hasattr(self, "_dispatch"):
            app = bentoml_internals.served_app(self)
            self._dispatch = None if app is None else bentoml_internals.route_batcher(app, "render_batch")
            if app is not None and self._dispatch is None and SETTINGS.batching:
                logger.warning("render_batch's batcher not found in BentoML's app; requests are not merged")
        if self._dispatch is not None and not alone:
            return await self._dispatch(items, alone)
        return await run_in_threadpool(self._render_items, items)  # not self.render_batch: in a server
        #                                                              that is an HTTP call to the route

    # --- image-to-image ---------------------------------------------------------------------------

    @bentoml.api
    def translate(self, image: Path, model: Optional[ModelName] = None,
                  derive: Annotated[bool, Strict()] = False) -> Image.Image:
        """Translate one uploaded image (PNG/JPEG/BMP/GIF/WEBP) with an image-to-image model; same size out.
        With derive=true the upload is a target-like picture and the model's stored derivation
        (e.g. edges) makes its input first."""
        served = self._pick(model, "image-to-image")
        if derive and not served.meta.get("task", {}).get("derivation"):
            raise field_error("derive", derive, f"model {served.name!r} stores no derivation; upload its input "
                                                "image itself (derive=false)")
        try:
            array = uploads.read_upload(image, SETTINGS.max_upload_bytes, SETTINGS.max_pixels, SETTINGS.max_side)
        except uploads.UploadError as e:
            raise field_error("image", None, str(e)) from None
        with self.gate.online():
            return Image.fromarray(translate(served, array, derive))

    # --- augmentation jobs ------------------------------------------------------------------------

    @bentoml.api(route="/augment/submit", input_spec=AugmentRequest)
    async def augment_submit(self, **fields) -> JobStatus:
        """Queue a job of labelled synthetic images; everything is checked here (400 naming the field,
        429 when GANFORGE_JOB_MAX_ACTIVE jobs are pending). Poll /augment/status, then fetch /augment/result."""
        request = AugmentRequest.model_construct(**fields)
        served = self._pick(request.model, "conditional")
        names = served.meta["class_names"]
        field = "total" if request.total is not None else "per_class"
        try:
            counts = resolve_counts(names, request.per_class, request.total, request.classes)
        except ValueError as e:
            raise field_error(field, None, str(e)) from None
        total = sum(counts)
        if total > SETTINGS.job_max_images:
            raise field_error(field, None, f"the job asks for {total} images; the limit is "
                                           f"{SETTINGS.job_max_images} per job (GANFORGE_JOB_MAX_IMAGES)")
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        picked = await run_in_threadpool(request_selection, request, served)  # reads the model store
        try:  # the job spec is the one validator of its ranges (seed + index, truncation, format)
            job = AugmentJob(checkpoint_sha256=served.store_metadata["sha256"], class_names=tuple(names),
                             counts=tuple(counts), seed=seed, truncation=request.truncation, format=request.format,
                             chunk_size=SETTINGS.job_chunk_size, batch_size=SETTINGS.job_batch_size,
                             model=served.name, selection=picked)
        except JobSpecError as e:
            raise field_error(e.field, getattr(request, e.field, None), str(e)) from None
        try:
            status = await run_in_threadpool(self.jobs.submit, job, served.tag, request.model_dump())
        except TooManyJobs as e:
            raise bentoml.exceptions.BentoMLException(str(e), error_code=HTTPStatus.TOO_MANY_REQUESTS) from None
        except StorageFull as e:
            raise bentoml.exceptions.BentoMLException(str(e), error_code=HTTPStatus.INSUFFICIENT_STORAGE) from None
        return JobStatus(**status)

    @bentoml.api(route="/augment/status", input_spec=JobRef)
    async def augment_status(self, job_id: str) -> JobStatus:
        """State (queued | running | done | failed | cancelled), progress, the reason of a failure or pause;
        404 for unknown ids."""
        return JobStatus(**await run_in_threadpool(self._job_call, self.jobs.status, job_id))

    @bentoml.api(route="/augment/result", input_spec=JobRef)
    async def augment_result(self, job_id: str) -> Path:
        """The finished job's file: augment-<id>.zip (class folders + manifest.csv) or augment-<id>.npz;
        409 while it is not done (or failed, with the reason), 404 for unknown ids."""
        return await run_in_threadpool(self._job_call, self.jobs.result, job_id)

    @bentoml.api(route="/augment/cancel", input_spec=JobRef)
    async def augment_cancel(self, job_id: str) -> JobStatus:
        """Stop a queued or running job (a running one stops after its current batch, in whichever worker
        runs it); 409 for a finished job. Its files stay until /augment/delete."""
        return JobStatus(**await run_in_threadpool(self._job_call, self.jobs.cancel, job_id))

    @bentoml.api(route="/augment/retry", input_spec=JobRef)
    async def augment_retry(self, job_id: str) -> JobStatus:
        """Queue a failed or cancelled job again; it resumes from its last whole chunk. 409 otherwise."""
        return JobStatus(**await run_in_threadpool(self._job_call, self.jobs.retry, job_id))

    @bentoml.api(route="/augment/delete", input_spec=JobRef)
    async def augment_delete(self, job_id: str) -> JobDeleted:
        """Remove a finished (done, failed or cancelled) job and its files; 409 for a queued or running one
        (cancel it first)."""
        return JobDeleted(**await run_in_threadpool(self._job_call, self.jobs.delete, job_id))

    @bentoml.api(route="/augment/list", input_spec=JobPage)
    async def augment_list(self, limit: int = 100, before: Optional[str] = None) -> JobList:
        """One page of jobs, newest first; pass the returned `next` as `before` for the next page."""
        page, cursor = await run_in_threadpool(self.jobs.list, limit, before)
        return JobList(jobs=[JobStatus(**s) for s in page], next=cursor)

    @staticmethod
    def _job_call(fn, job_id: str):
        try:
            return fn(job_id)
        except JobNotFound:
            raise bentoml.exceptions.NotFound(f"no augmentation job {job_id!r}; POST /augment/list lists them") \
                from None
        except (JobNotReady, JobConflict) as e:
            raise bentoml.exceptions.BentoMLException(str(e), error_code=HTTPStatus.CONFLICT) from None

    # --- metadata ---------------------------------------------------------------------------------

    @bentoml.api
    async def models(self) -> ModelsResponse:
        """Every served model: kind, classes, geometry, provenance, metrics, device, backend and its evidence,
        counters."""
        defaults = {kind: next((s.name for s in self.served.values() if s.kind == kind), None)
                    for kind in KINDS}
        return ModelsResponse(models=[ModelInfo(**s.info()) for s in self.served.values()], defaults=defaults,
                              settings=SETTINGS.public())

    def _pick(self, name: Optional[str], kind: str) -> Served:
        """The served model a request names (or the first of `kind`); 400 on `model` listing valid ones."""
        valid = [s.name for s in self.served.values() if s.kind == kind]
        if name is None and valid:
            return self.served[valid[0]]
        if name in valid:
            return self.served[name]
        if name is None:
            raise field_error("model", None, f"this server serves no {kind} model; served: {list(self.served)}")
        raise field_error("model", name, f"unknown {kind} model {name!r}; valid: {valid}")


bentoml_internals.brief_client_errors()  # 4xx: one INFO line each, not an ERROR with a traceback
Generator.add_asgi_middleware(
    RequestLimits, max_bytes=SETTINGS.max_json_bytes, max_upload_bytes=SETTINGS.max_upload_bytes + MULTIPART_OVERHEAD,
    uploads=UPLOADS, json_routes=[api.route for api in Generator.apis.values() if api.route not in UPLOADS],
    body_timeout_s=SETTINGS.body_timeout_s, max_uploads=SETTINGS.max_uploads,
    overload_hint=f" (GANFORGE_MAX_LATENCY_MS={SETTINGS.max_latency_ms})",
    timeout_hint=f" (GANFORGE_TIMEOUT={SETTINGS.timeout_s} s)", ranged_routes=["/augment/result"])
Generator.add_asgi_middleware(PublishedDocument, kinds=KINDS_SERVED)  # /docs.json: the document of service/openapi.py
