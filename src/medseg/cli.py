"""The ``medseg`` command line: one entry point, one subcommand per job (E3).

    medseg demo                      # phantoms -> train -> predict -> evaluate -> report
    medseg train --dataset DIR ...   # MSD/nnU-Net folder, or --masks for image+mask folders
    medseg predict --model DIR --input PATH --output DIR
    medseg evaluate --pred DIR --ref DIR --output DIR
    medseg phantoms --output DIR     # the embedded default dataset, written as an MSD folder
    medseg simulate --modality ct --n-train 20 --output DIR   # CT/MR/US physics (+ clean images)
    medseg convert-outlines --input DIR --output DIR   # outline annotations -> filled masks
    medseg restoration-data --output DIR  # phantom denoising pairs (train --task restoration)
    medseg models                    # the model registry

Every error about the user's input is printed as one line naming the file and what to do;
the exit status is 2 for bad input, 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError


def _add_train_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (sections: data, preprocess, model, loss, "
                                    "optim, augment, train, inference)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.epochs=20 "
                        "--set model.options.channels=[16,32,64,128] (repeatable)")


class _OldSpelling(argparse.Action):
    """A flag's previous spelling, kept for one release: stores into the new flag's ``dest``,
    stays out of ``--help`` and says on stderr which spelling to use instead."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kw) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated and goes in the next release; "
              f"use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _renamed_flag(p: argparse.ArgumentParser, new: str, old: str, *, required: bool = False,
                  **kw) -> None:
    """Add flag ``new`` and its hidden old spelling ``old`` (same ``dest``; not both at once)."""
    group = p.add_mutually_exclusive_group(required=required)
    action = group.add_argument(new, **kw)
    group.add_argument(old, action=_OldSpelling, new=new, dest=action.dest, type=action.type,
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_demo(sub: Any) -> None:
    """``medseg demo``."""
    d = sub.add_parser("demo", help="run the whole pipeline on generated phantoms",
                       description="Generate phantoms, train a U-Net, predict the held-out "
                                   "phantoms with sliding windows, evaluate, write a report.")
    _renamed_flag(d, "--output", "--out", default="medseg_demo_output",
                  help="output folder (default: %(default)s)")
    d.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2D or 3D phantoms")
    d.add_argument("--modality", choices=("mr", "ct", "us"), default="mr")
    d.add_argument("--size", type=int, default=None,
                   help="phantom edge length in voxels (default 128 in 2D, 48 in 3D)")
    d.add_argument("--n-train", type=int, default=None, help="training phantoms")
    d.add_argument("--n-test", type=int, default=None, help="held-out phantoms")
    d.add_argument("--lesion-fraction", type=float, default=0.005,
                   help="lesion share of the image (T6 imbalance), default %(default)s")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("--force", action="store_true",
                   help="replace an existing demo output folder (only one written by the demo)")


def _add_train(sub: Any) -> None:
    """``medseg train``: every task through the one engine."""
    t = sub.add_parser("train", help="train a segmentation or classification model",
                       description="Segmentation: an MSD / nnU-Net folder (dataset.json, "
                                   "imagesTr, labelsTr) or a folder of 2D images plus --masks. "
                                   "Classification (--task classification): a CSV label table "
                                   "(image,label or one 0/1/-1 column per label) or a MedMNIST "
                                   ".npz.")
    t.add_argument("--task", default=None, metavar="TASK",
                   help="segmentation (default), classification, instance or restoration "
                        "(any registered task). instance: a DSB2018 folder (<id>/images, "
                        "<id>/masks) or images/ + masks/ instance label maps; trains on "
                        "background/interior/boundary. "
                        "restoration: a `medseg restoration-data` folder (denoising, loss "
                        "--set loss.restoration=l2|likelihood|anscombe_l2)")
    t.add_argument("--dataset", help="dataset folder (dataset.json), folder of images, label "
                                     "CSV or .npz")
    t.add_argument("--masks", help="folder of masks matched to --dataset images by name")
    t.add_argument("--mask-suffix", default=None, help="mask name suffix, e.g. _Annotation")
    t.add_argument("--modality", default=None, help="override modality (CT, MR, US, XR, PNG)")
    t.add_argument("--output", help="model folder to write (refuses to overwrite a model)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--steps-per-epoch", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--patch-size", type=int, nargs="+")
    t.add_argument("--max-minutes", type=float, help="fit the schedule into this wall time")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto, cpu, cuda")
    t.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    t.add_argument("--ensemble", type=int, metavar="M",
                   help="train a deep ensemble of M members (seeds seed..seed+M-1) into one "
                        "model folder (member_<k>/); predict averages them")
    t.add_argument("--member", type=int, metavar="K",
                   help="with --ensemble or --folds: train only member (fold) K (separate "
                        "jobs, e.g. one per GPU)")
    t.add_argument("--folds", type=int, metavar="K",
                   help="K-fold cross-validation (grouped by subject, stratified by label): K "
                        "models in one folder, out-of-fold predictions and an estimate with a "
                        "95%% interval (oof_metrics.json); predict averages the K models. "
                        "With --ensemble R: each fold trained R times (seeds seed..seed+R-1), "
                        "the out-of-fold prediction averaging the R models that never saw "
                        "the case")
    _add_train_overrides(t)


def _add_predict(sub: Any) -> None:
    """``medseg predict``: the model folder's task predicts."""
    p = sub.add_parser("predict", help="predict label maps with a trained model folder",
                       description="Predict with sliding windows. Input: a file (NIfTI, NRRD, "
                                   "PNG/TIFF), a DICOM series folder, or a folder of images. "
                                   "Outputs keep the input's geometry.")
    p.add_argument("--model", required=True, help="model folder written by medseg train")
    p.add_argument("--input", required=True, help="image file, DICOM folder or folder of images")
    p.add_argument("--output", required=True, help="folder for the predicted label maps")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--format", choices=("auto", "nii.gz", "nrrd", "png", "dcmseg"),
                   default="auto",
                   help="output format (auto: same as the input; NIfTI for DICOM; dcmseg: a "
                        "DICOM SEG object <case>.seg.dcm referencing the input DICOM series, "
                        "one segment per class, segmentation only; needs highdicom)")
    p.add_argument("--tta", action="store_true", help="average over flips")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                   help="network arithmetic (default: the model's inference.precision; auto = "
                        "bf16 on a CPU/GPU with native bf16, fp16 on older GPUs, else fp32)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write the class probabilities (NIfTI, C channels)")
    p.add_argument("--device", default="auto")
    p.add_argument("--split", default=None,
                   help="classification: predict only this split of the table (train/val/test)")
    p.add_argument("--uncertainty", choices=("none", "mc", "mc_decoder", "ensemble", "tta"),
                   default=None,
                   help="write uncertainty maps / columns and uncertainty.csv from T samples: "
                        "mc (MC Dropout), mc_decoder (dropout in the decoder only, encoder run "
                        "once), ensemble (an --ensemble model folder's members), tta (flips), "
                        "none (the single prediction: entropy, and the aleatoric term of a "
                        "variance head). The maps are float32 NIfTI (<case>_<term>.nii.gz) "
                        "on the input's grid, whatever --format is")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty output folder and replace predictions there (never "
                        "the inputs: the output may not hold them)")
    p.add_argument("--samples", type=int, default=10, help="T for MC Dropout (default 10)")
    p.add_argument("--uncertainty-seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--per-class", action="store_true",
                   help="also write the per-class variance maps (C channels)")


