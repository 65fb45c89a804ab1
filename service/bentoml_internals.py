"""The places where ganforge reaches into BentoML's private internals (checked for BentoML 1.4.39).

Nothing else in the project touches `_bentoml_impl` or private attributes. `tests/service/test_bentoml_internals.py`
runs `problems()` against the installed BentoML and a real app, so an upgrade that moves any of these fails
that test by name instead of silently slowing the service down.

1. `served_app` + `route_batcher`: the adaptive batcher of a batchable API, found through the route for it in
   the app the server gives the service (the self-client `service.to_async`'s `app`). The route's
   endpoint is `functools.partial(factory.api_endpoint_wrapper, name)`, where `factory` (BentoML's
   `ServiceAppFactory`) has `dispatchers[name]` (a `CorkDispatcher`) and `batch_infer(name, args, kwargs)`.
   /generate hands its items straight to `batch_infer`, skipping an HTTP round trip through the self-client
   (serialise, ASGI, middleware, validate, serialise back: several ms of event-loop time per request).
2. `clear_learned_wait`: the dispatcher's `optimizer.wait`, the mean first-request wait of recent batches that
   `CorkDispatcher` holds each request for, hoping for company. A request that is alone gets no company.
3. `brief_client_errors`: the name of the logger BentoML logs API exceptions with (see below).
4. `in_worker`: whether this process is a worker `bentoml serve` started (`python -m _bentoml_impl.worker.service`).
There was another: switching off the periodic session replacement of BentoML's in-process self-client
(`to_async._session_manager`, bentoml issues #5540, #5544), which the renderer used as a fallback when (1) was
not found. The fallback is gone (without (1) the service renders each request alone and logs a warning; the
test fails first), so is the reach, and /internal/render_batch is no longer reachable over HTTP at all.
"""
from __future__ import annotations

import functools
import inspect
import logging
import sys
from typing import Any, Awaitable, Callable

BatchCall = Callable[[list, bool], Awaitable[list]]


def _factory_of(route: Any) -> Any:
    endpoint = getattr(route, "endpoint", None)
    return getattr(getattr(endpoint, "func", None), "__self__", None)


def served_app(service: Any) -> Any:
    """The Starlette app a running server built for `service` (its self-client's `app`), or None when the
    class is used directly or BentoML keeps it elsewhere."""
    return getattr(getattr(service, "to_async", None), "app", None)


def route_batcher(app: Any, name: str) -> BatchCall | None:
    """`(items, alone) -> awaitable results` through the batcher behind the batchable API `name` of the
    Starlette `app`, or None when this BentoML lays its app out differently."""
    for route in getattr(getattr(app, "router", None), "routes", ()):
        factory = _factory_of(route)
        if getattr(route, "name", None) == name and callable(getattr(factory, "batch_infer", None)) \
                and name in getattr(factory, "dispatchers", {}):
            return functools.partial(_batch_infer, factory, name)
    return None


def clear_learned_wait(dispatcher: Any) -> None:
    """Make the batcher dispatch the next request at once instead of holding it for the learned wait."""
    optimizer = getattr(dispatcher, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "wait", 0) > 0:
        optimizer.wait = 0


async def _batch_infer(factory: Any, name: str, items: list, alone: bool = False) -> list:
    """Hand `items` to the route's batcher. BentoML's `CorkDispatcher` holds a request until its wait reaches
    its optimizer's `wait` (refreshed every 5 s). After a burst that is tens of ms, and the stats of the held
    requests keep it there: a client sending one request at a time waited 30 ms instead of 8
    (benchmarks/RESULTS.md). So a request that is alone clears it."""
    if alone:
        clear_learned_wait(factory.dispatchers.get(name))
    return await factory.batch_infer(name, (items,), {})


def problems(app: Any, batchable: str) -> list[str]:
    """What of the above the installed BentoML no longer provides, checked on a built `app` that has the
    batchable API `batchable`; empty when all three reaches still hold."""
    found: list[str] = []
    if route_batcher(app, batchable) is None:
        found.append(f"no route {batchable!r} whose endpoint is a partial of a factory with batch_infer and "
                     "dispatchers[name]")
    else:
        factory = next(_factory_of(r) for r in app.router.routes if getattr(r, "name", None) == batchable)
        optimizer = getattr(factory.dispatchers[batchable], "optimizer", None)
        if not isinstance(getattr(optimizer, "wait", None), (int, float)):
            found.append("CorkDispatcher has no optimizer.wait number")
        params = list(inspect.signature(factory.batch_infer).parameters)
        if params[:3] != ["name", "input_args", "input_kwargs"]:
            found.append(f"batch_infer takes {params}, not (name, input_args, input_kwargs)")
    from bentoml._internal.server import http_app

    if getattr(getattr(http_app, "logger", None), "name", None) != EXCEPTION_LOGGER \
            or not callable(getattr(http_app, "log_exception", None)):
        found.append(f"{EXCEPTION_LOGGER} no longer logs API exceptions through its module logger")
    import importlib.util

    if importlib.util.find_spec(WORKER_MODULE) is None:
        found.append(f"no module {WORKER_MODULE}: workers start differently")
    return found


# 3. BentoML logs every exception an API raises, client errors included, at ERROR with a traceback through
#    `bentoml._internal.server.http_app.log_exception` (the logger of that module). A filter on that logger turns
#    client errors (validation errors, 4xx BentoMLExceptions) and load shedding (503) into one INFO line;
#    server faults keep their traceback.
EXCEPTION_LOGGER = "bentoml._internal.server.http_app"


def _client_error(exc: BaseException | None) -> bool:
    from pydantic import ValidationError
    from bentoml.exceptions import BentoMLException

    if isinstance(exc, ValidationError):
        return True
    # 503 is load shedding (the batcher's latency budget), not a fault: one line each, like client errors
    return isinstance(exc, BentoMLException) and (int(exc.error_code) < 500 or int(exc.error_code) == 503)


class BriefClientErrors(logging.Filter):
    """One INFO line (route, method, the error's first line) for a client error; other records unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if _client_error(exc):
            first = (str(exc).strip().splitlines() or [""])[0]
            record.msg = f"{record.getMessage()}: client error {type(exc).__name__}: {first}"
            record.args = ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def brief_client_errors() -> None:
    """Install BriefClientErrors once on BentoML's API exception logger."""
    log = logging.getLogger(EXCEPTION_LOGGER)
    if not any(isinstance(f, BriefClientErrors) for f in log.filters):
        log.addFilter(BriefClientErrors())


WORKER_MODULE = "_bentoml_impl.worker.service"


def in_worker() -> bool:
    """True in a worker process of `bentoml serve` (not in tests calling the class, nor under TestClient)."""
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", None) == WORKER_MODULE
