"""Run every benchmark, write ``bench/results/*.json`` and refresh README.md's table.

    python bench/run.py [--only encode,latency,local,opensearch,startup,serve,ingest,query,
                               scaling]
                        [--quick] [--sizes N[,N...]] [--model FOLDER_OR_NAME]

Benchmarks (each measures milco-os against a named baseline in the same run). The
trained MILCO is ``--model`` (default: ``$MILCO_OS_BENCH_MODEL``, else the shipped
milco-small); its corpora are ``milco_corpus.py``'s (real
vectors of real multilingual sentences, and synthetic passages drawn from their
term statistics):

- ``encode``: ``SparseEncoder`` vs sentence-transformers' ``SparseEncoder`` on
  splade-tiny (``bench_encode_st.py``), and vs the released code's naive way on the
  trained MILCO (``bench_encode.py``);
- ``latency``: single-query encoding p50/p95, idle and beside a busy core: torch vs
  ONNX Runtime fp32 and int8 (with its agreement), and torch's default threads
  (``bench_latency.py``);
- ``local``: the local engine's approximate index vs its exact scan, 20k passages
  (quick) or 1M (``bench_local.py``);
- ``opensearch``: two-phase vs the full query, end to end (encode + search) vs
  BM25, ingest with encoding, bytes per passage per pruning level, at 20k passages
  (quick) or 100k and 1M (``bench_opensearch.py``);
- ``startup``: one-query CLI search and encode, onnx vs torch, and where the seconds
  go (``bench_startup.py``);
- ``serve``: ``milco-os serve`` at 1, 8 and 32 clients vs sequential encoding, on the
  default backend (``bench_serve.py``; its table is README.md's load-test section);
- ``ingest``: ``Ingestor`` vs opensearch-py ``helpers.bulk`` (``bench_ingest.py``);
- ``query``: latency/QPS per query pruning level vs BM25, brute force and Seismic;
  index size per document pruning level (``bench_query.py``);
- ``scaling``: latency and index size at 10k and 100k documents (``bench_scaling.py``).

The cluster is ``MILCO_OS_URL`` when set, else a local node started for the run
(``LocalCluster(name="bench")``, 2 GB heap) and stopped after it. The table goes
between the ``<!-- bench:start -->`` and ``<!-- bench:end -->`` markers of
README.md (or to ``bench/results/README.md`` when the markers are missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, cluster_url, save_result

BENCHMARKS = ("encode", "latency", "local", "opensearch", "startup", "serve", "ingest", "query",
              "scaling")
SIZES = {"local": ((20_000,), (1_000_000,)),
         "opensearch": ((20_000,), (100_000, 1_000_000))}  # (quick, full)
CHOSEN_SIZES: tuple[int, ...] = ()  # --sizes: passages of local and opensearch, when given
REAL_DOCUMENTS = (1000, 1000)  # real passages encoded for the term statistics (quick, full)
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def bench_model(given: str | None) -> Path:
    """``given``, else ``$MILCO_OS_BENCH_MODEL``, else the shipped milco-small (assembled on
    first use)."""
    from milco_os.models.registry import resolve_model

    return resolve_model(given or os.environ.get("MILCO_OS_BENCH_MODEL", "milco-small"))


def run_encode(quick: bool, model: Path) -> None:
    import bench_encode_st

    save_result("encode_vs_st", bench_encode_st.run(quick))
    settings = ["--model-dir", str(model), "--n", "64" if quick else "256", "--max-length",
                "128", "--variants", "naive,sparse-encoder",
                "--out", str(RESULTS / "encode_vs_naive.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_encode.py"), *settings],
                   check=True, env=env)


def run_latency(quick: bool, model: Path) -> None:
    import bench_latency

    save_result("latency", bench_latency.run(model, quick))


def sizes(name: str, quick: bool) -> tuple[int, ...]:
    """The corpus sizes of benchmark ``name``: ``--sizes`` when given, else quick or full."""
    return CHOSEN_SIZES or SIZES[name][not quick]


def run_local(quick: bool, model: Path) -> None:
    import bench_local

    for n in sizes("local", quick):
        save_result(f"local_approximate_{n}",
                    bench_local.run(model, n, REAL_DOCUMENTS[not quick], 100))


def run_opensearch(quick: bool, model: Path) -> None:
    import bench_opensearch

    for n in sizes("opensearch", quick):
        save_result(f"opensearch_{n}",
                    bench_opensearch.run(model, n, REAL_DOCUMENTS[not quick], 100, 100))


def run_startup(quick: bool, model: Path) -> None:
    import bench_startup

    save_result("startup", bench_startup.run(model, 1000, 2 if quick else 3))


def run_serve(quick: bool, model: Path) -> None:
    """The serve load test on the trained model (it writes its own README section)."""
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_serve.py"), "--model",
                    str(model), "--requests", "128" if quick else "256"], check=True)


def run_ingest(quick: bool, model: Path) -> None:
    import bench_ingest

    save_result("ingest", bench_ingest.run(quick, model))


def run_query(quick: bool, model: Path) -> None:
    import bench_query

    save_result("query", bench_query.run(quick, model))


def run_scaling(quick: bool, model: Path) -> None:
    import bench_scaling

    save_result("scaling", bench_scaling.run(quick, model=model))


RUNNERS = {"encode": run_encode, "latency": run_latency, "local": run_local,
           "opensearch": run_opensearch, "startup": run_startup, "serve": run_serve,
           "ingest": run_ingest,
           "query": run_query, "scaling": run_scaling}


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def sized(prefix: str) -> list[str]:
    """Result names ``<prefix>_<size>``, smallest size first."""
    names = [p.stem for p in RESULTS.glob(f"{prefix}_*.json")
             if p.stem.rsplit("_", 1)[1].isdigit()]
    return sorted(names, key=lambda n: int(n.rsplit("_", 1)[1]))


def table_rows() -> list[list[str]]:
    """One row per headline figure: what, milco-os, baseline, ratio, goal."""
    rows = []
    if st := load("encode_vs_st"):
        f = st["figures"]
        rows.append(["encode, splade-tiny, CPU (docs/s)", f"{f['milco_os_docs_per_s']:.0f}",
                     f"sentence-transformers {f['st_docs_per_s']:.0f}", f"{f['ratio']:.2f}x",
                     ">= 1.2x"])
    if naive := load("encode_vs_naive"):
        v = naive["variants"]
        ours, base = v["sparse-encoder"], v["naive"]
        folder = naive["settings"].get("model_dir")
        model = (f"trained MILCO ({Path(folder).name})" if folder
                 else f"random MILCO {naive['settings']['preset']}")
        rows.append([f"encode, {model}, CPU (docs/s)", f"{ours['docs_per_s']:.1f}",
                     f"naive (released code's way) {base['docs_per_s']:.1f}",
                     f"{ours['docs_per_s'] / base['docs_per_s']:.2f}x", ">= 1.5x"])
        rows.append(["encode peak memory over weights (MB)", f"{ours['peak_over_loaded_mb']:.0f}",
                     f"naive {base['peak_over_loaded_mb']:.0f}",
                     f"{ours['peak_over_loaded_mb'] / base['peak_over_loaded_mb']:.2f}x",
                     "<= 0.5x"])
    rows += new_rows()
    if ingest := load("ingest"):
        f = ingest["figures"]
        rows.append([f"ingest {ingest['settings']['documents']:,} pre-encoded docs (docs/s)",
                     f"{f['milco_os_docs_per_s']:.0f}", f"helpers.bulk {f['bulk_docs_per_s']:.0f}",
                     f"{f['ratio']:.2f}x", ">= 0.9x"])
    if query := load("query"):
        rows += query_rows(query)
    if scaling := load("scaling"):
        points = scaling["points"]
        for n, p in points.items():
            rows.append([f"scaling {int(n):,} synthetic docs: p50 / p95 ms, bytes/doc",
                         f"{p['p50_ms']:.1f} / {p['p95_ms']:.1f}, {p['bytes_per_doc']:.0f}",
                         scaling["baseline"] if n != min(points, key=int) else "-", "", "-"])
        f = scaling["figures"]
        rows.append([f"scaling x{f['documents_ratio']:.0f} documents", "",
                     "smallest corpus", f"p50 {f['p50_ratio']:.2f}x, size "
                     f"{f['index_bytes_ratio']:.2f}x", "-"])
    return rows


# Goals of the benchmarks on the trained model: shown as rows even before a run has
# measured them, so the table says what is still unmeasured and how to measure it.
PENDING = {
    "latency": [("query encoding, one query, idle and beside a busy core: p50 / p95 ms",
                 "p50 <= 15 ms idle, <= 2x idle under load")],
    "local_approximate": [("local engine approximate (Seismic + exact re-score) vs exact scan",
                           ">= 20x at recall@10 >= 0.99 (1M)")],
    "opensearch": [("two-phase on OpenSearch vs the full query", ">= 3x at recall@10 >= 0.99"),
                   ("end to end (encode + search) on OpenSearch vs BM25", "-"),
                   ("ingest with encoding on CPU; index bytes per passage per pruning level",
                    "-")],
    "startup": [("CLI start-up: one-query `milco-os search --engine local`, onnx vs torch",
                 "-")],
}
RUN_ONLY = {"latency": "latency", "local_approximate": "local", "opensearch": "opensearch",
            "startup": "startup"}


def pending_rows(name: str) -> list[list[str]]:
    command = f"not measured yet: `python bench/run.py --only {RUN_ONLY[name]}`"
    return [[what, command, "", "", goal] for what, goal in PENDING[name]]


def latency_rows(lat: dict) -> list[list[str]]:
    """One query's encoding per backend, idle and beside a busy core, against torch."""
    c, f = lat["conditions"], lat["figures"]
    rows = []
    for condition in ("idle", "loaded"):
        base = c[condition]["torch"]
        load_1m = c[condition]["load_average"][0]
        for name in ("onnx", "onnx-int8", "torch-default"):
            v = c[condition][name]
            note = (f", top-10 agreement with fp32 {f['onnx_int8_top10_agreement_with_fp32']:.2f}"
                    if name == "onnx-int8" else "")
            rows.append([f"query encoding, one query, {name}, {condition} (load {load_1m}): "
                         "p50 / p95 ms", f"{v['p50_ms']:.1f} / {v['p95_ms']:.1f}",
                         f"torch {base['p50_ms']:.1f} / {base['p95_ms']:.1f}",
                         f"{v['p50_ms'] / base['p50_ms']:.2f}x{note}",
                         ("p50 <= 15 ms" if condition == "idle" else "<= 2x idle")
                         if name == "onnx" else "-"])
    rows.append(["query encoding beside a busy core / idle (p50), onnx",
                 f"{f['onnx_loaded_over_idle_p50']:.2f}x",
                 f"torch {f['torch_loaded_over_idle_p50']:.2f}x", "", "<= 2x"])
    return rows


