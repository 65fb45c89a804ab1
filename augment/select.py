"""Sample selection: an augmentation job that keeps only the candidates passing its filters.

Off unless the job has a `Selection` (augment/spec.py). The seed contract of such a job:

    candidate j of class c uses seed  candidate_base(c) + j,   j < max_draws(c) = max_draw_factor * counts[c]
    candidate_base(c) = seed + max_draw_factor * (images asked of classes 0..c-1)

Class c's candidates are scored in order and the first counts[c] that pass become its images (image k of the
job is still the k-th, classes in index order). With max_draw_factor 1 and nothing rejected this is the plain
contract (image k = seed + k). When fewer than counts[c] of its max_draws(c) candidates can pass, the job fails
with `SelectionExhausted` (as soon as that is certain, not after drawing them all).

Every score is computed on the image as written (uint8, decoded as a reader of the files decodes it):
- `confidence`: the domain classifier's softmax probability of the requested class; passes when >= min_confidence.
- `d_logit`: the run's discriminator D(image, class); passes when >= the class's threshold, the
  (1 - d_keep_fraction) quantile of D's logits over the generator's images of that class at the fixed seeds
  0..d_calibration-1. A top-fraction rule, not discriminator rejection sampling (Azadi et al. 2019): DRS reads
  D's logit as log p_data/p_g, which holds for the optimum of the minimax loss after a calibration fine-tune;
  these runs train D with the hinge loss, whose logits are a realism score with no density-ratio meaning, so
  only their order within a class is used.

Candidates are generated and scored in fixed batches of `batch_size` candidate indices (j in [iB, (i+1)B)), so
a decision never depends on where a run started: a resumed job redraws the batch it stopped in and gets the
same images and scores (on the same device and thread count: a float32 score's last bits depend
on how its reductions are split across threads). What each chunk drew is recorded beside its marker, and the
finished folder reports it: manifest.csv (accepted: seed, candidate, scores), rejected.csv (every rejected
draw), selection.json (per class: drawn, accepted, rejected, acceptance rate; thresholds; filters).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from models.checkpoint import (CLASSIFIER, DISCRIMINATOR, discriminator_path, file_hash, image_geometry,
                               read_metadata)
from models.sampling import from_uint8, to_network

from .spec import AugmentJob, JobSpecError, Selection, _display_name

CONFIDENCE, D_LOGIT = "confidence", "d_logit"
SCORES = (CONFIDENCE, D_LOGIT)  # the score columns of a selection job's manifest and rejected.csv
CALIBRATION_NAME = "calibration.json"  # the discriminator thresholds, in the work folder while the job runs
SELECTION_NAME = "selection.json"
REJECTED_NAME = "rejected.csv"

# uint8 images (B, H, W[, C]) at native size, class indices (B,) -> (B,) float64 scores
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


class SelectionExhausted(ValueError):
    """A class cannot reach its count within its bounded number of draws."""


@dataclasses.dataclass(frozen=True)
class Draw:
    """One scored candidate."""

    label: int
    candidate: int  # j: its index among its class's candidates
    seed: int
    scores: dict[str, float]
    image: np.ndarray | None = None  # accepted draws only

    def record(self) -> list[Any]:
        return [self.label, self.candidate, self.seed, *[self.scores.get(s) for s in SCORES]]


def check_classes(what: str, theirs: list[str], generator: list[str]) -> None:
    """JobSpecError on `what` unless its class list is exactly the generator's (names and order)."""
    if list(theirs) != list(generator):
        raise JobSpecError(what, f"the {what}'s classes {list(theirs)} do not match the generator's classes "
                                 f"{list(generator)} (same names in the same order are needed)")


def check_classifier(generator_meta: dict[str, Any], meta: dict[str, Any], name: str) -> None:
    """JobSpecError('classifier') unless `meta` is a domain classifier for the generator's classes and images."""
    if meta.get("kind") != CLASSIFIER:
        raise JobSpecError("classifier", f"{name} is a {meta.get('kind')!r} checkpoint, not a {CLASSIFIER!r} one")
    check_classes("classifier", meta.get("class_names", []), generator_meta["class_names"])
    if image_geometry(meta) != image_geometry(generator_meta):
        raise JobSpecError("classifier", f"{name} classifies (channels, height, width) {image_geometry(meta)} "
                                         f"images; the generator writes {image_geometry(generator_meta)}")


