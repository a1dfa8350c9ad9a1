"""Summaries of per-case results, ``metrics.json`` / ``metrics.csv`` and a terminal table (E5).

Statistics are NaN-aware: a NaN (a value the empty-case policy leaves undefined) is skipped and
counted in ``n_nan``; ``std`` is the sample standard deviation (``ddof=1``, NaN with fewer than
two values). Files are written atomically (temporary file in the same folder + ``os.replace``).
In ``metrics.json`` NaN is written as ``null`` (strict JSON); :func:`read_metrics` turns it back.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io.atomic import atomic_write_text
from medseg.metrics.policy import EmptyPolicy
from medseg.metrics.segmentation import CLASS_RESULT_KEYS

#: Metrics summarised by default.
SUMMARY_METRICS = ("dice", "iou", "hd95", "assd", "nsd")
STAT_KEYS = ("mean", "median", "std", "min", "max", "n", "n_nan")
_UNITS = {"hd95": "mm", "assd": "mm"}
_FLOAT_KEYS = frozenset(
    {"dice", "iou", "hd95", "assd", "nsd", "volume_pred", "volume_ref",
     "mean", "median", "std", "min", "max",
     # volume differences and their Bland-Altman summary (medseg.metrics.agreement)
     "volume_diff", "volume_diff_pct",
     *[f"{k}{s}" for k in ("bias", "sd", "loa_low", "loa_high", "bias_ci_low", "bias_ci_high")
       for s in ("", "_pct")]}
)


def describe_values(values: Sequence[float]) -> dict[str, float | int]:
    """NaN-aware statistics of a list of numbers.

    Args:
        values: Numbers, NaN allowed.

    Returns:
        ``{"mean", "median", "std", "min", "max", "n", "n_nan"}``; ``n`` counts non-NaN values,
        statistics of no value are NaN.
    """
    a = np.asarray(values, dtype=np.float64).ravel()
    nan = np.isnan(a)
    v = a[~nan]
    if v.size == 0:
        mean = median = lo = hi = math.nan
    else:
        mean, median = float(v.mean()), float(np.median(v))
        lo, hi = float(v.min()), float(v.max())
    std = float(v.std(ddof=1)) if v.size >= 2 else math.nan
    return {"mean": mean, "median": median, "std": std, "min": lo, "max": hi,
            "n": int(v.size), "n_nan": int(nan.sum())}


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      groups: Sequence[str] | None = None) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean (NaN values left out).

    Args:
        values: ``(N,)`` per-case values.
        n_boot: Resamples.
        seed: Seed of the resampling.
        groups: ``N`` subject ids: resample subjects, not cases (a cluster bootstrap; each
            replicate's mean is over all the finite values of the subjects drawn). Cases of one
            subject are correlated, so resampling them one by one gives too narrow an
            interval. With one case per subject this is the ordinary bootstrap (the same draws
            for the same seed).

    Returns:
        ``(low, high)``; NaN when no value is finite.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    rng = np.random.default_rng(seed)
    if groups is None:
        v = values[finite]
        if v.size == 0:
            return math.nan, math.nan
        means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    else:
        if len(groups) != values.size:
            raise ValueError(f"{len(groups)} group ids for {values.size} values")
        keys = [g for g, f in zip(groups, finite, strict=True) if f]
        if not keys:
            return math.nan, math.nan
        order = {g: i for i, g in enumerate(dict.fromkeys(keys))}  # first appearance
        index = np.array([order[g] for g in keys])
        sums = np.bincount(index, weights=values[finite], minlength=len(order))
        counts = np.bincount(index, minlength=len(order)).astype(np.float64)
        draw = rng.integers(0, len(order), (n_boot, len(order)))
        means = sums[draw].sum(1) / counts[draw].sum(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def bootstrap_ci(
    metric_fn: Callable[..., float | np.ndarray],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    stratify: np.ndarray | None = None,
    clusters: Sequence[str] | np.ndarray | None = None,
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Percentile bootstrap interval of a metric, resampling cases with replacement.

    Args:
        metric_fn: ``metric_fn(*arrays_resampled)`` -> a float or a 1-D array of metrics.
        *arrays: Arrays whose first axis indexes cases (all the same length ``N``).
        n_boot: Number of bootstrap resamples.
        seed: Seed of the NumPy generator (same seed, same interval).
        level: Coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        stratify: Optional ``(N,)`` group per case (e.g. the class); each resample draws the
            same number of cases from every group as the data has.
        clusters: Optional ``(N,)`` subject per case: each resample draws subjects with
            replacement and takes all their cases (a cluster bootstrap, for cases of one
            subject that are not independent). Not combined with ``stratify``.

    Returns:
        ``(low, high)``, floats or arrays like the metric. Resamples where the metric is NaN
        (e.g. no positive case drawn) are skipped per entry; an entry NaN in every resample
        gets a NaN interval.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("all arrays must have the same number of cases")
    if n == 0 or n_boot < 1:
        raise ValueError("bootstrap_ci needs at least one case and n_boot >= 1")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    groups = None
    members: list[np.ndarray] | None = None
    if clusters is not None:
        if stratify is not None:
            raise ValueError("bootstrap_ci takes stratify or clusters, not both")
        clu = np.asarray(clusters, dtype=str)
        if clu.shape[0] != n:
            raise ValueError("clusters must have one entry per case")
        members = [np.flatnonzero(clu == g) for g in dict.fromkeys(clu.tolist())]
    if stratify is not None:
        strat = np.asarray(stratify)
        if strat.shape[0] != n:
            raise ValueError("stratify must have one entry per case")
        groups = [np.flatnonzero(strat == g) for g in np.unique(strat)]
    values = []
    for _ in range(n_boot):
        if members is not None:
            idx = np.concatenate([members[i] for i in rng.integers(0, len(members),
                                                                   size=len(members))])
        elif groups is None:
            idx = rng.integers(0, n, size=n)
        else:
            idx = np.concatenate([g[rng.integers(0, len(g), size=len(g))] for g in groups])
        values.append(np.asarray(metric_fn(*[np.asarray(a)[idx] for a in arrays]), float))
    vals = np.stack(values)  # (n_boot, *metric_shape)
    alpha = (1.0 - level) / 2.0
    lo = np.full(vals.shape[1:], np.nan)
    hi = np.full(vals.shape[1:], np.nan)
    flat_v = vals.reshape(n_boot, -1)
    lo_f, hi_f = lo.reshape(-1), hi.reshape(-1)
    for j in range(flat_v.shape[1]):
        col = flat_v[:, j][~np.isnan(flat_v[:, j])]
        if col.size:
            lo_f[j], hi_f[j] = np.quantile(col, [alpha, 1.0 - alpha])
    lo, hi = lo_f.reshape(vals.shape[1:]), hi_f.reshape(vals.shape[1:])
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def _policy_of(case_results: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    seen = {json.dumps(c.get("policy"), sort_keys=True) for c in case_results}
    if len(seen) > 1:
        raise ValueError(
            "case results were computed with different empty-case policies; evaluate all "
            "cases with the same EmptyPolicy"
        )
    return json.loads(seen.pop()) if seen else None


def summarize(
    case_results: Sequence[Mapping[str, Any]], metrics: Sequence[str] = SUMMARY_METRICS
) -> dict[str, Any]:
    """Per-class and pooled statistics of per-case results.

    Args:
        case_results: Outputs of :func:`medseg.metrics.evaluate_case`.
        metrics: Metric keys to summarise.

    Returns:
        ``{"n_cases", "policy", "metrics", "classes": {class_id: {metric: stats}},
        "pooled": {metric: stats}}`` with ``stats`` as in :func:`describe_values`; ``pooled``
        runs over every (case, class) pair.
    """
    per_class: dict[int, dict[str, list[float]]] = {}
    pooled: dict[str, list[float]] = {k: [] for k in metrics}
    for case in case_results:
        for cid, res in case["classes"].items():
            bucket = per_class.setdefault(int(cid), {k: [] for k in metrics})
            for k in metrics:  # a result without the metric (older files) counts as NaN
                v = float(res.get(k, math.nan))
                bucket[k].append(v)
                pooled[k].append(v)
    return {
        "n_cases": len(case_results),
        "policy": _policy_of(case_results),
        "metrics": list(metrics),
        "classes": {
            cid: {k: describe_values(vals) for k, vals in per_class[cid].items()}
            for cid in sorted(per_class)
        },
        "pooled": {k: describe_values(vals) for k, vals in pooled.items()},
    }


def metric_array(case_results: Sequence[Mapping[str, Any]], metrics: Sequence[str]
                 ) -> tuple[list[str], np.ndarray]:
    """Per-case values of every class and metric in one array.

    Args:
        case_results: Outputs of :func:`medseg.metrics.evaluate_case` (``N`` cases; class
            ids as ints, or as text after a JSON round trip).
        metrics: Metric keys (``M``).

    Returns:
        ``(class ids as text, numeric ones first in numeric order; (N, M, C) float64 values,
        NaN where a case lacks the class or the value is undefined)``.
    """
    classes = sorted({str(c) for r in case_results for c in r.get("classes", {})},
                     key=lambda c: (not c.lstrip("-").isdigit(),
                                    int(c) if c.lstrip("-").isdigit() else 0, c))
    vals = np.full((len(case_results), len(metrics), len(classes)), np.nan)
    for i, r in enumerate(case_results):
        per = r.get("classes", {})
        for k, cls in enumerate(classes):
            row = per.get(cls) or per.get(int(cls) if cls.lstrip("-").isdigit() else cls) or {}
            for j, met in enumerate(metrics):
                v = row.get(met)
                vals[i, j, k] = math.nan if v is None else float(v)
    return classes, vals


def mean_intervals(case_results: Sequence[Mapping[str, Any]],
                   metrics: Sequence[str] = SUMMARY_METRICS, n_boot: int = 1000, seed: int = 0,
                   subjects: Sequence[str] | None = None) -> dict[str, Any]:
    """95% percentile bootstrap intervals of the per-class and pooled means of
    :func:`summarize` (NaN-aware), resampling whole cases — or subjects, when ``subjects``
    gives each case's — with one draw for every class and metric
    (:func:`bootstrap_ci`).

    Args:
        case_results: Outputs of :func:`medseg.metrics.evaluate_case` (``N`` cases).
        metrics: Metric keys (undefined values, e.g. an empty case's HD95, are left out).
        n_boot: Resamples.
        seed: Seed of the resampling.
        subjects: ``N`` subject ids (cases of one subject drawn together), or ``None``.

    Returns:
        ``{"level": 0.95, "n_boot", "seed", "over": "cases" | "subjects", "n_groups",
        "classes": {class_id: {metric: [low, high]}}, "pooled": {metric: [low, high]}}``
        (class ids as ints where they are integers); the pooled mean runs over every (case,
        class) pair, its interval resampling cases (subjects) too.
    """
    classes, vals = metric_array(case_results, metrics)
    n, m, c = vals.shape
    out: dict[str, Any] = {"level": 0.95, "n_boot": int(n_boot), "seed": int(seed),
                           "over": "cases" if subjects is None else "subjects",
                           "n_groups": n if subjects is None else len(set(subjects)),
                           "classes": {}, "pooled": {}}
    if n == 0 or m == 0 or c == 0 or n_boot < 1:
        return out

    def stat(a: np.ndarray) -> np.ndarray:  # (n, m, c) -> (m, c + 1): classes, then pooled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_class = np.nanmean(a, axis=0)
            pooled = np.nanmean(a.transpose(1, 0, 2).reshape(m, -1), axis=1)
        return np.concatenate([per_class, pooled[:, None]], axis=1)

    lo, hi = bootstrap_ci(stat, vals, n_boot=n_boot, seed=seed, clusters=subjects)
    lo, hi = np.asarray(lo), np.asarray(hi)
    for k, cls in enumerate(classes):
        key = int(cls) if cls.lstrip("-").isdigit() else cls
        out["classes"][key] = {met: [float(lo[j, k]), float(hi[j, k])]
                               for j, met in enumerate(metrics)}
    out["pooled"] = {met: [float(lo[j, c]), float(hi[j, c])] for j, met in enumerate(metrics)}
    return out


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON values: mappings with text keys, lists (from tuples and arrays),
    Python bools / ints / floats from their NumPy kinds, and ``None`` for NaN and infinities
    (which strict JSON cannot hold). The one sanitiser of every ``*.json`` medseg writes."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    return obj


def _restore(obj: Any, key: str | None = None) -> Any:
    if isinstance(obj, dict):
        int_keys = key in ("classes", "volume_agreement")
        return {(int(k) if int_keys else k): _restore(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, key) for v in obj]
    if obj is None and key in _FLOAT_KEYS:
        return math.nan
    return obj


def _fmt_csv(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else repr(float(v))
    return str(v)


def metrics_csv_text(case_results: Sequence[Mapping[str, Any]]) -> str:
    """``metrics.csv`` content: one row per (case, class) with every per-class result key.

    The ``case`` column holds the case id, or the case's index when it has none.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "class", *CLASS_RESULT_KEYS])
    for i, case in enumerate(case_results):
        name = case.get("case")
        name = str(i) if name is None else str(name)
        for cid, res in case["classes"].items():
            w.writerow([name, str(cid), *(_fmt_csv(res[k]) for k in CLASS_RESULT_KEYS)])
    return buf.getvalue()


def write_metrics(
    out_dir: str | Path,
    case_results: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    policy: EmptyPolicy | Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` into ``out_dir`` (created if missing).

    Args:
        out_dir: Output folder.
        case_results: Outputs of :func:`medseg.metrics.evaluate_case`.
        summary: Output of :func:`summarize`.
        policy: The empty-case policy; default: the one recorded in ``summary``.

    Returns:
        Paths of ``metrics.json`` and ``metrics.csv``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if policy is None:
        policy = summary.get("policy")
    pol = policy.to_dict() if isinstance(policy, EmptyPolicy) else policy
    doc = {"policy": pol, "cases": list(case_results), "summary": summary}
    return write_metrics_pair(out, json_safe(doc), metrics_csv_text(case_results))


def write_metrics_pair(out_dir: str | Path, doc: dict[str, Any], csv_text: str
                       ) -> tuple[Path, Path]:
    """``metrics.csv`` then ``metrics.json``, so that the two can never disagree.

    The old ``metrics.json`` is removed first, the new ``metrics.csv`` written atomically, and
    ``metrics.json`` (with ``metrics_csv_sha256``, the hash of the CSV beside it) written last.
    After a crash at any moment either ``metrics.json`` is absent (the evaluation did not
    finish) or it describes exactly the ``metrics.csv`` beside it.

    Returns:
        Paths of ``metrics.json`` and ``metrics.csv``.
    """
    import hashlib

    from medseg.io.atomic import fsync_folder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "metrics.json", out / "metrics.csv"
    if json_path.exists():
        json_path.unlink()
        fsync_folder(out)
    atomic_write_text(csv_path, csv_text)
    doc = {**doc, "metrics_csv_sha256": hashlib.sha256(csv_text.encode("utf-8")).hexdigest()}
    atomic_write_text(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return json_path, csv_path


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Load ``metrics.json`` back: class ids become ints again and ``null`` metrics NaN.

    Args:
        path: The ``metrics.json`` file, or the folder holding it.

    Returns:
        ``{"policy", "cases", "summary"}`` as written by :func:`write_metrics`.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    with open(p, encoding="utf-8") as f:
        return _restore(json.load(f))


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _fmt(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    return "nan" if math.isnan(v) else f"{v:.4f}"


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table of a :func:`summarize` result, with the empty-case policy on top.

    Args:
        summary: Output of :func:`summarize` (or its JSON round trip).

    Returns:
        Multi-line string, one row per (class, metric) and the pooled rows last.
    """
    lines = []
    pol = summary.get("policy")
    if pol:
        lines.append(EmptyPolicy.from_dict(pol).describe())
    lines.append(f"cases: {summary.get('n_cases', 0)}")
    cis = summary.get("ci95")
    header = ["class", "metric", *STAT_KEYS, *(["mean 95% CI"] if cis else [])]
    rows: list[list[str]] = []
    groups = [(str(cid), stats, (cis or {}).get("classes", {}).get(cid, {}))
              for cid, stats in summary.get("classes", {}).items()]
    groups.append(("all", summary.get("pooled", {}), (cis or {}).get("pooled", {})))
    for name, stats, intervals in groups:
        for metric, st in stats.items():
            unit = _UNITS.get(metric)
            label = f"{metric} [{unit}]" if unit else metric
            iv = intervals.get(metric)
            shown = [] if not cis else [
                f"[{_fmt(_num(iv[0]))}, {_fmt(_num(iv[1]))}]" if iv else "n/a"]
            rows.append([name, label, *(_fmt(st[k]) for k in STAT_KEYS), *shown])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt_row(r: list[str]) -> str:
        cells = zip(r, widths, strict=True)
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells))

    lines.append(fmt_row(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt_row(r) for r in rows)
    if cis:
        lines.append(f"95% CI: percentile bootstrap of the mean over {cis.get('over', 'cases')} "
                     f"({cis.get('n_groups', '?')}; {cis.get('n_boot', '?')} resamples)")
    return "\n".join(lines)
