"""The sandbox and the byte-level mutations shared by the fuzz tests.

:class:`Sandbox` keeps one :mod:`fuzz_worker` process (medseg imported once) and sends it one
input at a time. Each case is bounded three ways: a wall-clock timeout (the worker is killed and
restarted on a hang), an address-space limit inside the worker (``RLIMIT_AS``, so an unbounded
allocation fails there as ``MemoryError`` instead of taking the machine), and the worker's peak
RSS, checked against :data:`MAX_RSS_KB`. The worker runs with ``MEDSEG_MAX_IMAGE_BYTES=64M`` so a
file that declares more is refused by medseg's own check.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WORKER = Path(__file__).with_name("fuzz_worker.py")
REPO = Path(__file__).resolve().parents[2]
#: Seconds one case may take before it counts as a hang.
CASE_TIMEOUT = 20.0
#: Address space the worker may add on top of what it holds after importing medseg.
MEMORY_BUDGET = 2**30
#: Peak resident memory of the worker that counts as unbounded.
MAX_RSS_KB = 1_500_000
#: The size limit medseg applies inside the worker.
IMAGE_LIMIT = "64M"
#: Examples per test in the default suite and in the ``slow`` campaign (13 tests).
SMALL, LONG = 60, 800
COMMON = dict(derandomize=True, deadline=30_000, database=None,
              suppress_health_check=list(HealthCheck))


@dataclass
class Outcome:
    """What one case did."""

    status: str  # ok | medseg | bug | hang | crash | memory
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Sandbox:
    """One long-lived worker process; :meth:`run` sends a case, restarting the worker as needed."""

    proc: subprocess.Popen | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def _start(self) -> None:
        env = dict(os.environ, MEDSEG_MAX_IMAGE_BYTES=IMAGE_LIMIT,
                   MEDSEG_FUZZ_MEMORY=str(MEMORY_BUDGET), PYTHONPATH=str(REPO / "src"),
                   OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1,
        )
        line = self._read_line(120.0)
        if line is None or json.loads(line).get("status") != "ready":
            raise RuntimeError("the fuzz worker did not start")

    def _read_line(self, timeout: float) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline() or None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, reader: str, path: Path) -> Outcome:
        """Run ``reader`` on ``path`` in the worker; count the outcome."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"reader": reader, "path": str(path)}) + "\n")
        self.proc.stdin.flush()
        line = self._read_line(CASE_TIMEOUT)
        if line is None:
            alive = self.proc.poll() is None
            self.close()
            out = Outcome("hang" if alive else "crash",
                          f"no answer within {CASE_TIMEOUT} s" if alive else "worker died")
        else:
            ans = json.loads(line)
            out = Outcome(ans["status"], ans["detail"], ans["seconds"])
            if (out.status == "bug" and "MemoryError" in out.detail) or (
                    out.status == "medseg" and "ran out of memory" in out.detail):
                out.status = "memory"  # the address-space cap was hit: not bounded up front
            elif ans["rss_kb"] > MAX_RSS_KB:
                out = Outcome("memory", f"peak RSS {ans['rss_kb']} kB", out.seconds)
            if out.status not in ("ok", "medseg"):
                self.close()  # start clean after a failure
        c = self.counts.setdefault(reader, {})
        c[out.status] = c.get(out.status, 0) + 1
        return out


#: Escapes the campaign found in modules outside io/ and data/, reported to their owner (issue
#: 10). A case failing only this way is an expected failure (``xfail``) naming the report, so the
#: suite stays green while it is open and passes on its own once it is fixed; any other escape
#: fails. Each entry: (what, a predicate on the worker's traceback).
KNOWN_ELSEWHERE: list[tuple[str, object]] = [
    # Empty: the four escapes the campaign found (wrong-typed config values reaching
    # AugmentConfig and PhysicsNoiseConfig, deeply nested YAML, a plan.json member name too long
    # for the OS) are fixed, so any of them coming back fails the campaign.
]


#: Known escapes met by the running test (see :func:`fuzz_pair`).
KNOWN_FOUND: list[str] = []


def check(sandbox: Sandbox, reader: str, path: Path) -> Outcome:
    """The property: the call succeeds or raises a MedsegError, in time and bounded memory.

    A known escape (:data:`KNOWN_ELSEWHERE`) is recorded in :data:`KNOWN_FOUND` and the campaign
    goes on; the test then ends as an expected failure naming it.
    """
    out = sandbox.run(reader, path)
    if out.status == "bug":
        for what, matches in KNOWN_ELSEWHERE:
            if matches(out.detail):  # type: ignore[operator]
                KNOWN_FOUND.append(what)
                return out
    assert out.status in ("ok", "medseg"), f"{reader} on {path}: {out.status}\n{out.detail}"
    return out


