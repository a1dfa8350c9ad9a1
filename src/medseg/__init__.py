"""medseg: medical image segmentation and classification, faithful to the mathematics.

Subpackages (data flows one way, a lower layer never imports a higher one)::

    io -> data / transforms -> networks -> losses (train) | inference -> metrics -> reports

The command line lives in :mod:`medseg.cli`; the spec ids (T, L, A, P, U, E) each module
implements are listed in ``docs/architecture.md``.
"""

from medseg.errors import InputError, MedsegError

__version__ = "0.1.0"

__all__ = ["InputError", "MedsegError", "__version__"]
