"""The implementations behind each ``medseg`` subcommand (argparse namespace in, exit code out)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from medseg.training.config import ExperimentConfig


def cmd_demo(a: argparse.Namespace) -> int:
    from medseg.workflows.demo import DemoSettings, run_demo

    run_demo(DemoSettings(out=a.output, dims=a.dims, modality=a.modality, size=a.size,
                          n_train=a.n_train, n_test=a.n_test, lesion_fraction=a.lesion_fraction,
                          epochs=a.epochs, seed=a.seed, device=a.device, force=a.force))
    return 0


def build_train_config(a: argparse.Namespace) -> ExperimentConfig:
    """Config file, then ``--set`` overrides, then the dedicated flags (highest priority)."""
    cfg = ExperimentConfig.load(a.config) if a.config else ExperimentConfig()
    if a.overrides:
        cfg = cfg.override(a.overrides)
    flags = {
        "data.dataset": a.dataset, "data.masks": a.masks, "data.mask_suffix": a.mask_suffix,
        "data.modality": a.modality, "output_dir": a.output, "train.epochs": a.epochs,
        "train.steps_per_epoch": a.steps_per_epoch, "train.batch_size": a.batch_size,
        "train.patch_size": a.patch_size, "train.max_minutes": a.max_minutes,
        "train.seed": a.seed, "train.device": a.device, "task": a.task,
        "train.ensemble": a.ensemble, "train.folds": a.folds,
    }
    for key, val in flags.items():
        if val is None:
            continue
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, val)
    return ExperimentConfig.from_dict(cfg.to_dict(), source="flags")


def cmd_train(a: argparse.Namespace) -> int:
    """``medseg train``: the one engine, whatever the task."""
    from medseg.training.engine import train

    cfg = build_train_config(a)
    if a.resume and not a.output and not a.config:
        from medseg.errors import ConfigError

        raise ConfigError("--resume needs the model folder", hint="pass --output MODEL_DIR")
    if a.member is not None:
        from medseg.training.engine import train_ensemble

        if cfg.train.ensemble < 2 and cfg.train.folds < 2:
            from medseg.errors import ConfigError

            raise ConfigError("--member needs --ensemble M or --folds K",
                              hint="pass --ensemble M (or --folds K) with --member K")
        result = train_ensemble(cfg, resume=a.resume, members=[a.member])
    else:
        result = train(cfg, resume=a.resume)
    if result.interrupted:
        return 130
    if result.is_main:  # under torchrun only rank 0 reports (it alone validates and saves)
        best = (f"best validation {result.metric_label} {result.best_metric:.4f}"
                if math.isfinite(result.best_metric) else "no validation split")
        print(f"model written to {result.output_dir} ({best})")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    """``medseg predict``: the model folder's task predicts."""
    from medseg.errors import ConfigError
    from medseg.model_folder import ModelFolder
    from medseg.tasks import get_task
    from medseg.tasks.base import PredictRequest, check_prediction_output

    if a.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {a.samples}", hint="pass --samples 10")
    if a.overlap is not None and not 0.0 <= a.overlap < 1.0:
        raise ConfigError(f"--overlap must lie in [0, 1), got {a.overlap}",
                          hint="pass e.g. --overlap 0.5")
    folder = ModelFolder.open(a.model)
    task = get_task(folder.task)
    request = PredictRequest(
        input=Path(a.input), output=Path(a.output), checkpoint=a.checkpoint, device=a.device,
        format=a.format, tta=a.tta or None, overlap=a.overlap,
        save_probabilities=a.save_probabilities, split=a.split, uncertainty=a.uncertainty,
        samples=a.samples, seed=a.uncertainty_seed, per_class=a.per_class,
        overwrite=a.overwrite, precision=a.precision)
    task.check_request(request)
    check_prediction_output(request)
    task.predict(folder, request, log=print)
    return 0


def recognise_prediction(pred: Path, instances: bool = False) -> str:
    """The task whose predictions ``pred`` holds (asked in registry order)."""
    from medseg.errors import InputError
    from medseg.tasks import get_task, list_tasks

    if instances:
        return "instance"
    if not pred.exists():
        raise InputError("prediction folder not found", pred, "check the --pred path")
    for name in list_tasks():
        if get_task(name).recognises(pred):
            return name
    raise InputError("not a folder or file of predictions", pred,
                     "give the --output folder of medseg predict")


