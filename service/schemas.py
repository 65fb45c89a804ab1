"""Pydantic schemas of the HTTP API. Malformed input fails here, before any model runs, with HTTP 400
naming the field; checks that need a loaded model (class names, model kinds) raise `field_error`."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, Strict, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from augment.spec import MAX_DRAW_FACTOR
from models.sampling import MAX_SEED

from .config import SETTINGS

TRUNCATION_RANGE = (0.1, 5.0)  # below 0.1 rejection sampling crawls; above ~5 truncation does nothing
MAX_SCALE = 8

ClassName = Union[Annotated[int, Strict()], Annotated[str, Strict(), Field(min_length=1, max_length=64)]]
Seed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)]
Truncation = Annotated[float, Strict(), Field(ge=TRUNCATION_RANGE[0], le=TRUNCATION_RANGE[1], allow_inf_nan=False)]
ModelName = Annotated[str, Strict(), Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class GenerateRequest(_Strict):
    """Images of one class from a class-conditional model; image i uses seed + i."""

    class_name: ClassName = Field(description="class name (case-insensitive, aliases like 'tshirt') or index",
                                  examples=["sneaker", 7])
    n: Annotated[int, Strict(), Field(ge=1, le=SETTINGS.max_n)] = Field(1, description="number of images")
    seed: Optional[Seed] = Field(None, description="seed of the first image; omitted: the server picks one "
                                                   "and returns it")
    model: Optional[ModelName] = Field(None, description="served model name (POST /models lists them); "
                                                         "omitted: the first class-conditional one")
    truncation: Optional[Truncation] = Field(None, description="truncation trick: |z| above it is resampled; "
                                                               "lower = more typical, less varied")

    @field_validator("seed")
    @classmethod
    def _seeds_fit(cls, seed: Optional[int], info: ValidationInfo) -> Optional[int]:
        n = info.data.get("n", 1)
        if seed is not None and seed + n - 1 > MAX_SEED:
            raise PydanticCustomError("seed_range", "seed + n - 1 must be <= {max}", {"max": MAX_SEED})
        return seed


class GenerateImageRequest(GenerateRequest):
    """`GenerateRequest` rendered as one PNG: the image itself for n = 1, else a grid."""

    nrow: Optional[Annotated[int, Strict(), Field(ge=1, le=SETTINGS.max_n)]] = Field(
        None, description="images per grid row; omitted: about sqrt(n)")
    scale: Annotated[int, Strict(), Field(ge=1, le=MAX_SCALE)] = Field(
        1, description="integer nearest-neighbour upscaling, for looking at 28-pixel images in a browser")


class RenderItem(_Strict):
    """One image for the internal batched renderer: what /generate sends it, one item per image."""

    model: ModelName
    label: Annotated[int, Strict(), Field(ge=0)]
    seed: Seed
    truncation: Optional[Truncation] = None
    encoding: Literal["png", "raw"] = Field(
        "png", description="png: a base64 PNG (what /generate returns); raw: the base64 uint8 pixels, C order, "
                           "at the model's native size (what /generate_image tiles, with no PNG round trip)")


class GeneratedImage(BaseModel):
    seed: int = Field(description="reproduces this image alone with n = 1")
    png: str = Field(description="base64-encoded PNG")


class GenerateResponse(BaseModel):
    model: str
    class_index: int
    class_name: str
    truncation: Optional[float]
    width: int
    height: int
    channels: int
    images: list[GeneratedImage]


class ModelInfo(BaseModel):
    name: str
    tag: str = Field(description="BentoML model store tag (name:version)")
    kind: str = Field(description="'conditional' or 'image-to-image'")
    architecture: str
    class_names: Optional[list[str]] = None
    task: Optional[dict[str, Any]] = Field(None, description="image-to-image: channels, derivation")
    img_resolution: int
    img_channels: int
    native_size: Optional[list[int]] = None
    provenance: dict[str, Any]
    metrics: dict[str, Any]
    sha256: Optional[str] = None
    device: str
    dtype: str = Field(description="precision the backend computes in ('float32', 'bfloat16', or 'a+b' when "
                                   "batch sizes are split between backends)")
    backend: dict[str, Any] = Field(description="inference backend: name, precision, which backend runs each "
                                                "timed batch size (`by_batch_size`), each backend's runtime")
    precision_check: dict[str, Any] = Field(description="the backend choice's evidence at start-up: each "
                                                        "candidate's probe images vs float32 eager (grey levels, "
                                                        "tolerance) and, for GANFORGE_BACKEND=auto, its seconds "
                                                        "per batch size")
    forward_passes: int = Field(description="generator forward passes in this worker since it started")
    images: int = Field(description="images produced in this worker since it started")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    defaults: dict[str, Optional[str]] = Field(description="model used when a request names none, per kind")
    settings: dict[str, Any] = Field(description="request limits and batching settings")


# --- augmentation jobs -------------------------------------------------------------------------------------

JobCount = Annotated[int, Strict(), Field(ge=1, le=SETTINGS.job_max_images)]
JobId = Annotated[str, Strict(), Field(pattern=r"^\d{8}-\d{6}-[0-9a-f]{8}$", description="as returned by submit")]


class SelectionRequest(_Strict):
    """Sample selection of a job (augment/select.py): every filter given must pass; none given: no selection."""

    min_confidence: Optional[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]] = Field(
        None, description="keep an image only when `classifier` gives its class a probability >= this")
    classifier: Optional[ModelName] = Field(None, description="domain classifier in the BentoML model store "
                                                              "(ganforge export CLASSIFIER --name NAME)")
    d_keep_fraction: Optional[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]] = Field(
        None, description="keep each class's top fraction by the model's own discriminator (exported with it)")
    max_draw_factor: Optional[Annotated[int, Strict(), Field(ge=1, le=MAX_DRAW_FACTOR)]] = Field(
        None, description="candidates drawn per image asked, at most (default 20); fewer passing fails the job")


class AugmentRequest(_Strict):
    """A batch of labelled synthetic images. Give `per_class` or `total`; image k of the job (classes in
    index order) uses seed + k, like `ganforge augment` and /generate."""

    per_class: Optional[Union[JobCount, Annotated[dict[Annotated[str, Field(min_length=1, max_length=64)],
                                                       Annotated[int, Strict(), Field(ge=0, le=SETTINGS.job_max_images)]],
                                                  Field(min_length=1, max_length=1024)]]] = Field(
        None, description="images per class: one number for every class (or for `classes`), or "
                          "{class name or index: count}", examples=[{"sneaker": 500, "bag": 200}, 100])
    total: Optional[JobCount] = Field(None, description="images in all, split evenly over the classes (or "
                                                        "`classes`); the first classes get one more when it "
                                                        "does not divide")
    classes: Optional[Annotated[list[ClassName], Field(min_length=1, max_length=1024)]] = Field(
        None, description="only these classes (with a number `per_class` or `total`)")
    seed: Optional[Seed] = Field(None, description="seed of image 0; omitted: the server picks one (see status)")
    model: Optional[ModelName] = Field(None, description="served class-conditional model; omitted: the first")
    truncation: Optional[Truncation] = None
    format: Literal["imagefolder", "npz"] = Field(
        "imagefolder", description="imagefolder: result is a zip of class folders of PNGs + manifest.csv; "
                                   "npz: the arrays of `ganforge sample` (images, labels, class_names, seeds)")
    keep_files: Annotated[bool, Strict()] = Field(
        False, description="keep the job's unpacked out/ folder on the server beside the result (default: "
                           "removed once the result is published, it holds the same images)")
    selection: Optional[SelectionRequest] = Field(
        None, description="sample selection: keep only the candidates that pass these filters (off by default)")

    @model_validator(mode="after")
    def _one_count(self) -> "AugmentRequest":
        if (self.per_class is None) == (self.total is None):
            raise ValueError("give exactly one of per_class and total")
        if self.classes is not None and isinstance(self.per_class, dict):
            raise ValueError("classes goes with a number per_class or total; a per_class dict names its classes")
        return self


class JobRef(_Strict):
    job_id: JobId


class JobPage(_Strict):
    limit: Annotated[int, Strict(), Field(ge=1, le=1000)] = Field(100, description="jobs per page")
    before: Optional[JobId] = Field(None, description="the `next` of the previous page: jobs older than it")


class JobDeleted(BaseModel):
    job_id: str
    deleted: bool
    state: str = Field(description="the state it had: done | failed | cancelled")


class JobStatus(BaseModel):
    job_id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    done: int = Field(description="images safely on disk (whole chunks of GANFORGE_JOB_CHUNK_SIZE)")
    total: int
    progress: float = Field(description="done / total")
    model: str
    model_tag: str
    checkpoint_sha256: str
    format: str
    seed: int
    truncation: Optional[float]
    per_class: dict[str, int]
    created: str
    started: Optional[str] = None
    finished: Optional[str] = None
    attempts: int = Field(0, description="times a worker started or resumed it")
    interruptions: int = Field(0, description="times its worker died while running it (then it resumed)")
    error: Optional[str] = Field(None, description="why it failed")
    note: Optional[str] = None
    result: Optional[str] = Field(None, description="file name of the result (POST /augment/result) once done")
    result_bytes: Optional[int] = None
    keep_files: bool = Field(False, description="out/ is kept beside the result")


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="newest first (ids start with the submission time)")
    next: Optional[str] = Field(None, description="pass as `before` for the next page; null on the last page")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # pydantic adds e.g. `url`

    type: str
    loc: list[Union[str, int]] = Field(description="the field: its name, then indices/keys inside it")
    msg: str


class ErrorResponse(BaseModel):
    """Every error answer of every route (4xx and 5xx)."""

    error: str = Field(description="what went wrong, in a sentence")
    detail: Optional[list[ErrorDetail]] = Field(None, description="per field, for validation errors (400)")


def field_error(field: str | tuple[str, ...], value: Any, message: str, title: str = "request") -> ValidationError:
    """A ValidationError on one request field (a tuple: a nested one); BentoML answers it like schema errors
    (HTTP 400, `detail`)."""
    error = PydanticCustomError("invalid_value", "{reason}", {"reason": message})  # braces in `message` stay literal
    detail = InitErrorDetails(type=error, loc=(field,) if isinstance(field, str) else tuple(field), input=value)
    return ValidationError.from_exception_data(title, [detail])