def _add_evaluate(sub: Any) -> None:
    """``medseg evaluate``: the task that recognises the predictions scores them."""
    e = sub.add_parser("evaluate", help="compare predictions with references",
                       description="Segmentation: per-case, per-class Dice, IoU, HD95 and ASSD "
                                   "(mm). Classification (--pred predictions.csv, --ref label "
                                   "table): accuracy, balanced accuracy, AUROC, sensitivity, "
                                   "specificity, F1, confusion matrix with bootstrap intervals. "
                                   "Instances (*_instances.* predictions): F1, AP, mAP, PQ. "
                                   "Writes metrics.json and metrics.csv and prints a summary.")
    e.add_argument("--pred", required=True, help="folder (or file) of predicted label maps")
    e.add_argument("--ref", required=True, help="folder (or file) of reference label maps")
    e.add_argument("--output", required=True, help="folder for metrics.json / metrics.csv")
    e.add_argument("--dataset-json", help="dataset.json for label names and the ignore label")
    e.add_argument("--labels", type=int, nargs="+", help="foreground labels to score")
    e.add_argument("--ignore-label", type=int, default=None,
                   help="reference value marking unlabelled voxels (excluded)")
    e.add_argument("--ref-suffix", default="", help="reference name suffix, e.g. _Annotation")
    e.add_argument("--images", help="folder of the input images, to add overlays and a report")
    e.add_argument("--split", default=None,
                   help="classification: score only this split of the label table")
    e.add_argument("--instances", action="store_true",
                   help="instance evaluation (automatic when --pred holds *_instances.* maps): "
                        "--ref is a DSB2018 folder or a folder of instance label maps; writes "
                        "F1@0.5, AP@0.5, mAP 0.5:0.95 and PQ per case and their means")
    e.add_argument("--mask-threshold", type=float, default=None,
                   help="instances: binarise soft DSB2018 masks at this fraction of their max")
    e.add_argument("--nsd-tolerance", type=float, default=1.0,
                   help="segmentation: tolerance in mm of the normalised surface Dice "
                        "(default %(default)s)")
    e.add_argument("--surface", choices=("full", "face"), default="full",
                   help="segmentation: surface of HD95/ASSD/NSD: full (8/26 neighbours, "
                        "default) or face (4/6 neighbours, MONAI's)")
    e.add_argument("--bootstrap", type=int, default=1000,
                   help="classification and segmentation: bootstrap resamples for the 95%% "
                        "intervals (0: none)")
    e.add_argument("--group-regex", default=None,
                   help="classification and segmentation: the subject of each case, the "
                        "regex's first group of its id (e.g. '^(\\d+)_' for HC18): the "
                        "intervals resample subjects, since cases of one subject are not "
                        "independent")
    e.add_argument("--allow-outside-root", action="store_true",
                   help="accept label-table / restoration.json paths that are absolute, use "
                        "'..' or lead out of their folder (only for tables you trust)")
    e.add_argument("--model", default=None,
                   help="model folder that made the predictions: its model card (training "
                        "data, configuration, validation results, calibration) joins the "
                        "report")


