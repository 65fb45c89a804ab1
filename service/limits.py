"""ASGI middleware bounding what one request can make the server hold, before BentoML parses anything.

- Every request body is read into memory up to a per-route byte limit (upload routes get a larger one)
  and refused with 413 beyond it, whether or not the client sent Content-Length.
- On upload routes the file field must be a real multipart file part: BentoML would otherwise accept a
  URL string there and download it, with no size limit, from the server.
Errors use BentoML's validation-error shape: {"error": ..., "detail": [{"type", "loc", "msg"}]}.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # BentoML parses both as forms


async def _reply(send: Send, status: int, error: str, field: str | None = None, kind: str = "invalid_request") -> None:
    payload: dict[str, Any] = {"error": error}
    if field:
        payload["detail"] = [{"type": kind, "loc": [field], "msg": error}]
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """Bounded request bodies for the whole app; `uploads` maps route path -> its file field."""

    def __init__(self, app: Any, max_bytes: int, max_upload_bytes: int, uploads: dict[str, str]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes
        self.uploads = uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        file_field = self.uploads.get(path)
        limit = self.max_upload_bytes if file_field else self.max_bytes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _reply(send, 400, f"invalid Content-Length {declared!r}")
                return
            if int(declared) > limit:
                await _reply(send, 413, f"request body of {int(declared)} bytes; the limit for {path} is {limit}")
                return
        chunks, total = [], 0
        while True:  # read the body here (bounded) and replay it to the app below
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await _reply(send, 413, f"request body over {limit} bytes, the limit for {path}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if file_field and body:
            problem = await _file_field_problem(scope, body, file_field)
            if problem:
                await _reply(send, 400, problem, field=file_field, kind="file_required")
                return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect like the real channel

        await self.app(scope, replay, send)


async def _file_field_problem(scope: Scope, body: bytes, file_field: str) -> str | None:
    """Why a multipart body's `file_field` is unacceptable (not a file part, several files), or None."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    content_type = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"content-type"),
                        "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in FORM_TYPES:
        return None  # JSON and other bodies cannot carry a file: BentoML's own validation answers them

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, receive).form(max_files=1, max_fields=16)
    except Exception as e:  # starlette's MultiPartException / HTTPException for malformed or oversized parts
        return f"malformed multipart body: {getattr(e, 'detail', None) or e}"
    try:
        values = form.getlist(file_field)
        if len(values) != 1 or not isinstance(values[0], UploadFile):
            return f"'{file_field}' must be exactly one uploaded file (e.g. curl -F {file_field}=@picture.png)"
        return None
    finally:
        await form.close()
