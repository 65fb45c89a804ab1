"""`ganforge` command line. Each subcommand assembles its arguments and calls one library function."""
from __future__ import annotations

import argparse
import json
import re
import sys


def _cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config, replace
    from .loop import train

    cfg = load_config(args.config, args.set)
    if args.device:
        cfg = replace(cfg, {"device": args.device})
    print(f"exported {train(cfg, resume=args.resume)}")


def _cmd_train_classifier(args: argparse.Namespace) -> None:
    from .classifier import train_classifier

    out = args.out or f"runs/{args.dataset.replace('-', '_')}_classifier"
    report = train_classifier(args.dataset, args.root, out, epochs=args.epochs, batch_size=args.batch_size,
                              width=args.width, seed=args.seed, device=args.device or "auto",
                              resolution=args.resolution, fit=args.fit, workers=args.workers, steps=args.steps)
    report["checkpoint"] = out
    print(json.dumps(report))


def _cmd_sample(args: argparse.Namespace) -> None:
    from .sample import sample_to_files

    sample_to_files(args.checkpoint, args.per_class, args.seed, args.out, args.grid, args.classes,
                    args.truncation, args.device or "auto", args.backend)


def parse_per_class(text: str) -> int | dict[str, int]:
    """CLI value of --per-class: `500` or a JSON object `{"sneaker": 500, "bag": 200}`."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"--per-class must be a number or a JSON object like '{{\"sneaker\": 500}}', "
                         f"got {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--per-class must be a number or a JSON object, got {text!r}")
    return value


def _cmd_augment(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from augment import augment_checkpoint

    per_class = parse_per_class(args.per_class) if args.per_class is not None else None
    chosen = {"classifier": args.classifier, "min_confidence": args.min_confidence,
              "discriminator": args.discriminator, "d_keep_fraction": args.d_keep_fraction}
    select = None
    if any(v is not None for v in chosen.values()):  # sample selection is off unless a filter is asked for
        select = {**chosen, "max_draw_factor": args.max_draw_factor, "d_calibration": args.d_calibration}
    with tqdm(desc="augment", unit="img") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = augment_checkpoint(args.checkpoint, args.out, args.device or "auto", progress,
                                    backend=_backend(args.backend, args.batch_size),
                                    per_class=per_class, total=args.total, classes=args.classes, seed=args.seed,
                                    truncation=args.truncation, format=args.format, chunk_size=args.chunk_size,
                                    batch_size=args.batch_size, select=select)
    print(json.dumps(report))


def _backend(name: str, batch_size: int):
    """`(module, meta, device) -> runner` for `name` (backends.choose, timed at the command's batch size)."""
    from backends import choose

    return lambda module, meta, device: choose(module, meta, device, name, (batch_size,))


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="torch",
                   help="what runs the generator: torch (float32 eager, the reference: bit-identical to the "
                        "service on GANFORGE_BACKEND=torch), torch-autocast, onnxruntime, or auto (the fastest "
                        "that passes the precision check, timed at start-up; see docs/deploy.md)")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate

    report = evaluate(args.checkpoint, classifier=args.classifier, per_class=args.per_class, seed=args.seed,
                      features=args.features, device=args.device or "auto", record=args.record,
                      truncation=args.truncation, inception_weights=args.inception_weights,
                      max_real=args.max_real)
    text = json.dumps(report, indent=2)
    if args.json:
        from models.checkpoint import atomic_write

        atomic_write(args.json, lambda tmp: tmp.write_text(text + "\n"))
    print(text)


def _cmd_translate(args: argparse.Namespace) -> None:
    from .translate import translate_files, translate_to_npz

    if args.dataset or args.paired:
        if args.images:
            raise ValueError("give image files or --dataset, not both")
        translate_to_npz(args.checkpoint, args.dataset, args.split, args.out, args.root, args.paired, args.limit,
                         args.device or "auto")
    elif args.images:
        for path in translate_files(args.checkpoint, args.images, args.out, args.derive, args.device or "auto"):
            print(path)
    else:
        raise ValueError("nothing to translate: give image files or --dataset NAME")


def _cmd_info(args: argparse.Namespace) -> None:
    from models import read_metadata

    print(json.dumps(read_metadata(args.checkpoint), indent=2))


# The model store belongs to the service: it registers its export under this entry point (pyproject.toml), so
# `ganforge export` reaches it without `training` importing `service`.
STORE_EXPORT = ("ganforge.export", "store")


def _store_export():
    """The serving side's `export(checkpoint, name, force) -> (tag, created)`, found by its entry point."""
    from importlib.metadata import entry_points

    group, name = STORE_EXPORT
    found = entry_points(group=group, name=name)
    if not found:
        raise ValueError(f"no model-store export is installed (entry point {name!r} in group {group!r}); "
                         f"install ganforge with `make install` or `pip install -e .`")
    return next(iter(found)).load()


