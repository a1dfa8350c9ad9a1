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
    else:
        result = train(cfg, resume=a.resume)
        metric = "Dice"
    if result.interrupted:
        return 130
    print(f"model written to {result.output_dir} (best validation {metric} "
          f"{result.best_dice:.4f})")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    import json

    from medseg.workflows.predict import TrainedModel, predict_inputs

    plan = Path(a.model) / "plan.json"
    if plan.is_file() and json.loads(plan.read_text()).get("task") == "classification":
        from medseg.workflows.classification import predict_classification

        predict_classification(a.model, a.input, a.output, split=a.split,
                               checkpoint=a.checkpoint, device=a.device)
        return 0
    model = TrainedModel.load(a.model, checkpoint=a.checkpoint, device=a.device)
    files = predict_inputs(model, a.input, a.output, fmt=a.format, tta=a.tta or None,
                           overlap=a.overlap, save_probabilities=a.save_probabilities)
    print(f"{len(files)} prediction(s) written to {a.output}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from medseg.workflows.evaluate import evaluate_folders

    pred = Path(a.pred)
    if pred.suffix == ".csv" or (pred / "predictions.csv").is_file():
        from medseg.workflows.classification import evaluate_classification_files

        ev = evaluate_classification_files(pred, a.ref, a.output, split=a.split,
                                           n_boot=a.bootstrap)
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
