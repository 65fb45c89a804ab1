"""Sample selection for /augment/submit (augment/select.py): a request's filters -> the job's `Selection`, and
the scorers a job runs with.

The classifier is a model in the BentoML store (`ganforge export CLASSIFIER --name NAME`); the discriminator is
the one exported beside the served generator, which `ganforge export` copies into its store folder. Neither is
needed to serve: a job that asks for a filter the server cannot run is refused at submit (400 on the field).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from augment import JobSpecError, Selection, check_classifier, check_discriminator, load_scorers
from models.checkpoint import discriminator_path, file_hash, read_metadata

from . import store
from .config import check_model_name
from .schemas import field_error


def _store_folder(name: str) -> Optional[Path]:
    model = store.stored(name)
    return None if model is None else Path(model.path)


def _error(field: str, value: Any, message: str):
    return field_error(("selection", field), value, message)


def _check(check, served: Any, path: Path, field: str, value: Any, name: str) -> None:
    """`check(generator_meta, meta, name)` on the checkpoint at `path`; a ValidationError on `field` if it fails."""
    try:
        check(served.meta, read_metadata(path), name)
    except (JobSpecError, ValueError) as e:
        raise _error(field, value, str(e)) from None


def request_selection(request: Any, served: Any) -> Optional[Selection]:
    """The `Selection` an /augment/submit request's `selection` asks for (None: no filter), checked against the
    served generator; a ValidationError on the offending field (`selection.<field>`) otherwise."""
    request = request.selection
    if request is None:
        return None
    if request.min_confidence is None and request.classifier is None and request.d_keep_fraction is None:
        if request.max_draw_factor is not None:
            raise _error("max_draw_factor", request.max_draw_factor, "max_draw_factor goes with a filter: "
                              "min_confidence (with classifier) or d_keep_fraction")
        return None
    args: dict[str, Any] = {}
    if request.min_confidence is not None or request.classifier is not None:
        if request.classifier is None:
            raise _error("classifier", None, "min_confidence needs `classifier`: a classifier model in the "
                                                  "BentoML store (ganforge export CLASSIFIER --name NAME)")
        if request.min_confidence is None:
            raise _error("min_confidence", None, "a classifier filters with min_confidence (0 < p <= 1)")
        try:
            check_model_name(request.classifier)
        except ValueError as e:
            raise _error("classifier", request.classifier, str(e)) from None
        folder = _store_folder(request.classifier)
        if folder is None:
            raise _error("classifier", request.classifier, f"no model {request.classifier!r} in the BentoML "
                              f"model store; export one: ganforge export CLASSIFIER --name {request.classifier}")
        _check(check_classifier, served, folder, "classifier", request.classifier, request.classifier)
        args.update(min_confidence=request.min_confidence, classifier_sha256=file_hash(folder),
                    classifier=request.classifier)
    if request.d_keep_fraction is not None:
        folder = _store_folder(served.name)
        path = discriminator_path(folder) if folder is not None else None
        if path is None or not path.is_file():
            raise _error("d_keep_fraction", request.d_keep_fraction, f"model {served.name!r} was exported "
                              "without its discriminator (train with export_discriminator: true or run ganforge "
                              "export-discriminator, then ganforge export again)")
        _check(check_discriminator, served, path, "d_keep_fraction", request.d_keep_fraction, served.name)
        args.update(d_keep_fraction=request.d_keep_fraction, discriminator_sha256=file_hash(path),
                    discriminator=served.name)
    if request.max_draw_factor is not None:
        args["max_draw_factor"] = request.max_draw_factor
    try:
        return Selection(**args)
    except JobSpecError as e:
        raise _error(e.field, getattr(request, e.field, None), str(e)) from None


def job_scorers(selection: Optional[Selection], served: Any) -> Optional[dict]:
    """The scorers a job's selection runs with, from the store (their sha256 is checked when they load)."""
    if selection is None:
        return None
    classifier = None
    if selection.classifier_sha256:
        classifier = _store_folder(selection.classifier)
        if classifier is None:
            raise ValueError(f"classifier {selection.classifier!r} is not in the model store any more")
    folder = _store_folder(served.name)
    discriminator = discriminator_path(folder) if folder is not None and selection.discriminator_sha256 else None
    return load_scorers(selection, classifier, discriminator, served.device)
