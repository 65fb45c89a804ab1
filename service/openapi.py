"""The OpenAPI document the service publishes at /docs.json (and that Swagger UI at / shows), built from the
same Pydantic models that validate the requests and shape the responses, so it describes what the service
really accepts and sends: every route's request body, every response body (nullable fields as nullable, the
string and dict forms of `class_name` / `per_class`), every error status with its one error shape, the
binary outputs and their headers. BentoML's generated document declared OpenAPI 3.0 with 3.1 constructs
(`type: "null"`), non-standard `root_input` keys, error bodies of the wrong shape, no 408/409/413/415/429/503/
504 and the internal route; `tests/service/test_openapi.py` validates real responses of every route against
this document and `tests/service/test_fuzz.py` fuzzes the server from it (schemathesis).
"""
from __future__ import annotations

import json
from importlib import metadata
from typing import Any, Awaitable, Callable

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import schemas

TITLE = "ganforge"
DESCRIPTION = (
    "Class-conditional GAN generation, image-to-image translation and durable augmentation jobs.\n\n"
    "Every API route is `POST` with a JSON body (`/translate`: multipart). Image *i* of a request with `seed` "
    "*s* uses seed *s + i*, the same image `ganforge sample` draws. Every error answer is one JSON object "
    "`{\"error\": str, \"detail\"?: [{type, loc, msg}]}`; `loc` names the offending field. Reference: "
    "docs/http-api.md in the repository."
)
DOC_PATH = "/docs.json"

REF = "#/components/schemas/{model}"
COMMON_ERRORS = {400: "invalid request: the message and `detail[].loc` name the field",
                 408: "the request body stopped arriving (GANFORGE_BODY_TIMEOUT)",
                 413: "the request body is over the route's limit",
                 415: "wrong Content-Type (JSON routes take application/json, /translate multipart/form-data)",
                 500: "a server fault (logged with its traceback; the answer says nothing more)",
                 504: "the request ran past GANFORGE_TIMEOUT"}
OVERLOAD = {503: "overloaded: the request would wait longer than GANFORGE_MAX_LATENCY_MS (Retry-After: 1)"}
NOT_FOUND = {404: "no job with this id"}
CONFLICT = {409: "the job is not in a state that allows this (the message says which)"}


class Route(BaseModel):
    """What one route takes and gives, for the document."""

    path: str
    summary: str
    request: Any = None  # a Pydantic model class (JSON body), "multipart", or None (no body)
    body_required: bool = True
    response: Any = None  # a Pydantic model class, or a media type (binary body)
    media: tuple[str, ...] = ()
    response_headers: dict[str, str] = {}
    errors: dict[int, str] = {}
    partial: bool = False  # 206 / 416 for Range requests


def routes() -> list[Route]:
    s = schemas
    png = ("image/png",)
    seed_headers = {"X-Seed": "seed of the first image (also the PNG text chunk `seed`)",
                    "X-Class": "the class drawn (also the PNG text chunk `class`)"}
    return [
        Route(path="/generate", summary="n images of one class as base64 PNGs, each with its seed",
              request=s.GenerateRequest, response=s.GenerateResponse, errors=OVERLOAD),
        Route(path="/generate_image", summary="one PNG: the image for n = 1, else a grid",
              request=s.GenerateImageRequest, response="binary", media=png, response_headers=seed_headers,
              errors=OVERLOAD),
        Route(path="/translate", summary="an uploaded image through an image-to-image model; same size out",
              request="multipart", response="binary", media=png),
        Route(path="/models", summary="every served model, the defaults and the request limits",
              body_required=False, response=s.ModelsResponse),
        Route(path="/augment/submit", summary="queue a durable job of labelled synthetic images",
              request=s.AugmentRequest, response=s.JobStatus,
              errors={429: "GANFORGE_JOB_MAX_ACTIVE jobs are queued or running",
                      507: "the jobs folder's disk is full; nothing was stored"}),
        Route(path="/augment/status", summary="a job's state and progress", request=s.JobRef,
              response=s.JobStatus, errors=NOT_FOUND),
        Route(path="/augment/result", summary="the finished job's zip or npz (single-range Range supported)",
              request=s.JobRef, response="binary", media=("application/zip", "application/octet-stream"),
              errors={**NOT_FOUND, **CONFLICT, 416: "the Range is outside the file"}, partial=True),
        Route(path="/augment/cancel", summary="stop a queued or running job", request=s.JobRef,
              response=s.JobStatus, errors={**NOT_FOUND, **CONFLICT}),
        Route(path="/augment/retry", summary="queue a failed or cancelled job again", request=s.JobRef,
              response=s.JobStatus, errors={**NOT_FOUND, **CONFLICT}),
        Route(path="/augment/delete", summary="remove a finished job and its files", request=s.JobRef,
              response=s.JobDeleted, errors={**NOT_FOUND, **CONFLICT}),
        Route(path="/augment/list", summary="one page of jobs, newest first", request=s.JobPage,
              body_required=False, response=s.JobList),
    ]