def check_discriminator(generator_meta: dict[str, Any], meta: dict[str, Any], name: str) -> None:
    """JobSpecError('discriminator') unless `meta` is the discriminator of the run that made the generator."""
    if meta.get("kind") != DISCRIMINATOR:
        raise JobSpecError("discriminator", f"{name} is a {meta.get('kind')!r} checkpoint, not a "
                                            f"{DISCRIMINATOR!r} one")
    check_classes("discriminator", meta.get("class_names", []), generator_meta["class_names"])
    mine, theirs = generator_meta.get("provenance"), meta.get("provenance")
    if mine is not None and theirs is not None and (mine.get("config"), mine.get("steps")) != \
            (theirs.get("config"), theirs.get("steps")):
        raise JobSpecError("discriminator", f"{name} comes from another run or step (step {theirs.get('steps')} "
                                            f"of {(theirs.get('config') or {}).get('name')!r}) than the generator "
                                            f"(step {mine.get('steps')} of {(mine.get('config') or {}).get('name')!r})")


def checkpoint_selection(checkpoint: str | os.PathLike, meta: dict[str, Any], select: Mapping[str, Any]) -> Selection:
    """The `Selection` of `ganforge augment`: `select` holds Selection fields, `classifier` and `discriminator`
    as checkpoint paths (the discriminator defaults to the one exported beside `checkpoint`)."""
    args = dict(select)
    classifier, discriminator = args.pop("classifier", None), args.pop("discriminator", None)
    if args.get("min_confidence") is not None:
        if not classifier:
            raise JobSpecError("classifier", "min_confidence needs a domain classifier checkpoint (--classifier)")
        path = Path(classifier)
        if not (path / "model.safetensors" if path.is_dir() else path).is_file():
            raise JobSpecError("classifier", f"no classifier checkpoint at {classifier}")
        check_classifier(meta, read_metadata(classifier), str(classifier))
        args.update(classifier_sha256=file_hash(classifier), classifier=_display_name(classifier))
    elif classifier:
        raise JobSpecError("min_confidence", "a classifier was given without min_confidence (--min-confidence P)")
    if args.get("d_keep_fraction") is not None:
        path = Path(discriminator) if discriminator else discriminator_path(checkpoint)
        if not path.is_file():
            raise JobSpecError("discriminator", f"no discriminator at {path}: export it with the run "
                                                f"(export_discriminator: true) or give --discriminator")
        check_discriminator(meta, read_metadata(path), str(path))
        args.update(discriminator_sha256=file_hash(path), discriminator=str(path))
    elif discriminator:
        raise JobSpecError("d_keep_fraction", "a discriminator was given without d_keep_fraction")
    return Selection(**{k: v for k, v in args.items() if v is not None})


# --- scorers -------------------------------------------------------------------------------------------------