def cmd_evaluate(a: argparse.Namespace) -> int:
    """``medseg evaluate``: the task that recognises the predictions scores them."""
    from medseg.tasks import get_task
    from medseg.tasks.base import EvaluateRequest

    pred = Path(a.pred)
    task = get_task(recognise_prediction(pred, a.instances))
    ev = task.evaluate(EvaluateRequest(
        pred=pred, ref=Path(a.ref), output=Path(a.output), labels=a.labels,
        ignore_label=a.ignore_label,
        dataset_json=Path(a.dataset_json) if a.dataset_json else None,
        ref_suffix=a.ref_suffix, images=Path(a.images) if a.images else None, split=a.split,
        bootstrap=a.bootstrap, group_regex=a.group_regex, mask_threshold=a.mask_threshold,
        nsd_tolerance=a.nsd_tolerance, surface=a.surface,
        allow_outside_root=a.allow_outside_root,
        model=Path(a.model) if a.model else None), log=print)
    print("written: " + ", ".join(str(f) for f in ev["files"]))
    return 0


def cmd_phantoms(a: argparse.Namespace) -> int:
    from medseg.physics import PhantomSpec, write_phantom_dataset

    size = a.size or (128 if a.dims == 2 else 48)
    spec = PhantomSpec(shape=(size,) * a.dims, modality=a.modality,
                       lesion_fraction=a.lesion_fraction)
    write_phantom_dataset(Path(a.output), spec, n_train=a.n_train, n_test=a.n_test, seed=a.seed)
    print(f"phantom dataset written to {a.output}")
    return 0


def cmd_simulate(a: argparse.Namespace) -> int:
    """``medseg simulate``: a phantom dataset with each modality's noise physics (E6, P1-P3)."""
    from medseg.errors import ConfigError
    from medseg.physics import PhantomSpec, write_phantom_dataset

    def bad(problem: str, hint: str) -> ConfigError:
        return ConfigError(problem, hint=hint)

    only = {"dose": ("--dose", "ct"), "snr": ("--snr", "mr"), "looks": ("--looks", "us"),
            "acceleration": ("--acceleration", "mr")}
    for attr, (flag, modality) in only.items():
        value = getattr(a, attr)
        if value is not None and a.modality != modality:
            raise bad(f"{flag} applies to --modality {modality}, not {a.modality}",
                      f"drop {flag}, or use --dose (ct), --snr (mr), --looks (us)")
        at_least_one = attr in ("acceleration", "looks")
        if value is not None and not (value >= 1.0 if at_least_one else value > 0):
            raise bad(f"{flag} must be {'>= 1' if at_least_one else '> 0'}, got {value}",
                      f"pass a valid {flag}")
    if a.n_train < 1 or a.n_test < 0:
        raise bad(f"--n-train must be >= 1 and --n-test >= 0, got {a.n_train} and {a.n_test}",
                  "pass --n-train 1 or more")
    size = a.size or (128 if a.dims == 2 else 48)
    if size < 8:
        raise bad(f"--size must be >= 8, got {size}", "pass --size 32 or more")
    if not 0.0 <= a.lesion_fraction < 0.2:
        raise bad(f"--lesion-fraction must lie in [0, 0.2), got {a.lesion_fraction}",
                  "pass e.g. --lesion-fraction 0.01")
    if a.spacing <= 0 or a.noise_level < 0:
        raise bad(f"--spacing must be > 0 and --noise-level >= 0, got {a.spacing} and "
                  f"{a.noise_level}", "fix the flag")
    out = Path(a.output)
    if out.is_dir() and any(out.iterdir()) and not a.force:
        raise ConfigError("the output folder is not empty", out,
                          "choose a new folder, or pass --force to replace a dataset that "
                          "medseg wrote there before (other files are never touched)")
    try:
        spec = PhantomSpec(
            shape=(size,) * a.dims, spacing=(a.spacing,) * a.dims, modality=a.modality,
            lesion_fraction=a.lesion_fraction, n_lesions=a.n_lesions, noise_level=a.noise_level,
            dose=a.dose, mr_sigma=None if a.snr is None else 0.6 / a.snr,
            acceleration=a.acceleration or 1.0, center_fraction=a.center_fraction,
            looks=a.looks)
        write_phantom_dataset(out, spec, n_train=a.n_train, n_test=a.n_test, seed=a.seed,
                              write_clean=True)
    except ValueError as e:
        raise bad(str(e), "change the flags named in the message") from e
    print(f"simulated {a.modality.upper()} dataset ({a.n_train} training, {a.n_test} test cases of "
          f"{size}^{a.dims}) written to {out}")
    return 0


def cmd_convert_outlines(a: argparse.Namespace) -> int:
    from medseg.data.convert import fill_outline_masks

    report = fill_outline_masks(a.input, a.output, suffix=a.suffix, boundary=a.boundary)
    print(report if isinstance(report, str) else f"filled masks written to {a.output}: {report}")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from medseg.networks import list_models, model_task

    for name in list_models():
        print(f"{name:24s} {model_task(name)}")
    return 0


