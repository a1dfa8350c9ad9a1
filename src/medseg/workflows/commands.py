"""The implementations behind each ``medseg`` subcommand (argparse namespace in, exit code out)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.training.config import ExperimentConfig


def cmd_demo(a: argparse.Namespace) -> int:
    from medseg.workflows.demo import DemoSettings, run_demo

    run_demo(DemoSettings(out=a.out, dims=a.dims, modality=a.modality, size=a.size,
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


def _saved_task(cfg: ExperimentConfig) -> str | None:
    """The task of the model folder's saved ``config.yaml`` (``None`` when there is none)."""
    saved = Path(cfg.output_dir) / "config.yaml"
    return ExperimentConfig.load(saved).task if saved.is_file() else None


def cmd_train(a: argparse.Namespace) -> int:
    from medseg.training.loop import train

    cfg = build_train_config(a)
    if a.resume and not a.output and not a.config:
        from medseg.errors import ConfigError

        raise ConfigError("--resume needs the model folder", hint="pass --output MODEL_DIR")
    if cfg.task == "classification":
        from medseg.training.classify import prepare_classification, train_classifier

        print(f"medseg train: preparing classification data from {cfg.data.dataset}")
        arrays, plan = prepare_classification(cfg)
        result = train_classifier(cfg, arrays, resume=a.resume, plan=plan)
        metric = "AUROC"
    elif cfg.task == "restoration" or (a.resume and _saved_task(cfg) == "restoration"):
        from medseg.training.restore import prepare_restoration, train_restoration

        if a.resume:  # the saved config names the data of the run being resumed
            cfg = ExperimentConfig.load(Path(cfg.output_dir) / "config.yaml")
        print(f"medseg train: preparing restoration pairs from {cfg.data.dataset}")
        arrays, plan = prepare_restoration(cfg)
        result = train_restoration(cfg, arrays, resume=a.resume, plan=plan)
        metric = "loss"
    else:
        result = train(cfg, resume=a.resume)
        metric = "Dice"
    if result.interrupted:
        return 130
    if result.is_main:  # under torchrun only rank 0 reports (it alone validates and saves)
        print(f"model written to {result.output_dir} (best validation {metric} "
              f"{result.best_dice:.4f})")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    import json

    from medseg.workflows.predict import TrainedModel, predict_inputs

    plan = Path(a.model) / "plan.json"
    if plan.is_file() and json.loads(plan.read_text()).get("task") == "restoration":
        from medseg.workflows.restoration import predict_restoration

        predict_restoration(a.model, a.input, a.output, checkpoint=a.checkpoint, device=a.device)
        return 0
    if plan.is_file() and json.loads(plan.read_text()).get("task") == "classification":
        from medseg.workflows.classification import predict_classification

        predict_classification(a.model, a.input, a.output, split=a.split,
                               checkpoint=a.checkpoint, device=a.device)
        return 0
    model = TrainedModel.load(a.model, checkpoint=a.checkpoint, device=a.device)
    if model.info.get("task") == "instance":
        from medseg.workflows.instance import predict_instances

        files = predict_instances(model, a.input, a.output, fmt=a.format, tta=a.tta or None,
                                  overlap=a.overlap)
        print(f"{len(files)} instance prediction(s) written to {a.output}")
        return 0
    files = predict_inputs(model, a.input, a.output, fmt=a.format, tta=a.tta or None,
                           overlap=a.overlap, save_probabilities=a.save_probabilities)
    print(f"{len(files)} prediction(s) written to {a.output}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from medseg.workflows.evaluate import evaluate_folders

    pred = Path(a.pred)
    if (pred / "restoration.json").is_file():
        from medseg.workflows.restoration import evaluate_restoration

        ev = evaluate_restoration(pred, a.ref, a.output)
        print("written: " + ", ".join(str(f) for f in ev["files"]))
        return 0
    if pred.suffix == ".csv" or (pred / "predictions.csv").is_file():
        from medseg.workflows.classification import evaluate_classification_files

        ev = evaluate_classification_files(pred, a.ref, a.output, split=a.split,
                                           n_boot=a.bootstrap)
        print("written: " + ", ".join(str(f) for f in ev["files"]))
        return 0
    from medseg.workflows.instance import evaluate_instance_folders, is_instance_prediction_folder

    if a.instances or is_instance_prediction_folder(pred):
        ev = evaluate_instance_folders(pred, a.ref, a.output, ref_suffix=a.ref_suffix,
                                       mask_threshold=a.mask_threshold)
        print("written: " + ", ".join(str(f) for f in ev["files"]))
        return 0
    ev = evaluate_folders(a.pred, a.ref, a.output, labels=a.labels, ignore_label=a.ignore_label,
                          dataset_json=a.dataset_json, ref_suffix=a.ref_suffix, images=a.images)
    print("written: " + ", ".join(str(f) for f in ev["files"]))
    return 0


def cmd_phantoms(a: argparse.Namespace) -> int:
    from medseg.physics import write_phantom_dataset

    size = a.size or (128 if a.dims == 2 else 48)
    write_phantom_dataset(Path(a.out), n_train=a.n_train, n_test=a.n_test, spatial_dims=a.dims,
                          shape=(size,) * a.dims, modality=a.modality,
                          lesion_fraction=a.lesion_fraction, seed=a.seed)
    print(f"phantom dataset written to {a.out}")
    return 0


def cmd_simulate(a: argparse.Namespace) -> int:
    """``medseg simulate``: a phantom dataset with each modality's noise physics (E6, P1-P3)."""
    from medseg.errors import ConfigError
    from medseg.physics import write_phantom_dataset

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
    if a.n < 1 or a.n_test < 0:
        raise bad(f"--n must be >= 1 and --n-test >= 0, got {a.n} and {a.n_test}",
                  "pass --n 1 or more")
    size = a.size or (128 if a.dims == 2 else 48)
    if size < 8:
        raise bad(f"--size must be >= 8, got {size}", "pass --size 32 or more")
    if not 0.0 <= a.lesion_fraction < 0.2:
        raise bad(f"--lesion-fraction must lie in [0, 0.2), got {a.lesion_fraction}",
                  "pass e.g. --lesion-fraction 0.01")
    if a.spacing <= 0 or a.noise_level < 0:
        raise bad(f"--spacing must be > 0 and --noise-level >= 0, got {a.spacing} and "
                  f"{a.noise_level}", "fix the flag")
    out = Path(a.out)
    if out.is_dir() and any(out.iterdir()) and not a.force:
        raise ConfigError("the output folder is not empty", out,
                          "choose a new folder, or pass --force to replace a dataset that "
                          "medseg wrote there before (other files are never touched)")
    try:
        write_phantom_dataset(
            out, n_train=a.n, n_test=a.n_test, spatial_dims=a.dims, shape=(size,) * a.dims,
            modality=a.modality, lesion_fraction=a.lesion_fraction, seed=a.seed,
            spacing=(a.spacing,) * a.dims, noise_level=a.noise_level, n_lesions=a.n_lesions,
            dose=a.dose, mr_sigma=None if a.snr is None else 0.6 / a.snr,
            acceleration=a.acceleration or 1.0, center_fraction=a.center_fraction,
            looks=a.looks, write_clean=True)
    except ValueError as e:
        raise bad(str(e), "change the flags named in the message") from e
    print(f"simulated {a.modality.upper()} dataset ({a.n} training, {a.n_test} test cases of "
          f"{size}^{a.dims}) written to {out}")
    return 0


def cmd_convert_outlines(a: argparse.Namespace) -> int:
    from medseg.data.convert import fill_outline_masks

    report = fill_outline_masks(a.input, a.output, suffix=a.suffix)
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
        write_restoration_dataset(Path(a.out), a.modality, n_train=a.n, n_test=a.n_test,
                                  size=a.size, target=a.target, level=a.level, seed=a.seed,
                                  spatial_dims=a.dims)
    except ValueError as e:
        from medseg.errors import InputError

        raise InputError(str(e), hint="see medseg restoration-data --help") from None
    print(f"restoration dataset written to {a.out}")
    return 0