def new_rows() -> list[list[str]]:
    """Rows of the benchmarks on the trained model's corpora."""
    rows = []
    if not load("latency"):
        rows += pending_rows("latency")
    if lat := load("latency"):
        rows += latency_rows(lat)
    if not sized("local_approximate"):
        rows += pending_rows("local_approximate")
    for local in map(load, sized("local_approximate")):
        f, n = local["figures"], local["settings"]["documents"]
        rows.append([f"local engine approximate (Seismic + exact re-score), {n:,} passages: "
                     "p50 / p95 ms, recall@10",
                     f"{f['approximate_p50_ms']:.2f} / {f['approximate_p95_ms']:.2f}, "
                     f"{f['approximate_recall_at_10']:.3f} ({local['best_setting']})",
                     f"exact scan {f['exact_p50_ms']:.1f} ms p50",
                     f"{f['speedup_p50']:.1f}x faster", ">= 20x at recall >= 0.99 (1M)"])
    if not sized("opensearch"):
        rows += pending_rows("opensearch")
    for number, result in enumerate(map(load, sized("opensearch"))):
        rows += opensearch_rows(result, sizes=number == 0)  # the same real vectors each run
    if not load("startup"):
        rows += pending_rows("startup")
    if start := load("startup"):
        rows += startup_rows(start)
    return rows


