"""PNG plots of a sweep: the metric against terms per document, latency against query terms."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from milco_os.core.errors import MilcoOSError
from milco_os.evaluation.sweep import SweepResult


def plot_sweep(results: Mapping[str, SweepResult], metric: str, out: str | Path) -> list[Path]:
    """``metric_vs_doc_terms.png`` (document pruning) and ``latency_vs_query_terms.png``."""
    plt = _pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    series: dict[str, list[tuple[float, float, str]]] = {}
    latency: dict[str, list[tuple[float, float]]] = {}
    for result in results.values():
        system, evaluation = result.system, result.evaluation
        if system.mode != "bm25":
            series.setdefault(f"{system.mode} q={system.query_prune}", []).append(
                (result.doc_terms_mean or 0.0, 100 * evaluation.average[metric],
                 str(system.doc_prune)))
        if "query_terms_mean" in evaluation.cost:
            latency.setdefault(f"doc={system.doc_prune} {system.mode}", []).append(
                (evaluation.cost["query_terms_mean"], evaluation.cost["latency_p50_ms"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        for x, y, name in points:
            ax.annotate(str(name), (x, y), fontsize=7)
    ax.set(xlabel="terms per document (pivot + echo)", ylabel=metric,
           title=f"{metric} vs document pruning")
    ax.legend(fontsize=7)
    paths = [_save(plt, fig, out / "metric_vs_doc_terms.png")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in latency.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set(xlabel="query terms sent", ylabel="latency p50 (ms)",
           title="latency vs query pruning")
    ax.legend(fontsize=7)
    paths.append(_save(plt, fig, out / "latency_vs_query_terms.png"))
    return paths


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MilcoOSError("plots need matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
