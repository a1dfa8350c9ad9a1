"""Tasks: what each task outputs (T1-T5) and the registry of task modules the engine drives.

Two layers share this package:

* :mod:`medseg.tasks.outputs` — the output types (:class:`ClassProbs`, :class:`MultiLabel`,
  :class:`SegProbs`, :class:`LabelMap`, :class:`InstanceSet`, :class:`ObservationMask`). They
  sit at the bottom of the package (every layer may use them) and importing them imports
  nothing else of medseg.
* the task modules (:mod:`medseg.tasks.segmentation`, ``instance``, ``classification``,
  ``restoration``) — each a :class:`~medseg.tasks.base.Task` registered by name, sitting at the
  top beside the training engine. They are imported only when asked for by name
  (:func:`get_task`), so a lower layer importing the output types never pulls them in.

Adding a task is one module that subclasses :class:`~medseg.tasks.base.Task`, decorates it with
:func:`register_task` and is named in ``_BUILTIN`` below (see docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from medseg.tasks.outputs import (
    ClassProbs,
    InstanceSet,
    LabelMap,
    MultiLabel,
    ObservationMask,
    SegProbs,
)

if TYPE_CHECKING:
    from medseg.tasks.base import Task

#: Built-in task modules, in the order :func:`recognise_prediction` asks them.
_BUILTIN = ("restoration", "classification", "instance", "segmentation")
_REGISTRY: dict[str, type[Task]] = {}
#: Names a plan or config may still carry, mapped to today's task name.
ALIASES = {"semantic_segmentation": "segmentation"}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a :class:`~medseg.tasks.base.Task` available by ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    for mod in _BUILTIN:
        importlib.import_module(f"medseg.tasks.{mod}")


def list_tasks() -> list[str]:
    """Registered task names, in dispatch order (built-ins first)."""
    _load_builtin()
    order = [n for n in _BUILTIN if n in _REGISTRY]
    return order + sorted(n for n in _REGISTRY if n not in order)


def get_task(name: str) -> Task:
    """A fresh instance of the task registered as ``name`` (legacy names accepted).

    Raises:
        KeyError: no such task (the message lists the registered ones).
    """
    _load_builtin()
    name = ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered: {', '.join(list_tasks())}")
    return _REGISTRY[name]()


__all__ = [
    "ALIASES",
    "ClassProbs",
    "InstanceSet",
    "LabelMap",
    "MultiLabel",
    "ObservationMask",
    "SegProbs",
    "get_task",
    "list_tasks",
    "register_task",
]
