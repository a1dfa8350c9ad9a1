"""The implementations behind the ``medseg`` subcommands (CLI and Python): the demo and the
train / predict / evaluate dispatch through the task registry (:mod:`medseg.tasks`).

This is the top layer: it composes the engine, the model folder and the task modules.
"""