def startup_rows(start: dict) -> list[list[str]]:
    """CLI wall times per backend, and where the time of one search goes."""
    f, medians = start["figures"], start["median_seconds"]
    rows = [[f"CLI start-up: one-query `milco-os {what}`, onnx (s)",
             f"{medians[f'{what} (onnx)']:.1f}", f"torch {medians[f'{what} (torch)']:.1f}",
             f"{medians[f'{what} (onnx)'] / medians[f'{what} (torch)']:.2f}x", "<= 3 s"]
            for what in ("search --engine local", "encode")
            if f"{what} (onnx)" in medians]
    for backend, phases in start["breakdown_seconds"].items():
        rows.append([f"one search in one process, {backend}: where the seconds go",
                     ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items()),
                     "-", "", "-"])
    rows.append(["CLI start-up: `milco-os --help` (s), imports torch?",
                 f"{f['help_s']:.2f}, {'yes' if f['help_imports_torch'] else 'no'}",
                 "-", "", "no torch"])
    return rows


def opensearch_rows(result: dict, sizes: bool = True) -> list[list[str]]:
    n = result["settings"]["documents"]
    tp, e2e = result["two_phase"], result["end_to_end"]
    best = tp["sweep"][tp["best"]]
    rows = [[f"two-phase on OpenSearch, {n:,} passages: p50 / p95 ms, recall@10",
             f"{best['p50_ms']:.1f} / {best['p95_ms']:.1f}, {best['recall_at_10']:.3f} "
             f"({tp['best']})",
             f"full query {tp['full']['p50_ms']:.1f} / {tp['full']['p95_ms']:.1f}",
             f"{tp['speedup_p50']:.2f}x faster", ">= 3x at recall >= 0.99"]]
    if "best_ids_only" in tp:
        ids = tp["sweep"][tp["best_ids_only"]]
        rows.append([f"two-phase on OpenSearch, {n:,} passages, hits as ids only: p50 / p95 "
                     f"ms, recall@10", f"{ids['ids_only']['p50_ms']:.1f} / "
                     f"{ids['ids_only']['p95_ms']:.1f}, {ids['recall_at_10']:.3f} "
                     f"({tp['best_ids_only']})",
                     f"full query {tp['full_ids_only']['p50_ms']:.1f} / "
                     f"{tp['full_ids_only']['p95_ms']:.1f}",
                     f"{tp['speedup_p50_ids_only']:.2f}x faster", ">= 3x at recall >= 0.99"])
    for level, pruned in tp.get("query_pruning", {}).items():
        rows.append([f"query pruning {level} on OpenSearch, {n:,} passages: p50 / p95 ms, "
                     "recall@10", f"{pruned['p50_ms']:.1f} / {pruned['p95_ms']:.1f}, "
                     f"{pruned['recall_at_10']:.3f} ({pruned['terms_per_query']:.0f} terms)",
                     f"full query {tp['full']['p50_ms']:.1f} / {tp['full']['p95_ms']:.1f}",
                     f"{tp['full']['p50_ms'] / pruned['p50_ms']:.2f}x faster", "-"])
    if scoring := result.get("scoring"):
        skipping = scoring["skipping"]
        for name in ("as sent", "every match"):
            rows.append([f"full query scored {name}, OpenSearch {n:,}, ids only: p50 / p95 "
                         "ms", f"{scoring[name]['p50_ms']:.1f} / {scoring[name]['p95_ms']:.1f}",
                         f"skipping {skipping['p50_ms']:.1f} / {skipping['p95_ms']:.1f}",
                         f"p95 {skipping['p95_ms'] / scoring[name]['p95_ms']:.2f}x lower", "-"])
    for name in ("full", "two-phase"):
        rows.append([f"end to end (encode + search, {name}), OpenSearch {n:,}: p50 / p95 ms",
                     f"{e2e[name]['p50_ms']:.1f} / {e2e[name]['p95_ms']:.1f}",
                     f"BM25 {e2e['bm25']['p50_ms']:.1f} / {e2e['bm25']['p95_ms']:.1f}",
                     f"{e2e[name]['p50_ms'] / e2e['bm25']['p50_ms']:.2f}x BM25 p50", "-"])
    rates = result["ingest_docs_per_s"]
    rows.append([f"ingest with encoding on CPU (docs/s), run of the {n:,}-passage corpus",
                 f"{rates['encoding']:.1f}",
                 f"pre-encoded {rates['pre-encoded']:.0f}",
                 f"{rates['encoding'] / rates['pre-encoded']:.3f}x", "-"])
    if not sizes:
        return rows
    real = result["bytes_per_passage"]
    for prune, size in real.items():
        if prune != "text only":
            rows.append([f"index bytes per passage, document pruning {prune} "
                         f"({result['settings']['real_documents']:,} real passages)",
                         f"{size:.0f}", f"text only {real['text only']:.0f}",
                         f"{size / real['text only']:.2f}x", "-"])
    return rows