def classifier_scorer(module: torch.nn.Module, meta: dict[str, Any]) -> Scorer:
    """Softmax probability of each image's own class under a domain classifier."""
    device = next(module.parameters()).device

    @torch.no_grad()
    def score(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        logits = module(from_uint8(images, meta).to(device)).float()
        p = torch.softmax(logits, dim=1)[torch.arange(len(labels)), torch.as_tensor(labels, device=device)]
        return p.cpu().double().numpy()

    return score


def discriminator_scorer(module: torch.nn.Module, meta: dict[str, Any]) -> Scorer:
    """D's logit for each (image, class), the image padded back to the model's resolution as in training."""
    device = next(module.parameters()).device

    @torch.no_grad()
    def score(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        y = torch.as_tensor(labels, dtype=torch.long, device=device)
        return module(to_network(images, meta).to(device), y).float().cpu().double().numpy()

    return score


def _lazy(path: str | os.PathLike, sha: str, make: Callable[..., Scorer], device: str | torch.device) -> Scorer:
    """A scorer that loads its checkpoint on first use, after checking it is the one the job recorded."""
    from models.checkpoint import load

    loaded: list[Scorer] = []

    def score(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if not loaded:
            actual = file_hash(path)
            if actual != sha:
                raise ValueError(f"{path} is not the checkpoint this job was made with (sha256 {actual}, the job "
                                 f"recorded {sha})")
            loaded.append(make(*load(path, device)))
        return loaded[0](images, labels)

    return score


def load_scorers(selection: Selection, classifier: str | os.PathLike | None,
                 discriminator: str | os.PathLike | None, device: str | torch.device = "cpu") -> dict[str, Scorer]:
    """The scorers a selection needs, loaded on first use from these files after checking their sha256."""
    files = {CONFIDENCE: (classifier, selection.classifier_sha256, classifier_scorer),
             D_LOGIT: (discriminator, selection.discriminator_sha256, discriminator_scorer)}
    scorers: dict[str, Scorer] = {}
    for name in selection.filters:
        path, sha, make = files[name]
        if path is None:
            what = "classifier" if name == CONFIDENCE else "discriminator"
            raise ValueError(f"the job filters by {name} but no {what} checkpoint was given to run it")
        scorers[name] = _lazy(path, sha, make, device)
    return scorers


# --- drawing -------------------------------------------------------------------------------------------------

Render = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _batched(render: Render, scorers: Mapping[str, Scorer], names: tuple[str, ...], labels: np.ndarray,
             seeds: np.ndarray, batch_size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    images, scores = [], {n: [] for n in names}
    for a in range(0, len(seeds), batch_size):
        batch = np.asarray(render(labels[a : a + batch_size], seeds[a : a + batch_size]))
        images.append(batch)
        for n in names:
            scores[n].append(np.asarray(scorers[n](batch, labels[a : a + batch_size]), dtype=np.float64))
    return np.concatenate(images), {n: np.concatenate(v) for n, v in scores.items()}


def thresholds(job: AugmentJob, render: Render, scorers: Mapping[str, Scorer]) -> dict[str, list[float | None]]:
    """Per-class pass thresholds: min_confidence for `confidence`; for `d_logit` the (1 - d_keep_fraction)
    quantile of D's logits over the generator's images of the class at seeds 0..d_calibration-1."""
    sel = job.selection
    out: dict[str, list[float | None]] = {}
    if sel.min_confidence is not None:
        out[CONFIDENCE] = [float(sel.min_confidence) if n else None for n in job.counts]
    if sel.d_keep_fraction is not None:
        seeds = np.arange(sel.d_calibration, dtype=np.int64)
        out[D_LOGIT] = []
        for c, n in enumerate(job.counts):
            if not n:
                out[D_LOGIT].append(None)
                continue
            _, scores = _batched(render, scorers, (D_LOGIT,), np.full(len(seeds), c, dtype=np.int64), seeds,
                                 job.batch_size)
            out[D_LOGIT].append(float(np.quantile(scores[D_LOGIT], 1 - sel.d_keep_fraction, method="lower")))
    return out


def draw(job: AugmentJob, render: Render, scorers: Mapping[str, Scorer], limits: Mapping[str, list],
         start: int = 0, first_candidate: int = 0, rejected: list[Draw] | None = None) -> Iterator[Draw]:
    """Accepted draws for images start, start+1, ... of `job`, in order. Rejected draws are appended to
    `rejected` as they happen. `first_candidate`: where image `start`'s class resumes its candidates."""
    sel = job.selection
    names = sel.filters
    labels = job.labels()
    stops = np.cumsum(job.counts)
    k = start
    B = job.batch_size
    while k < job.total:
        c = int(labels[k])
        stop, base, limit = int(stops[c]), job.candidate_base(c), job.max_draws(c)
        j = first_candidate if k == start else 0
        while k < stop:
            if limit - j < stop - k:
                accepted = job.counts[c] - (stop - k)
                raise SelectionExhausted(
                    f"class {job.class_names[c]!r}: {accepted} of its {j} candidates passed "
                    f"({accepted / max(j, 1):.1%}); {stop - k} more are needed but only {limit - j} draws are "
                    f"left (max_draw_factor {sel.max_draw_factor} x {job.counts[c]} images). Lower the "
                    f"threshold or raise max_draw_factor")
            a = (j // B) * B  # the fixed candidate batch holding j
            b = min(a + B, limit)
            idx = np.arange(a, b, dtype=np.int64)
            images, scores = _batched(render, scorers, names, np.full(b - a, c, dtype=np.int64), base + idx, B)
            for i in range(j - a, b - a):
                s = {n: float(scores[n][i]) for n in names}
                d = Draw(c, a + i, base + a + i, s)
                j = a + i + 1
                if all(s[n] >= limits[n][c] for n in names):
                    yield dataclasses.replace(d, image=images[i])
                    k += 1
                    if k == stop:
                        break
                elif rejected is not None:
                    rejected.append(d)