def _add_data_commands(sub: Any) -> None:
    """Subcommands that write datasets: phantoms, simulate, convert-outlines, restoration-data."""
    ph = sub.add_parser("phantoms", help="write the embedded phantom dataset (MSD layout)")
    _renamed_flag(ph, "--output", "--out", required=True, help="output folder")
    ph.add_argument("--dims", type=int, choices=(2, 3), default=2)
    ph.add_argument("--modality", choices=("mr", "ct", "us"), default="mr")
    ph.add_argument("--size", type=int, default=None)
    ph.add_argument("--n-train", type=int, default=40)
    ph.add_argument("--n-test", type=int, default=10)
    ph.add_argument("--lesion-fraction", type=float, default=0.02)
    ph.add_argument("--seed", type=int, default=0)

    sm = sub.add_parser(
        "simulate", help="simulate a CT/MR/US phantom dataset with its noise physics (MSD layout)",
        description="Write an MSD/nnU-Net folder (dataset.json, imagesTr, labelsTr, cleanTr with "
                    "the noise-free images, imagesTs/labelsTs/cleanTs with --n-test) that "
                    "`medseg train --dataset DIR` trains on. CT: Radon transform, Poisson counts "
                    "at --dose photons per ray, filtered back-projection. MR: complex Gaussian "
                    "noise (--snr = organ signal / sigma) and optional k-space undersampling "
                    "(--acceleration). US: Gamma speckle with --looks, log compression.")
    sm.add_argument("--modality", choices=("ct", "mr", "us"), required=True)
    sm.add_argument("--dims", type=int, choices=(2, 3), default=2)
    _renamed_flag(sm, "--n-train", "--n", required=True, type=int, help="training cases")
    sm.add_argument("--n-test", type=int, default=0, help="held-out cases (default 0)")
    _renamed_flag(sm, "--output", "--out", required=True, help="output folder (new or empty)")
    sm.add_argument("--size", type=int, default=None,
                    help="edge length in voxels (default 128 in 2D, 48 in 3D)")
    sm.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm (isotropic)")
    sm.add_argument("--lesion-fraction", type=float, default=0.01)
    sm.add_argument("--n-lesions", type=int, default=3)
    sm.add_argument("--noise-level", type=float, default=1.0,
                    help="noise strength when no --dose/--snr/--looks is given (1 = default)")
    sm.add_argument("--dose", type=float, default=None, help="CT photons per ray I0")
    sm.add_argument("--snr", type=float, default=None,
                    help="MR organ signal over noise sigma (default 12)")
    sm.add_argument("--looks", type=float, default=None, help="US speckle looks L (default 4)")
    sm.add_argument("--acceleration", type=float, default=None,
                    help="MR Cartesian k-space undersampling factor R >= 1")
    sm.add_argument("--center-fraction", type=float, default=0.08,
                    help="MR fully sampled k-space centre share")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--force", action="store_true",
                    help="replace a dataset previously written by medseg simulate/phantoms in "
                         "--output (other files are never touched)")

    c = sub.add_parser("convert-outlines",
                       help="fill outline annotations (e.g. HC18 ellipses) into masks",
                       description="Turn outline drawings (0/255 curves) into filled {0,1} masks "
                                   "named like their images; open outlines are closed.")
    c.add_argument("--input", required=True, help="folder of outline PNGs")
    c.add_argument("--output", required=True, help="new folder for the filled masks")
    c.add_argument("--suffix", default="_Annotation",
                   help="suffix of outline names, removed from the mask names")
    c.add_argument("--boundary", choices=("centre", "outer"), default="centre",
                   help="mask edge at the middle of the drawn line (default; what a perimeter "
                        "such as the head circumference is defined on) or outside it")

    r = sub.add_parser("restoration-data",
                       help="write a phantom denoising dataset (noisy input / target pairs)",
                       description="Noisy inputs (imagesTr/Ts), targets (targetsTr: a second "
                                   "independent noisy realisation, or the clean image with "
                                   "--target clean; targetsTs: always a noisy realisation), clean "
                                   "truth (cleanTr/Ts) and dataset.json with the noise "
                                   "parameters, for medseg train --task restoration.")
    _renamed_flag(r, "--output", "--out", required=True, help="new or empty folder")
    r.add_argument("--modality", choices=("ct", "mr", "us"), default="mr")
    _renamed_flag(r, "--n-train", "--n", type=int, default=40, help="training pairs")
    r.add_argument("--n-test", type=int, default=10, help="held-out cases")
    r.add_argument("--size", type=int, default=64, help="edge length in voxels")
    r.add_argument("--dims", type=int, choices=(2, 3), default=2)
    r.add_argument("--target", choices=("noisy", "clean"), default="noisy")
    r.add_argument("--level", type=float, default=1.0,
                   help="noise level: CT 10*level HU std at water, MR sigma 0.05*level, US "
                        "4/level^2 looks (level <= 2)")
    r.add_argument("--seed", type=int, default=0)