def query_rows(query: dict) -> list[list[str]]:
    rows = []
    settings = query["settings"]
    os_figures = query["opensearch"]
    bm25, brute = os_figures["bm25"], query["brute_force"]
    for name, q in os_figures["queries"].items():
        rows.append([f"query {name}: p50 / p95 ms, QPS, recall@10",
                     f"{q['p50_ms']:.1f} / {q['p95_ms']:.1f}, {q['qps']:.0f}, "
                     f"{q['recall_at_10']:.3f}",
                     f"BM25 match {bm25['p50_ms']:.1f} / {bm25['p95_ms']:.1f}",
                     f"{q['p50_ms'] / bm25['p50_ms']:.2f}x BM25 p50", "-"])
    rows.append([f"exact brute force (scipy, {settings['documents']:,} docs)",
                 f"{os_figures['queries']['doc=none q=none']['p50_ms']:.1f} ms p50",
                 f"scipy {brute['p50_ms']:.2f} ms p50",
                 f"{query['figures']['milco_vs_brute_force_latency_ratio']:.2f}x", "-"])
    seismic = query["seismic"]
    if "matched" in seismic:
        m = seismic["matched"]
        reached = ">=" if seismic["target_reached"] else "closest to"
        rows.append([f"Seismic at recall@10 {reached} {seismic['target_recall_at_10']:.3f} "
                     f"({seismic['matched_setting']})",
                     f"{os_figures['queries']['doc=none q=none']['p50_ms']:.1f} ms p50",
                     f"Seismic {m['p50_ms']:.2f} ms p50, recall {m['recall_at_10']:.3f}",
                     f"{query['figures']['milco_vs_seismic_latency_ratio']:.1f}x", "-"])
    text_only = os_figures["text_only_bytes_per_doc"]
    for prune, info in os_figures["indexes"].items():
        rows.append([f"index, document pruning {prune}: bytes/doc (terms/doc)",
                     f"{info['bytes_per_doc']:.0f} ({info['terms_per_doc']:.1f})",
                     f"text only (BM25) {text_only:.0f}",
                     f"{info['bytes_per_doc'] / text_only:.2f}x", "-"])
    return rows


