"""The HTTP half of deploy/container_check.sh: wait for a started container, call every surface, report.

    python deploy/container_calls.py --url http://127.0.0.1:3917 --started EPOCH_S --report report.json

Standard library only (urllib), so it needs nothing the host's Python lacks. Exit 1 if any call answered
otherwise than expected; the report says which.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
import struct


def call(url: str, method: str = "GET", body: bytes | None = None, content_type: str | None = None,
         timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post_json(url: str, data: dict) -> tuple[int, dict[str, str], bytes]:
    return call(url, "POST", json.dumps(data).encode(), "application/json")


def png_gray(width: int, height: int) -> bytes:
    """A small grey PNG (a diagonal gradient), written by hand: no PIL on the host needed."""
    rows = b"".join(b"\x00" + bytes((7 * (x + y)) % 256 for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--started", type=float, required=True, help="time.time() when `podman run` was called")
    p.add_argument("--report", required=True)
    p.add_argument("--ready-timeout", type=float, default=600)
    for extra in ("--image", "--tag", "--size", "--build-seconds", "--base"):
        p.add_argument(extra)
    args = p.parse_args()
    url = args.url.rstrip("/")
    report: dict = {"image": args.image, "bento": args.tag, "base_image": args.base,
                    "image_size_bytes": int(args.size) if args.size else None,
                    "build_seconds": int(args.build_seconds) if args.build_seconds else None, "checks": {}}
    checks = report["checks"]

    deadline = time.time() + args.ready_timeout
    while True:
        try:
            status, _, _ = call(url + "/readyz", timeout=5)
        except OSError:
            status = None
        if status == 200:
            break
        if time.time() > deadline:
            checks["readyz"] = {"ok": False, "status": status}
            return finish(report, args.report)
        time.sleep(0.25)
    report["cold_start_s"] = round(time.time() - args.started, 2)
    checks["readyz"] = {"ok": True, "status": 200}

    status, _, body = call(url + "/models", "POST", b"{}", "application/json")
    models = json.loads(body) if status == 200 else {}
    served = {m["name"]: {"kind": m["kind"], **{k: m.get(k) for k in ("device", "dtype", "backend")}}
              for m in models.get("models", [])}
    checks["models"] = {"ok": status == 200 and len(served) == 2, "status": status, "served": served}

    start = time.perf_counter()
    status, _, body = post_json(url + "/generate", {"class_name": "sneaker", "n": 4, "seed": 7})
    ms = 1000 * (time.perf_counter() - start)
    ok = status == 200
    if ok:
        data = json.loads(body)
        pngs = [base64.b64decode(i["png"]) for i in data["images"]]
        ok = len(pngs) == 4 and all(p.startswith(b"\x89PNG") for p in pngs) and data["class_name"] == "Sneaker"
    checks["generate"] = {"ok": ok, "status": status, "ms": round(ms, 1)}

    status, headers, body = post_json(url + "/generate_image", {"class_name": "bag", "n": 1, "seed": 3})
    checks["generate_image"] = {"ok": status == 200 and body.startswith(b"\x89PNG"), "status": status,
                                "x_seed": headers.get("x-seed") or headers.get("X-Seed")}

    form, ctype = multipart("image", "edges.png", png_gray(40, 24))
    status, _, body = call(url + "/translate", "POST", form, ctype)
    checks["translate"] = {"ok": status == 200 and body.startswith(b"\x89PNG"), "status": status,
                           "bytes": len(body)}

    status, _, body = post_json(url + "/augment/submit", {"per_class": 3, "classes": ["sneaker", "bag"],
                                                          "seed": 11, "format": "imagefolder"})
    job = json.loads(body) if status == 200 else {}
    state, polls = job.get("state"), 0
    while state in ("queued", "running") and polls < 600:
        time.sleep(0.5)
        polls += 1
        s, _, b = post_json(url + "/augment/status", {"job_id": job["job_id"]})
        state = json.loads(b).get("state") if s == 200 else f"status {s}"
    ok, names = state == "done", []
    if ok:
        s, _, b = post_json(url + "/augment/result", {"job_id": job["job_id"]})
        ok = s == 200
        if ok:
            with zipfile.ZipFile(io.BytesIO(b)) as z:
                names = sorted(z.namelist())
            ok = sum(n.endswith(".png") for n in names) == 6 and "manifest.csv" in names
    checks["augment_job"] = {"ok": ok, "submit_status": status, "state": state, "files": len(names)}
    return finish(report, args.report)


def finish(report: dict, path: str) -> int:
    report["ok"] = all(c.get("ok") for c in report["checks"].values()) and len(report["checks"]) == 6
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
