"""Plain-text tables of evaluations: one system by language, systems side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Evaluation(Protocol):
    """What a table reads of an evaluation (``milco_os.evaluation.Evaluation``); a
    protocol, so that scoring, which renders its own table, does not import back."""

    metrics: Sequence[str]
    per_language: Mapping[str, Mapping[str, float]]
    average: Mapping[str, float]
    cost: Mapping[str, Any]


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """A plain-text table, floats with ``digits`` decimals."""

    def cell(value: Any) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    cells = [[str(h) for h in header]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare(evaluations: Mapping[str, Evaluation], digits: int = 1) -> str:
    """Systems side by side: one row per language (and ``avg``), one column per system
    and metric (x100), plus each system's latency when it was measured."""
    names = list(evaluations)
    metrics = evaluations[names[0]].metrics
    langs = sorted({lang for e in evaluations.values() for lang in e.per_language})
    header = ["lang", *(f"{n} {m}" for n in names for m in metrics)]
    rows = []
    for lang in [*langs, "avg"]:
        row: list[Any] = [lang]
        for name in names:
            scores = evaluations[name].average if lang == "avg" \
                else evaluations[name].per_language.get(lang, {})
            row += [100 * scores[m] if m in scores else "-" for m in metrics]
        rows.append(row)
    table = format_table(header, rows, digits)
    costs = [(n, e.cost) for n, e in evaluations.items() if e.cost]
    if costs:
        table += "\n\n" + format_table(
            ["system", "p50 ms", "p95 ms", "QPS", "q terms"],
            [[n, c["latency_p50_ms"], c["latency_p95_ms"], c["qps"],
              c.get("query_terms_mean", "-")] for n, c in costs], digits=1)
    return table


def language_table(evaluations: Mapping[str, Evaluation], metric: str, digits: int = 1) -> str:
    """One ``metric`` (x100) for many systems: a row per system, a column per language,
    then the average over languages."""
    langs = sorted({lang for e in evaluations.values() for lang in e.per_language})
    rows = [[name, *(100 * e.per_language[lang][metric] if lang in e.per_language else "-"
                     for lang in langs), 100 * e.average[metric]]
            for name, e in evaluations.items()]
    return format_table([metric, *langs, "avg"], rows, digits)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3,
                   bold_best: bool = False) -> str:
    """A Markdown table; floats as ``.123`` (``digits`` decimals, no leading zero).

    ``bold_best`` marks the highest number of every column in bold.
    """

    def number(value: float) -> str:
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("0.") else text

    best = [max((r[i] for r in rows if isinstance(r[i], float)), default=None)
            for i in range(len(header))] if bold_best else [None] * len(header)
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "---|" * len(header)]
    for row in rows:
        cells = [(f"**{number(v)}**" if bold_best and v == best[i] else number(v))
                 if isinstance(v, float) else str(v) for i, v in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