def markdown(rows: list[list[str]]) -> str:
    header = ["benchmark", "milco-os", "baseline (same run)", "ratio", "goal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell or "" for cell in row) + " |" for row in rows]
    names = ("encode_vs_st", "encode_vs_naive", "latency", *sized("local_approximate"),
             *sized("opensearch"), "startup", "ingest", "query", "scaling")
    results = {name: r for name in names if (r := load(name))}
    if results:
        machine = next(iter(results.values()))["machine"]
        lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, "
                      f"{machine['memory_gb']} GB, shared with other work (load average "
                      f"{machine['load_average'][0]} at the start). Commands:"]
        commands: dict[str, list[str]] = {}
        for name, result in results.items():
            command = result.get("command", "?").replace(f"{ROOT}/", "")
            commands.setdefault(command, []).append(name)
        lines += [f"- {', '.join(names)}: `{command}`" for command, names in commands.items()]
    return "\n".join(lines)


def write_table(text: str) -> Path:
    readme = ROOT / "README.md"
    content = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if START in content and END in content:
        head, rest = content.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")
        return readme
    fallback = RESULTS / "README.md"
    fallback.write_text(f"{START}\n{text}\n{END}\n", encoding="utf-8")
    return fallback


def passage_counts(text: str) -> tuple[int, ...]:
    """``--sizes``: comma-separated passage counts, each at least 1,000."""
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1000:
        raise argparse.ArgumentTypeError(f"each size must be at least 1000, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes (~10 minutes)")
    parser.add_argument("--sizes", type=passage_counts, default=(),
                        help="passages of the local and opensearch runs, e.g. 100000 "
                             "[default: 20000 with --quick, else local 1000000 and "
                             "opensearch 100000,1000000]")
    parser.add_argument("--model", help="trained MILCO folder or name [default: see above]")
    parser.add_argument("--table-only", action="store_true",
                        help="only refresh the README table from bench/results/*.json")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; expected some of {BENCHMARKS}")
    if args.table_only:
        chosen = []
    global CHOSEN_SIZES
    CHOSEN_SIZES = args.sizes
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    needs_cluster = set(chosen) & {"opensearch", "ingest", "query", "scaling"}
    model = bench_model(args.model) if chosen else None
    with cluster_url() if needs_cluster else contextlib.nullcontext() as url:
        if url:
            os.environ["MILCO_OS_URL"] = url  # one cluster for every benchmark of the run
        for name in chosen:
            tick = time.perf_counter()
            print(f"== {name}", flush=True)
            RUNNERS[name](args.quick, model)
            print(f"== {name}: {time.perf_counter() - tick:.0f}s", flush=True)
    path = write_table(markdown(table_rows()))
    print(f"results in {RESULTS}; table in {path}")


if __name__ == "__main__":
    main()
