"""ASGI middleware in front of BentoML: what one request may send and what every error answer looks like.

Requests, before BentoML parses anything:
- /internal/* routes are for the worker itself (the batched renderer is called in process): 404 from outside.
- JSON routes take `application/json` only (415 otherwise): BentoML would also parse forms, plain text and
  multipart bodies there (a cross-site HTML form could submit jobs; a binary file part made its multipart
  parser fail with a 500). Upload routes take `multipart/form-data` only.
- Every request body is read into memory up to a per-route byte limit (upload routes get a larger one) and
  refused with 413 beyond it, whether or not the client sent Content-Length. A body that stops arriving for
  `body_timeout_s` seconds (shorter than its Content-Length, or a stalled client) is answered 408 instead of
  holding the request for the whole request timeout.
- Upload routes read and process at most `max_uploads` bodies at a time (the others wait, holding nothing but
  their socket), so the memory uploads in flight hold is bounded: about max_uploads x (body + BentoML's copy
  + decoded image + model work); docs/http-api.md states the worst case.
- On upload routes the file field must be a real multipart file part: BentoML would otherwise accept a URL
  string there and download it, with no size limit, from the server.

Answers: every error body of an API route is one JSON object {"error": str, "detail"?: [{type, loc, msg}]}
(BentoML answers 404/409/429 with a one-element array and every 5xx with "An unexpected error has occurred";
both are rewritten here: 503 says the server is overloaded and adds Retry-After, 504 names the timeout, 507
says the jobs disk is full). `ranged_routes` (file downloads over POST) honour a single-range Range header.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any, Awaitable, Callable, Collection

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # BentoML parses both as forms
INTERNAL_PREFIX = "/internal/"
MAX_ERROR_BODY = 1 << 16  # error answers are small; larger ones pass through unchanged


def error_body(error: str, field: str | None = None, kind: str = "invalid_request") -> bytes:
    payload: dict[str, Any] = {"error": error}
    if field:
        payload["detail"] = [{"type": kind, "loc": [field], "msg": error}]
    return json.dumps(payload).encode()


async def _reply(send: Send, status: int, error: str, field: str | None = None, kind: str = "invalid_request",
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = error_body(error, field, kind)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _media_type(headers: dict[str, str]) -> str | None:
    value = headers.get("content-type")
    return None if value is None else value.split(";")[0].strip().lower()


class RequestLimits:
    """Bounded, typed request bodies and one error shape for the whole app.

    `uploads` maps upload route -> its file field; `json_routes` are the other API routes; `overload_hint`
    and `timeout_hint` finish the 503 and 504 messages (which setting to raise)."""

    def __init__(self, app: Any, max_bytes: int, max_upload_bytes: int, uploads: dict[str, str],
                 json_routes: Collection[str] = (), body_timeout_s: float = 10.0, max_uploads: int = 8,
                 overload_hint: str = "", timeout_hint: str = "", ranged_routes: Collection[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes
        self.uploads = uploads
        self.json_routes = frozenset(json_routes)
        self.body_timeout_s = body_timeout_s
        self.max_uploads = max_uploads
        self.uploads_in_flight = 0
        self._upload_slots: asyncio.Semaphore | None = None
        self.overload_hint = overload_hint
        self.timeout_hint = timeout_hint
        self.ranged_routes = frozenset(ranged_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.startswith(INTERNAL_PREFIX):
            await _reply(send, 404, f"no route {path}: internal routes are not served over HTTP")
            return
        file_field = self.uploads.get(path)
        if file_field is None:
            await self._admitted(scope, receive, send, path, None)
            return
        if self._upload_slots is None:  # made here: it belongs to the worker's event loop
            self._upload_slots = asyncio.Semaphore(self.max_uploads)
        async with self._upload_slots:  # waiting requests have sent nothing we hold yet
            self.uploads_in_flight += 1
            try:
                await self._admitted(scope, receive, send, path, file_field)
            finally:
                self.uploads_in_flight -= 1

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, path: str, file_field: str | None) -> None:
        api = file_field is not None or path in self.json_routes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        media = _media_type(headers)
        wanted = "multipart/form-data" if file_field else "application/json"
        if file_field and scope.get("method") == "POST" and media != wanted:
            await _reply(send, 415, f"{path} takes Content-Type {wanted}, not {media or 'none'} "
                                    f"(e.g. curl -F {file_field}=@picture.png)")
            return
        limit = self.max_upload_bytes if file_field else self.max_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _reply(send, 400, f"invalid Content-Length {declared!r}")
                return
            if int(declared) > limit:
                await _reply(send, 413, f"request body of {int(declared)} bytes; the limit for {path} is {limit}")
                return
        chunks, total = [], 0
        while True:  # read the body here (bounded in size and time) and replay it to the app below
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:
                expected = f" of the {declared} declared" if declared is not None else ""
                await _reply(send, 408, f"the request body stopped arriving: {total} bytes{expected} received, "
                                        f"then nothing for {self.body_timeout_s:g} s")
                return
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
        del chunks
        if api and not file_field and body and media is not None and media != wanted:  # an empty body carries
            #                                                          nothing, whatever its declared type
            await _reply(send, 415, f"{path} takes Content-Type {wanted}, not {media}")
            return
        if file_field and body:
            problem, rebuilt = await _checked_form(scope, body, file_field)
            if problem:
                await _reply(send, 400, problem, field=file_field, kind="file_required")
                return
            if rebuilt is not None:  # other fields sent as file parts (browsers, Swagger UI): now text fields
                body, content_type = rebuilt
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                              if k.lower() not in (b"content-type", b"content-length")]
                         + [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]}

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect like the real channel

        reply = self._uniform_errors(send) if api else send
        if path in self.ranged_routes and headers.get("range"):
            reply = _ranged(reply, headers["range"])
        await self.app(scope, replay, reply)

    def _uniform_errors(self, send: Send) -> Send:
        """`send` with error answers rewritten to one JSON object (see the module docstring)."""
        held: dict[str, Any] = {}

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"], held["body"] = message, b""
                return
            if "start" not in held or message["type"] != "http.response.body":
                await send(message)
                return
            held["body"] += message.get("body", b"")
            if message.get("more_body", False) and len(held["body"]) <= MAX_ERROR_BODY:
                return
            start, body = held.pop("start"), held.pop("body")
            status = start["status"]
            if not message.get("more_body", False):
                body, extra = self._rewritten(status, body)
                headers = [(k, v) for k, v in start.get("headers", [])
                           if k.lower() not in (b"content-length", b"content-type")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]
                start = {**start, "headers": headers}
            await send(start)
            await send({**message, "body": body})

        return wrapped

    def _rewritten(self, status: int, body: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
            data = data[0]  # BentoML's ({"error": ...},) for 4xx BentoMLExceptions
        if status == 503:
            return error_body("the server is overloaded: this request would wait longer than the latency budget "
                              f"for the model{self.overload_hint}; retry shortly"), [(b"retry-after", b"1")]
        if status == 507:  # the only 507: a submit on a full jobs disk (BentoML blanks every 5xx message)
            return error_body("the jobs folder has no space left; nothing was stored: retry once space is freed"), []
        if status == 504:
            return error_body(f"the request did not finish within the request timeout{self.timeout_hint}"), []
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return json.dumps(data).encode(), []
        text = body.decode("utf-8", "replace").strip() if not isinstance(data, (dict, list)) else ""
        return error_body(text or {404: "not found", 405: "method not allowed"}.get(status, f"HTTP {status}")), []


def _byte_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(first, last) byte of a single `bytes=` range, "unsatisfiable", or None (malformed or several ranges:
    answered with the whole file, as RFC 9110 allows)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = (part.strip() for part in spec.partition("-"))
    if not sep or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) \
            or (last and not last.isdigit()):
        return None
    if not first:  # the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n and size else "unsatisfiable"
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    return (start, end) if start < size else "unsatisfiable"


def _ranged(send: Send, header: str) -> Send:
    """`send` that turns a 200 with a Content-Length into a 206 of one byte range, slicing the body as it
    streams by (POST routes get no Range support from Starlette's FileResponse, which only ranges GET/HEAD)."""
    state: dict[str, Any] = {}

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", [])]
            length = next((v for k, v in headers if k.lower() == b"content-length"), None)
            window = _byte_range(header, int(length)) if message["status"] == 200 and length else None
            if window is None:
                await send(message)
                return
            if window == "unsatisfiable":
                state["drop"] = True
                await _reply(send, 416, f"range {header!r} is outside the {int(length)}-byte file",
                             headers=((b"content-range", f"bytes */{int(length)}".encode()),))
                return
            start, end = window
            state.update(pos=0, start=start, end=end)
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers += [(b"content-length", str(end - start + 1).encode()),
                        (b"content-range", f"bytes {start}-{end}/{int(length)}".encode())]
            await send({**message, "status": 206, "headers": headers})
            return
        if message["type"] != "http.response.body" or not ("start" in state or "drop" in state):
            await send(message)
            return
        if state.get("drop") or state.get("done"):
            return
        body = message.get("body", b"")
        pos, start, end = state["pos"], state["start"], state["end"]
        state["pos"] = pos + len(body)
        piece = body[max(0, start - pos):max(0, end + 1 - pos)]
        more = message.get("more_body", False) and state["pos"] <= end
        state["done"] = not more
        await send({"type": "http.response.body", "body": piece, "more_body": more})

    return wrapped


async def _checked_form(scope: Scope, body: bytes, file_field: str) -> tuple[str | None, tuple[bytes, bytes] | None]:
    """(why the multipart body's `file_field` is unacceptable or None, the body rebuilt or None).

    `file_field` must be exactly one file part (not a string: BentoML would download a URL given there).
    Browsers (Swagger UI's "Try it out") send every form field as a part with a filename, and Swagger UI the
    optional ones it leaves empty as empty values; BentoML would see `model` / `derive` as files, or `model`
    as an empty name, and refuse them. Such bodies are rebuilt: text fields, empty ones left out."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    if _media_type(headers) not in FORM_TYPES:
        return None, None

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, receive).form(max_files=16, max_fields=16)
    except Exception as e:  # starlette's MultiPartException / HTTPException for malformed or oversized parts
        return f"malformed multipart body: {getattr(e, 'detail', None) or e}", None
    try:
        values = form.getlist(file_field)
        if len(values) != 1 or not isinstance(values[0], UploadFile):
            return f"'{file_field}' must be exactly one uploaded file (e.g. curl -F {file_field}=@picture.png)", None
        others = [(k, v) for k, v in form.multi_items() if k != file_field]
        if not any(isinstance(v, UploadFile) or v == "" for _, v in others):
            return None, None
        boundary = "ganforge-" + secrets.token_hex(8)
        parts = []
        for name, value in others:
            text = (await value.read()).decode("utf-8", "replace") if isinstance(value, UploadFile) else value
            if text == "":  # an empty form field is a field not given (Swagger UI sends the empty optional ones)
                continue
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'.encode())
        upload = values[0]
        await upload.seek(0)
        ctype = upload.content_type or "application/octet-stream"
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                     f'filename="{upload.filename or "upload"}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
                     + await upload.read() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        return None, (b"".join(parts), f"multipart/form-data; boundary={boundary}".encode())
    finally:
        await form.close()