def _cmd_export(args: argparse.Namespace) -> None:
    if args.format or args.out:  # a self-contained file for other runtimes (backends/export.py)
        if not (args.format and args.out) or args.name:
            raise ValueError("give --format onnx|torchscript with --out FILE (a file), or --name NAME (the "
                             "BentoML model store), not both")
        from backends import export_model

        report = export_model(args.checkpoint, args.out, args.format)
        parity = report["parity"]
        print(f"exported {args.checkpoint} as {args.format} to {args.out} (parity with PyTorch: max abs diff "
              f"{parity['max_abs_diff']:.2g} <= {parity['bound']:g} at input shapes {parity['input_shapes']})")
        return
    if not args.name:
        raise ValueError("give --name NAME (the BentoML model store) or --format onnx|torchscript --out FILE")
    tag, created = _store_export()(args.checkpoint, args.name, force=args.force)
    print(f"exported {args.checkpoint} as {tag}" if created else f"{tag} already holds these weights")


def _cmd_export_discriminator(args: argparse.Namespace) -> None:
    from .discriminator import export_discriminator

    print(f"exported {export_discriminator(args.workdir)}")


def _cmd_lab_mog(args: argparse.Namespace) -> None:
    import torch

    from .config import parse_overrides, replace
    from .mog import MogConfig, run_mog, summary_line

    torch.set_num_threads(args.threads)  # a 128-wide MLP gains nothing from more threads
    cfg = replace(MogConfig(), parse_overrides(args.set), "MogConfig")
    report = run_mog(cfg, plot=args.plot, logdir=args.logdir)
    print(json.dumps(report) if args.json else summary_line(report))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ganforge", description="Train, sample, evaluate and serve conditional GANs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a GAN from a YAML run config")
    t.add_argument("config", help="YAML file under configs/")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    t.add_argument("--resume", action="store_true", help="continue from the run's resume state")
    t.add_argument("--device", help="auto | cpu | cuda | mps (overrides the config)")
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("train-classifier", help="train the domain classifier used as evaluation feature space")
    c.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | mnist | cifar10 | imagefolder | shapes")
    c.add_argument("--root", default=None, help="data folder (imagefolder: one subfolder per class)")
    c.add_argument("--out", default=None, help="checkpoint folder (default runs/<dataset>_classifier; the "
                                               "bundled checkpoints/ are never the default)")
    c.add_argument("--epochs", type=int, default=8, help="passes over the data (at least 100 steps are run)")
    c.add_argument("--batch-size", type=int, default=128, help="at most; small data uses a quarter of itself")
    c.add_argument("--steps", type=int, default=None, help="optimiser steps (default: --epochs passes, >= 100)")
    c.add_argument("--resolution", type=int, default=None,
                   help="the resolution images are read at (default: 32; imagefolder 64, the recipe's)")
    c.add_argument("--fit", default="crop", choices=["crop", "squash", "pad"], help="imagefolder: non-square images")
    c.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: auto)")
    c.add_argument("--width", type=int, default=32)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device")
    c.set_defaults(func=_cmd_train_classifier)

    s = sub.add_parser("sample", help="sample a class-conditional checkpoint to .npz / PNG grid")
    s.add_argument("checkpoint")
    s.add_argument("--per-class", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--class", dest="classes", action="append", help="class name or index (repeatable)")
    s.add_argument("--truncation", type=float, default=None)
    s.add_argument("--out", help="output .npz (images, labels, class_names, seeds)")
    s.add_argument("--grid", help="output PNG grid, one row per class")
    s.add_argument("--device")
    _add_backend(s)
    s.set_defaults(func=_cmd_sample)

    a = sub.add_parser("augment", help="labelled synthetic images in bulk (class folders of PNGs or .npz + "
                                       "manifest.csv); resumable: rerun the same command after an interruption")
    a.add_argument("checkpoint")
    a.add_argument("--per-class", help="images per class: N, or JSON like '{\"sneaker\": 500, \"bag\": 200}'")
    a.add_argument("--total", type=int, help="images in all, split evenly over the classes (instead of --per-class)")
    a.add_argument("--class", dest="classes", action="append", help="only this class (repeatable; with N or --total)")
    a.add_argument("--seed", type=int, default=0, help="image k of the job uses seed + k")
    a.add_argument("--truncation", type=float, default=None)
    a.add_argument("--format", default="imagefolder", choices=["imagefolder", "npz"])
    a.add_argument("--out", required=True, help="output folder (holds one job; rerun to resume)")
    a.add_argument("--chunk-size", type=int, default=1024, help="images per resumable chunk")
    a.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    sel = a.add_argument_group("sample selection (off unless a filter is given; docs/selection.md)")
    sel.add_argument("--min-confidence", type=float, metavar="P",
                     help="keep an image only if --classifier gives its class probability >= P (0 < P <= 1)")
    sel.add_argument("--classifier", metavar="CKPT", help="domain classifier checkpoint with the generator's classes")
    sel.add_argument("--d-keep-fraction", type=float, metavar="Q",
                     help="keep only each class's top fraction Q of images by the run's discriminator logit")
    sel.add_argument("--discriminator", metavar="FILE",
                     help="the run's exported discriminator (default: discriminator.safetensors beside CHECKPOINT)")
    sel.add_argument("--max-draw-factor", type=int, default=20, metavar="F",
                     help="a class draws at most F candidates per image asked; fewer passing fails the job")
    sel.add_argument("--d-calibration", type=int, default=1024, metavar="M",
                     help="images per class (seeds 0..M-1) whose discriminator logits set that class's threshold")
    a.add_argument("--device")
    _add_backend(a)
    a.set_defaults(func=_cmd_augment)

    e = sub.add_parser("evaluate", help="measure a checkpoint against the real test set")
    e.add_argument("checkpoint")
    e.add_argument("--classifier", default=None, help="domain classifier checkpoint (default: the run's own, "
                                                      "else the bundled one for the dataset)")
    e.add_argument("--features", default="domain", choices=["domain", "inception"],
                   help="FID/KID feature space: the domain classifier, or standard Inception-v3 (needs .[fid])")
    e.add_argument("--inception-weights", default=None, help="Inception-v3 weights file (default: "
                   "~/.cache/ganforge/weights-inception-2015-12-05-6726825d.pth)")
    e.add_argument("--max-real", type=int, default=10_000, help="real test images compared (a seeded subset)")
    e.add_argument("--per-class", type=int, default=1000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--truncation", type=float, default=None)
    e.add_argument("--json", help="write the report here too")
    e.add_argument("--record", action="store_true", help="store the metrics in the checkpoint's metadata")
    e.add_argument("--device")
    e.set_defaults(func=_cmd_evaluate)

    tr = sub.add_parser("translate", help="image-to-image: image files -> PNGs, or a dataset split -> .npz")
    tr.add_argument("checkpoint")
    tr.add_argument("images", nargs="*", help="PNG/JPEG files (any size)")
    tr.add_argument("--out", required=True, help="output folder for files, or FILE.npz with --dataset")
    tr.add_argument("--derive", action="store_true",
                    help="the files are target-like pictures: apply the checkpoint's derivation (e.g. edges) first")
    tr.add_argument("--dataset", help="dataset name (the checkpoint's derivation makes the inputs)")
    tr.add_argument("--paired", help="aligned | folders (with --root) instead of a derivation")
    tr.add_argument("--root", help="data folder")
    tr.add_argument("--split", default="test")
    tr.add_argument("--limit", type=int, help="first N items only")
    tr.add_argument("--device")
    tr.set_defaults(func=_cmd_translate)

    i = sub.add_parser("info", help="print a checkpoint's metadata")
    i.add_argument("checkpoint")
    i.set_defaults(func=_cmd_info)

    x = sub.add_parser("export", help="copy a checkpoint into the BentoML model store for the service (--name), "
                                      "or export its generator to one ONNX / TorchScript file (--format, --out)")
    x.add_argument("checkpoint")
    x.add_argument("--name", help="store name, e.g. fashion_mnist_cgan (see GANFORGE_MODELS)")
    x.add_argument("--format", choices=["onnx", "torchscript"],
                   help="export to this format instead (dynamic batch, metadata embedded, parity-checked; "
                        "docs/deploy.md)")
    x.add_argument("--out", help="the exported file (with --format)")
    x.add_argument("--force", action="store_true", help="store a new version even if the weights are unchanged")
    x.set_defaults(func=_cmd_export)

    xd = sub.add_parser("export-discriminator", help="write a finished run's discriminator (from its resume state) "
                                                     "beside its export, for augment --d-keep-fraction")
    xd.add_argument("workdir", help="the run's workdir (config.yaml, export.json, state.pt)")
    xd.set_defaults(func=_cmd_export_discriminator)

    lab = sub.add_parser("lab", help="small experiments on training dynamics")
    lab_sub = lab.add_subparsers(dest="lab", required=True)
    m = lab_sub.add_parser("mog", help="mixture-of-Gaussians mode-collapse benchmark (fields and defaults: "
                                       "MogConfig in training/mog.py)")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a MogConfig field, e.g. dataset=grid, loss=minimax, r1_gamma=0, steps=500")
    m.add_argument("--json", action="store_true", help="print the report as one JSON object")
    m.add_argument("--plot", help="write a scatter plot PNG of the samples over the true modes here")
    m.add_argument("--logdir", help="TensorBoard log folder (per-step losses and generator gradient norm)")
    m.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    m.set_defaults(func=_cmd_lab_mog)
    return p


def main(argv: list[str] | None = None) -> int:
    from .distributed import Interrupted

    args = parser().parse_args(argv)
    try:
        args.func(args)
    except Interrupted as e:  # a signal stopped training at a step boundary, after the resume state
        print(f"ganforge {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"ganforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ganforge {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