def fuzz_pair(strategy, reader: str, write):
    """A default-budget test and a ``slow`` long-budget test of ``reader``.

    Args:
        strategy: Draws one case.
        reader: The worker's reader name.
        write: ``write(folder, case) -> path`` puts the case on disk and returns what to read.
    """

    def body(sandbox, case):
        with workdir() as d:
            check(sandbox, reader, write(Path(d), case))

    def make(n: int):
        run = settings(max_examples=n, **COMMON)(given(case=strategy)(body))

        def test(sandbox):
            KNOWN_FOUND.clear()
            run(sandbox)
            if KNOWN_FOUND:
                counts = {w: KNOWN_FOUND.count(w) for w in dict.fromkeys(KNOWN_FOUND)}
                pytest.xfail("known escapes outside io/data, reported: " + "; ".join(
                    f"{w} ({c} case(s))" for w, c in counts.items()))

        return test

    return make(SMALL), pytest.mark.slow(make(LONG))


def workdir() -> tempfile.TemporaryDirectory:
    """A fresh folder for one case (hypothesis cannot use function-scoped tmp_path)."""
    return tempfile.TemporaryDirectory(prefix="medseg-fuzz-")


# ------------------------------------------------------------------- byte-level mutations

INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 255, 256, 0x7F, 0x80, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                    2**31 - 1, 2**31, 2**32 - 1, 60000, 1 << 20, 2**62, 2**63 - 1, -(2**63)]
INTERESTING_FLOATS = [0.0, -0.0, -1.0, 1e-30, 1e30, 5000.0, float("nan"), float("inf"),
                      float("-inf"), 1e300, 0.5]


def _pos(draw, n: int, hot: int) -> int:
    """A position in ``[0, n]``, mostly inside the first ``hot`` bytes (the header)."""
    if n == 0:
        return 0
    if hot and draw(st.integers(0, 4)) > 0:
        return draw(st.integers(0, min(hot, n) - 1))
    return draw(st.integers(0, n - 1))


@st.composite
def mutated_bytes(draw, seed: bytes, hot: int = 512, max_ops: int = 6) -> bytes:
    """``seed`` with a few byte-level mutations: bit flips, byte and integer/float overwrites
    (interesting values, either endianness), truncation, insertion, deletion, repetition."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "byte", "int", "float", "truncate", "insert",
                                   "delete", "repeat"]))
        n = len(data)
        if op == "flip" and n:
            p = _pos(draw, n, hot)
            data[p] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and n:
            data[_pos(draw, n, hot)] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, 0x20, 0x0A,
                                                             0x30, 0x2D]) | st.integers(0, 255))
        elif op == "int" and n:
            width = draw(st.sampled_from([1, 2, 4, 8]))
            v = draw(st.sampled_from(INTERESTING_INTS) | st.integers(-(2**63), 2**64 - 1))
            raw = (v % (1 << (8 * width))).to_bytes(width, draw(st.sampled_from(["little",
                                                                                 "big"])))
            p = _pos(draw, n, hot)
            data[p:p + width] = raw
        elif op == "float" and n:
            width = draw(st.sampled_from([4, 8]))
            v = draw(st.sampled_from(INTERESTING_FLOATS) | st.floats(allow_nan=True))
            fmt = ("<" if draw(st.booleans()) else ">") + ("f" if width == 4 else "d")
            try:
                raw = struct.pack(fmt, v)
            except OverflowError:
                raw = struct.pack(fmt, float("inf"))
            p = _pos(draw, n, hot)
            data[p:p + width] = raw
        elif op == "truncate":
            del data[_pos(draw, n, hot if draw(st.booleans()) else n):]
        elif op == "insert":
            p = _pos(draw, n, hot) if n else 0
            data[p:p] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete" and n:
            p = _pos(draw, n, hot)
            del data[p:p + draw(st.integers(1, 64))]
        elif op == "repeat" and n:
            p = _pos(draw, n, hot)
            chunk = bytes(data[p:p + draw(st.integers(1, 256))])
            data[p:p] = chunk * draw(st.integers(1, 50))
    return bytes(data)


def random_bytes() -> st.SearchStrategy[bytes]:
    """Plain random content, sometimes behind a format's magic number."""
    magics = [b"", b"\x1f\x8b\x08\x00", b"NRRD0004\n", b"\x89PNG\r\n\x1a\n", b"II*\x00",
              b"MM\x00*", b"PK\x03\x04", b"\x5c\x01\x00\x00", b"\x93NUMPY", b"\0" * 128 + b"DICM"]
    return st.builds(lambda m, b: m + b, st.sampled_from(magics), st.binary(max_size=2048))
