"""One model folder type: what ``medseg train`` writes and everything else reads.

A model folder holds::

    config.yaml           the resolved ExperimentConfig of the run
    plan.json             the Plan: task, network, shapes, classes, task entries (preprocessing...)
    checkpoint_last.pt    weights + optimiser + engine state (resume)
    checkpoint_best.pt    the same at the best validation value of the task's key metric
    train_log.csv         one row per epoch

:class:`Plan` is the typed, versioned schema of ``plan.json``; :class:`ModelFolder` loads and
checks a folder (bad JSON, a wrong type, an unknown task or network, options that do not build
the network or do not match the weights each give a one-line :class:`~medseg.errors.InputError`
naming ``plan.json``) and builds its network. Folders written before the plan had a version
(``medseg-plan/1``) load unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medseg.errors import InputError
from medseg.io.paths import path_inside
from medseg.training.checkpoint import (
    BEST_NAME,
    CONFIG_NAME,
    LAST_NAME,
    LOG_NAME,
    PLAN_NAME,
    atomic_write_json,
    load_checkpoint,
)
from medseg.training.device import resolve_device

PLAN_FORMAT = "medseg-plan/2"
#: Plan formats this version reads.
READABLE_FORMATS = ("medseg-plan/1", PLAN_FORMAT)
#: Keys every plan has; the rest of ``plan.json`` are the task's entries.
_CORE_KEYS = ("format", "task", "spatial_dims", "in_channels", "num_classes", "class_names",
              "model", "train_ids", "val_ids", "members")
#: A plan larger than this is not a medseg plan (a guard before anything is built from it).
MAX_PLAN_BYTES = 64 * 2**20
#: A network a plan may ask for (counted on the meta device before any memory is taken).
MAX_PARAMETERS = 2_000_000_000


@dataclass
class Plan:
    """The schema of ``plan.json``: all prediction needs besides the weights.

    Attributes:
        task: Registered task name (:func:`medseg.tasks.list_tasks`).
        spatial_dims: 2 or 3.
        in_channels: Input channels of the network.
        num_classes: Output channels of the network (classes, labels, or 1 for restoration).
        model_name: Registered network name.
        model_options: Its constructor options.
        class_names: One name per output class (empty where the task has none).
        train_ids: Case ids the model was trained on.
        val_ids: Case ids of its validation split.
        entries: The task's own entries (preprocessing, patch size, noise law, ...), checked
            by the task (:meth:`medseg.tasks.base.Task.check_plan`).
        variance_head: The network carries a logit log-variance head (U1).
        members: Sub-folders of an ensemble's members (each a model folder), empty for one
            model.
        format: Schema version written (``medseg-plan/2``; ``/1`` is read too).
    """

    task: str
    spatial_dims: int
    in_channels: int
    num_classes: int
    model_name: str
    model_options: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    train_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    entries: dict[str, Any] = field(default_factory=dict)
    format: str = PLAN_FORMAT
    variance_head: bool = False
    members: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        """``plan[key]``: a task entry, or a core field by its ``plan.json`` name."""
        if key in self.entries:
            return self.entries[key]
        d = self.to_dict()
        if key in d:
            return d[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """Like ``dict.get`` on the ``plan.json`` view."""
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, Any]:
        """The ``plan.json`` layout (core keys first, then the task's entries)."""
        model: dict[str, Any] = {"name": self.model_name, "options": dict(self.model_options)}
        if self.variance_head:
            model["variance_head"] = True
        d = {"format": self.format, "task": self.task, "spatial_dims": self.spatial_dims,
             "in_channels": self.in_channels, "num_classes": self.num_classes,
             "class_names": list(self.class_names), "model": model,
             "train_ids": list(self.train_ids), "val_ids": list(self.val_ids)}
        if self.members:
            d["members"] = list(self.members)
        return {**d, **self.entries}

    @classmethod
    def from_dict(cls, d: Any, source: str | Path | None = None) -> Plan:
        """Check types and build; legacy task names (``semantic_segmentation``) are mapped.

        Raises:
            InputError: not a mapping, an unknown format, a missing or ill-typed core key
                (naming ``source``).
        """
        from medseg.tasks import ALIASES

        def bad(problem: str) -> InputError:
            return InputError(problem, source, "give the plan.json that medseg train wrote "
                                               "(or retrain the model)")

        if not isinstance(d, dict):
            raise bad(f"plan.json must hold a JSON object, got {type(d).__name__}")
        fmt = d.get("format", "medseg-plan/1")
        if fmt not in READABLE_FORMATS:
            raise bad(f"unknown plan format {fmt!r} (this medseg reads "
                      f"{', '.join(READABLE_FORMATS)})")

        def need(key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
            if key not in d:
                if default is ...:
                    raise bad(f"plan.json has no {key!r} entry")
                return default
            v = d[key]
            if isinstance(v, bool) and kind is int or not isinstance(v, kind):
                raise bad(f"plan.json entry {key!r} must be {getattr(kind, '__name__', kind)}, "
                          f"got {v!r:.60}")
            return v

        task = str(need("task", str))
        model = need("model", dict)
        name, options = model.get("name"), model.get("options", {})
        head = model.get("variance_head", False)
        if not isinstance(name, str) or not isinstance(options, dict) or not isinstance(head,
                                                                                        bool):
            raise bad("plan.json entry 'model' must be {\"name\": text, \"options\": {...}, "
                      "\"variance_head\": true/false}")
        dims = need("spatial_dims", int)
        if dims not in (2, 3):
            raise bad(f"plan.json entry 'spatial_dims' must be 2 or 3, got {dims}")
        cin, ncls = need("in_channels", int), need("num_classes", int)
        if not (1 <= cin <= 4096 and 1 <= ncls <= 65535):
            raise bad(f"plan.json in_channels {cin} / num_classes {ncls} out of range")
        lists = {}
        for key in ("class_names", "train_ids", "val_ids", "members"):
            v = need(key, list, [])
            if not all(isinstance(s, str) for s in v):
                raise bad(f"plan.json entry {key!r} must be a list of text")
            lists[key] = v
        entries = {k: v for k, v in d.items() if k not in _CORE_KEYS}
        if any(not m or "/" in m or "\\" in m or m.startswith(".") for m in lists["members"]):
            raise bad("plan.json 'members' must name sub-folders of the model folder")
        return cls(ALIASES.get(task, task), dims, cin, ncls, name, dict(options),
                   lists["class_names"], lists["train_ids"], lists["val_ids"], entries,
                   PLAN_FORMAT, head, lists["members"])


@dataclass
class ModelFolder:
    """A trained model folder: its path and its checked :class:`Plan`.

    Attributes:
        path: The folder.
        plan: Its plan.
    """

    path: Path
    plan: Plan
    members: list[ModelFolder] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.plan.task

    @property
    def is_ensemble(self) -> bool:
        """The folder holds several members (deep ensemble or folds), averaged at prediction."""
        return bool(self.members)

    @classmethod
    def open(cls, folder: str | Path, task: str | None = None) -> ModelFolder:
        """Read and check ``plan.json`` (schema, task, network name, the task's entries).

        Args:
            folder: The model folder.
            task: When given, the task the caller needs (another task is an error).

        Raises:
            InputError: not a model folder, or a bad ``plan.json`` (naming it).
        """
        from medseg.networks import list_models
        from medseg.tasks import get_task, list_tasks

        folder = Path(folder)
        plan_path = folder / PLAN_NAME
        if not folder.is_dir():
            raise InputError("model folder not found", folder,
                             "give the --output folder of medseg train")
        if not plan_path.is_file():
            raise InputError("not a medseg model folder (no plan.json)", folder,
                             "give the --output folder of medseg train")
        if plan_path.stat().st_size > MAX_PLAN_BYTES:
            raise InputError(f"plan.json is {plan_path.stat().st_size} bytes, more than a plan "
                             "can be", plan_path, "give the plan.json that medseg train wrote")
        try:
            raw = json.loads(plan_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"plan.json is not valid JSON ({e})", plan_path,
                             "give the plan.json that medseg train wrote") from None
        plan = Plan.from_dict(raw, plan_path)
        if plan.task not in list_tasks():
            raise InputError(f"plan.json names an unknown task {plan.task!r}", plan_path,
                             f"this medseg knows {', '.join(list_tasks())}")
        if plan.model_name not in list_models():
            raise InputError(f"plan.json names an unknown network {plan.model_name!r}",
                             plan_path, "see `medseg models` for the registered networks")
        if task is not None and plan.task != task:
            raise InputError(f"this is a {plan.task} model, not a {task} model", folder,
                             f"give a model trained with --task {task}")
        get_task(plan.task).check_plan(plan, plan_path)
        members = []
        for k, name in enumerate(plan.members):
            sub = folder / name
            try:
                link = sub.is_symlink()
                present = (sub / PLAN_NAME).is_file()
            except OSError:  # e.g. a name too long for the file system
                link = present = False
            # a member is a sub-folder, not a symbolic link to another model elsewhere
            if link or (present and not path_inside(sub, folder)):
                raise InputError(f"plan.json members[{k}] {name!r} is a link leading out of the "
                                 "model folder", plan_path,
                                 "copy the member's folder into the model folder")
            if not present:
                raise InputError(f"the ensemble member {name!r} is missing", sub,
                                 f"train it (medseg train --resume --output {sub}) or remove it "
                                 "from plan.json's members")
            m = cls.open(sub)
            if m.members or (m.task, m.plan.in_channels, m.plan.num_classes) != (
                    plan.task, plan.in_channels, plan.num_classes):
                raise InputError(f"ensemble member {name!r} is not a {plan.task} model with "
                                 f"{plan.in_channels} input(s) and {plan.num_classes} output(s)",
                                 sub / PLAN_NAME, "give members of one ensemble")
            members.append(m)
        return cls(folder, plan, members)

    def checkpoint_path(self, which: str = "best") -> Path:
        """``checkpoint_best.pt`` (falls back to the last one before any best), or the last."""
        if which not in ("best", "last"):
            raise InputError(f"unknown checkpoint {which!r}", self.path, "use best or last")
        ck = self.path / (BEST_NAME if which == "best" else LAST_NAME)
        if which == "best" and not ck.exists() and (self.path / LAST_NAME).exists():
            ck = self.path / LAST_NAME
        return ck

    def build_network(self) -> torch.nn.Module:
        """The network the plan names, freshly initialised (no weights loaded).

        Raises:
            InputError: the plan's options do not build it (naming ``plan.json``).
        """
        from medseg.networks import create_model
        from medseg.networks.heads import add_variance_head

        p = self.plan

        def build() -> torch.nn.Module:
            net = create_model(p.model_name, spatial_dims=p.spatial_dims,
                               in_channels=p.in_channels, num_classes=p.num_classes,
                               **p.model_options)
            return add_variance_head(net) if p.variance_head else net

        try:
            with torch.device("meta"):  # count first: the plan could ask for any size
                n = sum(t.numel() for t in build().parameters())
            if n > MAX_PARAMETERS:
                raise InputError(f"the network in plan.json would have {n:,} parameters (more "
                                 f"than {MAX_PARAMETERS:,})", self.path / PLAN_NAME,
                                 "give the plan.json that medseg train wrote")
            return build()
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"the network options in plan.json do not build "
                             f"{p.model_name!r}: {e}", self.path / PLAN_NAME,
                             "give the plan.json that medseg train wrote") from None

    def load_network(self, checkpoint: str = "best", device: str = "auto"
                     ) -> tuple[torch.nn.Module, torch.device]:
        """The network with its trained weights, in eval mode on ``device``.

        Raises:
            InputError: bad device, missing/unreadable checkpoint, or weights that do not fit
                the network the plan describes (naming ``plan.json``).
        """
        dev = resolve_device(device)
        if self.members:
            return self.members[0].load_network(checkpoint, device)
        state = load_checkpoint(self.checkpoint_path(checkpoint), map_location=dev)
        model = self.build_network()
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:200]
            raise InputError(f"the network in plan.json does not match the checkpoint's "
                             f"weights ({first})", self.path / PLAN_NAME,
                             "keep plan.json and the checkpoints of one training run together"
                             ) from None
        return model.to(dev).eval(), dev

    def load_networks(self, checkpoint: str = "best", device: str = "auto"
                      ) -> tuple[list[torch.nn.Module], torch.device]:
        """Every member's network (one for a single model), in eval mode on ``device``."""
        if not self.members:
            model, dev = self.load_network(checkpoint, device)
            return [model], dev
        nets, dev = [], resolve_device(device)
        for m in self.members:
            nets.append(m.load_network(checkpoint, device)[0])
        return nets, dev

    def temperatures(self) -> list[float]:
        """The temperature of each network of :meth:`load_networks` (U5).

        The folder's own ``calibration.json`` applies to every network (a single model, or a
        K-fold folder calibrated on its out-of-fold predictions); otherwise each ensemble member
        keeps the temperature fitted on its own validation split; 1 where there is none.
        """
        from medseg.training.calibration import read_calibration, read_temperature

        if not self.members or "temperature" in read_calibration(self.path):
            return [read_temperature(self.path)] * max(1, len(self.members))
        return [read_temperature(m.path) for m in self.members]

    def config(self) -> Any:
        """The run's :class:`~medseg.training.config.ExperimentConfig` (``None`` if absent)."""
        from medseg.training.config import ExperimentConfig

        p = self.path / CONFIG_NAME
        return ExperimentConfig.load(p) if p.is_file() else None

    def describe(self) -> str:
        """A few lines for a person: task, network, data shape, classes, training summary."""
        p = self.plan
        lines = [f"model folder {self.path}",
                 f"  task        {p.task}",
                 f"  network     {p.model_name} {p.model_options or ''}".rstrip(),
                 f"  input       {p.spatial_dims}D, {p.in_channels} channel(s)",
                 f"  outputs     {p.num_classes}" + (f" ({', '.join(p.class_names)})"
                                                     if p.class_names else ""),
                 f"  cases       {len(p.train_ids)} training / {len(p.val_ids)} validation"]
        if p.variance_head:
            lines.append("  variance    logit log-variance head (aleatoric, U1)")
        if self.members:
            lines.append(f"  ensemble    {len(self.members)} members: {', '.join(p.members)}")
        log = self.path / LOG_NAME
        if log.is_file():
            n = max(0, len(log.read_text().splitlines()) - 1)
            lines.append(f"  trained     {n} epoch(s) (train_log.csv)")
        return "\n".join(lines)


def write_plan(plan: Plan, folder: str | Path) -> Path:
    """Write ``plan.json`` atomically; returns its path."""
    path = Path(folder) / PLAN_NAME
    atomic_write_json(plan.to_dict(), path)
    return path