def cmd_restoration_data(a: argparse.Namespace) -> int:
    from medseg.physics.restoration_data import write_restoration_dataset

    try:
        write_restoration_dataset(Path(a.output), a.modality, n_train=a.n_train, n_test=a.n_test,
                                  size=a.size, target=a.target, level=a.level, seed=a.seed,
                                  spatial_dims=a.dims)
    except ValueError as e:
        from medseg.errors import InputError

        raise InputError(str(e), hint="see medseg restoration-data --help") from None
    print(f"restoration dataset written to {a.output}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    """``medseg report --model M``: the model card alone (:mod:`medseg.workflows.report`)."""
    from medseg.workflows.report import cmd_report as run

    return run(a)


def cmd_info(a: argparse.Namespace) -> int:
    """``medseg info``: check a model folder and describe it."""
    from medseg.model_folder import ModelFolder

    folder = ModelFolder.open(a.model)
    folder.build_network()  # the plan's options must build the network
    print(folder.describe())
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    """``medseg calibrate``: temperature scaling of a model folder on labelled data (U5)."""
    from medseg.model_folder import ModelFolder
    from medseg.tasks import get_task
    from medseg.training.calibration import (
        calibrate,
        describe,
        read_calibration,
        write_calibration,
    )

    folder = ModelFolder.open(a.model)
    path = folder.path / "calibration.json"
    if path.exists() and not a.force and not a.conformal:
        from medseg.errors import InputError

        raise InputError("the model folder is calibrated already", path,
                         "pass --force to replace its calibration")
    task = get_task(folder.task)
    labels = Path(a.labels) if a.labels else None
    if a.conformal:
        if not hasattr(task, "conformal_volumes"):
            from medseg.errors import InputError

            raise InputError(f"{folder.task} models have no structure volumes to calibrate",
                             folder.path, "use --conformal with a segmentation model")
        doc = read_calibration(folder.path)
        doc["conformal"] = task.conformal_volumes(folder, Path(a.data), labels, a.split,
                                                  a.device, a.uncertainty, a.samples, a.alpha,
                                                  print)
        write_calibration(folder.path, doc, overwrite=True)
        for name, c in doc["conformal"]["classes"].items():
            print(f"  {name}: normalised score quantile {c['quantile']} at alpha {c['alpha']} "
                  f"(n = {c['n']})")
        print(f"written: {path}")
        return 0
    cs = task.calibration_set_from(folder, Path(a.data), labels, a.split, a.device, print)
    doc = calibrate(cs)
    conformal = read_calibration(folder.path).get("conformal")  # kept beside the new T
    if conformal is not None:
        doc["conformal"] = conformal
    write_calibration(folder.path, doc, overwrite=a.force)
    print(describe(doc))
    print(f"written: {path}")
    task.after_calibration(folder, print)
    return 0


def cmd_review(a: argparse.Namespace) -> int:
    """``medseg review``: the predicted cases, most uncertain first (``review.csv``)."""
    from medseg.workflows.review import review

    path = review(a.pred, by=a.by, top=a.top)
    print(f"written: {path}")
    return 0


def cmd_select(a: argparse.Namespace) -> int:
    """``medseg select``: predict a pool with uncertainty, pick the N cases to label next."""
    from medseg.errors import ConfigError
    from medseg.model_folder import ModelFolder
    from medseg.tasks import get_task
    from medseg.tasks.base import PredictRequest, check_prediction_output
    from medseg.workflows.review import rank_cases, write_ranking

    if a.n < 1:
        raise ConfigError(f"--n must be >= 1, got {a.n}", hint="pass --n 10")
    folder = ModelFolder.open(a.model)
    out = Path(a.output)
    request = PredictRequest(input=Path(a.pool), output=out / "predictions", device=a.device,
                             uncertainty=a.uncertainty, samples=a.samples, seed=a.seed,
                             split=a.split)
    check_prediction_output(request)
    if (out / "selection.csv").exists():
        raise ConfigError("the output folder holds a selection already", out,
                          "choose a new --output folder")
    get_task(folder.task).predict(folder, request, log=lambda _m: None)
    ranked = rank_cases(out / "predictions", a.by)
    chosen = ranked[: a.n]
    path = write_ranking(chosen, out / "selection.csv")
    print(f"label next ({len(chosen)} of {len(ranked)}, by {a.by}, {a.uncertainty}):")
    for r in chosen:
        print(f"  {r['rank']:4d}  {r['case']}  {r['score']:.4g}")
    print(f"written: {path}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """``medseg export``: the network as one file plus ``<file>.json`` (:mod:`medseg.export`)."""
    from medseg.export import export_model

    result = export_model(a.model, a.format, a.output, opset=a.opset, dynamic=a.dynamic,
                          checkpoint=a.checkpoint, force=a.force, log=print)
    diff = ("not checked (onnxruntime not installed)" if result.max_abs_diff is None
            else f"max abs difference to PyTorch {result.max_abs_diff:.2g}")
    print(f"written: {result.path} ({diff})")
    print(f"written: {result.sidecar}")
    return 0