def _add_export(sub: Any) -> None:
    """``medseg export``: a trained network as one file that runs without medseg."""
    e = sub.add_parser("export", help="export a trained network (ONNX, TorchScript, "
                                      "torch.export) for deployment",
                       description="Write the model folder's network as one file plus "
                                   "<file>.json (input/output names and shapes, preprocessing "
                                   "plan, patch size and sliding-window settings, class names, "
                                   "temperature), check the file against PyTorch, and refuse to "
                                   "overwrite. The batch axis is always dynamic. An ensemble "
                                   "folder is refused: export each member_<k>/ folder.")
    e.add_argument("--model", required=True, help="model folder written by medseg train")
    e.add_argument("--format", choices=("onnx", "torchscript", "exported-program"),
                   default="onnx", help="file format (default: %(default)s)")
    e.add_argument("--output", required=True, help="file to write, e.g. model.onnx")
    e.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default 17; --format onnx only)")
    e.add_argument("--dynamic", action="store_true",
                   help="dynamic spatial axes too (sizes: multiples of the network's stride); "
                        "refused for transunet and vit_classifier (fixed positional grid) and "
                        "deeplabv3plus (output size computed in Python)")
    e.add_argument("--checkpoint", choices=("best", "last"), default="best")
    e.add_argument("--force", action="store_true", help="replace an existing output file")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="medseg",
        description="Medical image segmentation: train, predict and evaluate on NIfTI, DICOM, "
                    "NRRD and PNG/TIFF data.",
    )
    ap.add_argument("--debug", action="store_true",
                    help="print the full traceback of an internal error (also MEDSEG_DEBUG=1)")
    sub = ap.add_subparsers(dest="command", required=True)

    _add_demo(sub)
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_data_commands(sub)
    _add_export(sub)
    cal = sub.add_parser("calibrate", help="fit the temperature of a model folder on "
                                           "labelled data (U5)",
                         description="Temperature scaling: fit T minimising the NLL of "
                                     "softmax(logits / T) on labelled data, report the ECE "
                                     "before and after, write calibration.json into the model "
                                     "folder; predict then uses it. (medseg train already "
                                     "calibrates on the validation split.)")
    cal.add_argument("--model", required=True, help="model folder written by medseg train")
    cal.add_argument("--data", required=True,
                     help="segmentation: an MSD folder (imagesTs/labelsTs) or a folder of "
                          "images with --labels; classification: a label table or .npz")
    cal.add_argument("--labels", default=None, help="segmentation: folder of label maps")
    cal.add_argument("--split", default=None,
                     help="classification: rows of this split; segmentation: Tr or Ts")
    cal.add_argument("--device", default="auto")
    cal.add_argument("--force", action="store_true", help="replace an existing calibration")
    cal.add_argument("--conformal", action="store_true",
                     help="segmentation: split-conformal calibration of each structure's volume "
                          "interval on the labelled cases (kept beside the temperature); "
                          "predict --uncertainty with the same method then adds "
                          "volume_conformal_low/high to uncertainty.csv")
    cal.add_argument("--alpha", type=float, default=0.1,
                     help="conformal miscoverage (0.1: 90%% intervals)")
    cal.add_argument("--uncertainty", choices=("mc", "mc_decoder", "ensemble", "tta"),
                     default="tta", help="with --conformal: the sampler giving the spread")
    cal.add_argument("--samples", type=int, default=10, help="with --conformal: T for MC")
    rv = sub.add_parser("review", help="rank predicted cases, most uncertain first",
                        description="Read a prediction folder written with --uncertainty and "
                                    "write review.csv: every case ranked by an uncertainty "
                                    "score, most uncertain first.")
    rv.add_argument("--pred", required=True, help="the --output folder of medseg predict")
    rv.add_argument("--by", default="predictive_entropy_structure",
                    help="column of uncertainty.csv / predictions.csv (default "
                         "%(default)s, averaged over a case's structures)")
    rv.add_argument("--top", type=int, default=10, help="cases to print")
    se = sub.add_parser("select", help="pick the next cases to label (active learning)",
                        description="Predict a pool of unlabelled cases with uncertainty and "
                                    "write selection.csv with the N cases of highest "
                                    "acquisition score (default: mean mutual information "
                                    "over the image, BALD).")
    se.add_argument("--model", required=True, help="model folder written by medseg train")
    se.add_argument("--pool", required=True, help="images (or label table) to choose from")
    se.add_argument("--n", type=int, required=True, help="cases to select")
    se.add_argument("--output", required=True, help="folder for predictions/ and selection.csv")
    se.add_argument("--uncertainty", choices=("mc", "mc_decoder", "ensemble", "tta"),
                    default="mc")
    se.add_argument("--samples", type=int, default=10)
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--by", default="mutual_information_image",
                    help="acquisition score column (default %(default)s)")
    se.add_argument("--split", default=None, help="classification: rows of this split")
    se.add_argument("--device", default="auto")
    rp = sub.add_parser("report", help="write the model card of a model folder (HTML / Markdown)",
                        description="The model card alone: training data (dataset, cases, "
                                    "classes), configuration, intended use and known limits, "
                                    "validation results (train_log.csv final / best, "
                                    "oof_metrics.json with its interval, calibration.json ECE "
                                    "before / after). HTML is one self-contained file.")
    rp.add_argument("--model", required=True, help="model folder written by medseg train")
    rp.add_argument("--format", choices=("html", "md"), default=None,
                    help="html or md (default: from the --output suffix, else html)")
    rp.add_argument("--output", required=True,
                    help="file, or folder for model_card.html / model_card.md")
    rp.add_argument("--force", action="store_true", help="replace an existing file")
    info = sub.add_parser("info", help="describe a trained model folder",
                          description="Check a model folder (plan.json, network) and print "
                                      "its task, network, input, classes and training summary.")
    info.add_argument("--model", required=True, help="model folder written by medseg train")
    sub.add_parser("models", help="list the registered networks")
    return ap

def _debug() -> bool:
    return os.environ.get("MEDSEG_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medseg`` command.

    Exit status: 0 done, 2 bad input (one line naming the file, the problem and the fix),
    1 an internal error (one line saying it is a bug; the traceback with ``--debug`` or
    ``MEDSEG_DEBUG=1``), 130 Ctrl-C.
    """
    args = _parser().parse_args(argv)
    debug = args.debug or _debug()
    try:
        from medseg.workflows import commands

        return int(getattr(commands, f"cmd_{args.command.replace('-', '_')}")(args) or 0)
    except MedsegError as e:
        print(f"medseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nmedseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, never a dump
        if debug:
            traceback.print_exc()
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        print(f"medseg {args.command}: internal error ({type(e).__name__}{where}: "
              f"{str(e)[:200]}); this is a bug in medseg, please report it"
              + ("" if debug else " with the traceback from --debug (or MEDSEG_DEBUG=1)"),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