def _version() -> str:
    try:
        return metadata.version("ganforge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _binary(media: tuple[str, ...]) -> dict[str, Any]:
    return {m: {"schema": {"type": "string", "format": "binary"}} for m in media}


def _only_served(components: dict[str, Any], kinds: dict[str, str]) -> None:
    """`model` fields list the served models of their kind (exactly what the server accepts)."""
    conditional = [n for n, k in kinds.items() if k == "conditional"]
    for name in ("GenerateRequest", "GenerateImageRequest", "AugmentRequest"):
        field = components.get(name, {}).get("properties", {}).get("model")
        if field and conditional:
            field["anyOf"] = [{"type": "string", "enum": conditional}, {"type": "null"}]


def document(kinds: dict[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service serving the models `kinds` names (name -> kind)."""
    table = routes()
    models = {r.request for r in table if isinstance(r.request, type)} | {schemas.ErrorResponse}
    outputs = {r.response for r in table if isinstance(r.response, type)}
    keyed = [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)]
    keyed += [(m, "serialization") for m in sorted(outputs, key=lambda m: m.__name__)]
    refs, defs = models_json_schema(keyed, ref_template=REF)
    components = defs.get("$defs", {})
    kinds = kinds or {}
    _only_served(components, kinds)
    translators = [n for n, k in kinds.items() if k == "image-to-image"]
    error = {"application/json": {"schema": refs[(schemas.ErrorResponse, "validation")]}}
    paths: dict[str, Any] = {}
    for r in table:
        op: dict[str, Any] = {"summary": r.summary, "operationId": r.path.strip("/").replace("/", "_"),
                              "tags": ["jobs" if r.path.startswith("/augment") else "images"]}
        if isinstance(r.request, type):
            op["requestBody"] = {"required": r.body_required, "content": {
                "application/json": {"schema": refs[(r.request, "validation")]}}}
        elif r.request == "multipart":
            op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["image"], "additionalProperties": False, "properties": {
                    "image": {"type": "string", "format": "binary",
                              "description": "a PNG/JPEG/BMP/GIF/WEBP file (GANFORGE_MAX_UPLOAD_BYTES, "
                                             "GANFORGE_MAX_PIXELS, GANFORGE_MAX_SIDE)"},
                    "model": {"type": "string", **({"enum": translators} if translators else
                                                   {"minLength": 1, "maxLength": 64}),
                              "description": "served image-to-image model; omitted: the first"},
                    "derive": {"type": "boolean", "default": False,
                               "description": "the upload is a target-like picture: build the model's input "
                                              "with the checkpoint's stored derivation (e.g. edges)"}}}}}}
        if isinstance(r.response, type):
            ok: dict[str, Any] = {"description": "OK", "content": {
                "application/json": {"schema": refs[(r.response, "serialization")]}}}
        else:
            ok = {"description": "OK", "content": _binary(r.media)}
        if r.response_headers:
            ok["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                             for name, text in r.response_headers.items()}
        responses: dict[str, Any] = {"200": ok}
        if r.partial:
            responses["206"] = {"description": "the requested byte range", "content": _binary(r.media),
                                "headers": {"Content-Range": {"schema": {"type": "string"},
                                                              "description": "bytes FIRST-LAST/SIZE"}}}
        for status, text in sorted({**COMMON_ERRORS, **r.errors}.items()):
            responses[str(status)] = {"description": text, "content": error}
        op["responses"] = responses
        paths[r.path] = {"post": op}
    for path, text in (("/readyz", "200 once every model is loaded"), ("/livez", "200 while the process lives"),
                       ("/healthz", "200 while the process lives")):
        paths[path] = {"get": {"summary": text, "tags": ["infrastructure"], "operationId": path.strip("/"),
                               "responses": {"200": {"description": "OK", "content": {
                                   "text/plain": {"schema": {"type": "string"}}}},
                                             "503": {"description": "not ready", "content": {
                                                 "text/plain": {"schema": {"type": "string"}}}}}}}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "tags": ["infrastructure"],
                                 "operationId": "metrics", "responses": {"200": {"description": "OK", "content": {
                                     "text/plain": {"schema": {"type": "string"}}}}}}}
    return {"openapi": "3.1.0",
            "info": {"title": TITLE, "version": _version(), "description": DESCRIPTION},
            "paths": paths, "components": {"schemas": components}}


SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>{title} {version}: HTTP API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css">
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png">
    <style>body {{ margin: 0; background: #fafafa; }} .topbar {{ display: none; }}</style>
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script>
      window.onload = function () {{
        window.ui = SwaggerUIBundle({{url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true,
          presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout"}});
      }};
    </script>
  </body>
</html>
"""  # BentoML's page hides the title (CSS), shows its own badges and names itself "BentoML Prediction Service"


Scope = dict[str, Any]
ASGI = Callable[[Scope, Callable, Callable], Awaitable[None]]


class PublishedDocument:
    """ASGI middleware answering GET /docs.json with `document()` instead of BentoML's generated one, and GET /
    with a Swagger UI page (BentoML's own static assets) titled with the project's name and version."""

    def __init__(self, app: ASGI, kinds: dict[str, str] | None = None) -> None:
        self.app = app
        self.kinds = dict(kinds or {})
        self._body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in (DOC_PATH, "/") or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if path == "/":
            body, media = SWAGGER_PAGE.format(title=TITLE, version=_version()).encode(), b"text/html; charset=utf-8"
        else:
            if self._body is None:
                self._body = json.dumps(document(self.kinds)).encode()
            body, media = self._body, b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", media), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
