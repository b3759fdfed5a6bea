"""`crossover data`: build and inspect token stores (logic in crossover.data; this is only the shell)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from crossover.cli.app import app, out
from crossover.cli.common import (
    build_shared_store,
    library_notices_to,
    load_spec,
    prepare_data,
    text_table,
)
from crossover.errors import UserError
from crossover.specs import StudySpec, format_tokens

data_app = typer.Typer(no_args_is_help=True, help="Build and inspect the token store of a study's data settings.")
app.add_typer(data_app, name="data")


def _budget_lines(spec: StudySpec, prepared) -> tuple[list[list[str]], int]:
    from crossover.data.check import budget_fits  # lazy: keeps the data package (numpy) out of --help

    rows = budget_fits(spec, prepared)
    table = [
        [
            r["quality"],
            format_tokens(r["unique_tokens"]),
            format_tokens(r["total_tokens"]),
            f"{r['epochs']:.3g}",
            format_tokens(r["available"]),
            "yes" if r["fits"] else "NO",
        ]
        for r in rows
    ]
    return table, sum(not r["fits"] for r in rows)


_VERBOSE_FILES = typer.Option(
    "--verbose", help="List the files of a folder or glob corpus (local, s3:// or gs://) that were skipped."
)


def _corpus_files(spec: StudySpec):  # -> crossover.data.corpus.CorpusFiles | None
    from crossover.data import corpus as corpora  # lazy: as in _budget_lines

    return corpora.corpus_files(spec.data.corpus) if corpora.kind(spec.data.corpus) == "files" else None


def _files_lines(spec: StudySpec, verbose: bool) -> list[str]:
    """How many files of a file, folder or glob corpus were read and skipped, by reason (each with `verbose`)."""
    from crossover.data.corpus import count_reasons  # lazy: as in _budget_lines

    found = _corpus_files(spec)
    if found is None:
        return []
    line = f"{len(found.files):,} file(s) read as {found.format}"
    if not found.skipped:
        return [line]
    line += f", {len(found.skipped):,} skipped: {count_reasons(found.skipped)}"
    return [line + ("" if verbose else " (--verbose lists them)")] + (
        [f"  skipped {path}: {why}" for path, why in found.skipped] if verbose else []
    )


@data_app.command("prepare")
def data_prepare(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML file.")],
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild even when a valid store is cached.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Hash every file of a cached store.")] = False,
    verbose: Annotated[bool, _VERBOSE_FILES] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Ray workers tokenizing a shared store (data.store); default on a cluster: the CPUs of its nodes "
            "without GPUs, at least 64 (an autoscaling cluster adds CPU workers for them); else this machine's CPUs.",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Ray cluster that builds a shared store (else RAY_ADDRESS, else a local instance)."
        ),
    ] = None,
    shard_mb: Annotated[
        float | None,
        typer.Option("--shard-mb", min=0.01, help="Text per shard of a shared store, in MB (default: 1/64 of it)."),
    ] = None,
) -> None:
    """Build (or load from the cache and verify) the tokenizer and token store of a study's data settings. With
    `data.store` set, the store is built there in shards by a Ray Data job over the cluster's CPUs (a re-run
    continues an interrupted build), then copied (without its shards) into the local cache."""
    spec = load_spec(spec_path)
    if not spec.data.store and (workers or address or shard_mb):
        raise UserError(
            "--workers, --address and --shard-mb build a shared token store: set data.store in the spec to a folder "
            "on a shared volume or an s3:// or gs:// URI (without it the store is built here, in the local cache)"
        )
    if spec.data.store:
        from crossover.data.cache import cache_root  # lazy: as in _budget_lines

        shard_bytes = None if shard_mb is None else int(shard_mb * 1e6)
        log = cache_root(spec.data.cache_dir) / "logs" / f"{spec.name}-data.log"
        library_notices_to(log, verbose, ("ray", "ray.data"))  # the Ray Data job's notices
        build_shared_store(spec, address=address, workers=workers, shard_bytes=shard_bytes, rebuild=rebuild)
    started = time.perf_counter()
    prepared = prepare_data(spec, verify=verify)
    seconds = time.perf_counter() - started
    m = prepared.manifest
    verb = "local copy" if prepared.source else "built" if prepared.built else "cached"
    out.print(
        f"[green]{verb}[/] {prepared.root} in {seconds:.2f}s: {m['documents']:,} documents, "
        f"{format_tokens(m['tokens'])} tokens ({m['dtype']}), tokenizer {m['tokenizer']['name']} "
        f"({m['tokenizer']['size']} tokens), {format_tokens(m['heldout']['tokens'])} held out",
        highlight=False,
    )
    for line in _files_lines(spec, verbose):
        print(line)
    _, too_big = _budget_lines(spec, prepared)
    if too_big:
        out.print(
            f"[red]{too_big} budget(s) do not fit[/]: `crossover data stats {spec_path}` lists them; "
            "`crossover validate` rejects this spec",
            highlight=False,
        )


@data_app.command("stats")
def data_stats(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    verbose: Annotated[bool, _VERBOSE_FILES] = False,
) -> None:
    """Documents, tokens, held-out size, quality tiers, and whether each unique budget of the grid fits (builds the
    token store first when it is not cached)."""
    from crossover.data.check import budget_fits  # lazy: as in _budget_lines

    spec = load_spec(spec_path)
    prepared = prepare_data(spec)
    stats = prepared.stats()
    if as_json:
        found = _corpus_files(spec)
        files = (
            None
            if found is None
            else {
                "format": found.format,
                "read": len(found.files),
                "skipped": [{"path": path, "reason": why} for path, why in found.skipped],
            }
        )
        print(json.dumps({**stats, "files": files, "budgets": budget_fits(spec, prepared)}, indent=1))
        return
    tok, held, train = stats["tokenizer"], stats["heldout"], stats["train"]
    out.print(f"[bold]store[/] {stats['store']}", highlight=False)
    print(
        f"corpus      {stats['corpus']}: {stats['documents']:,} documents ({stats['duplicates_dropped']} duplicates, "
        f"{stats['empty_dropped']} empty dropped), {stats['tokens']:,} tokens ({stats['dtype']})\n"
        f"tokenizer   {tok['name']}: {tok['size']} tokens, embedding rows {tok['padded_vocab']}, "
        f"eod {tok['eod_id']}, mask {tok['mask_id']}, pad {tok['pad_id']}\n"
        f"held out    {held['documents']:,} documents, {held['tokens']:,} tokens (requested {held['requested']:,})\n"
        f"training    {train['documents']:,} documents, {train['tokens']:,} tokens"
    )
    for i, line in enumerate(_files_lines(spec, verbose)):
        print(("files       " if i == 0 else "            ") + line)
    tiers = stats["quality"]["tiers"]
    print(f"\nquality tiers ({stats['quality']['scorer']} scores, token terciles)")
    print(
        text_table(
            ["tier", "documents", "tokens", "scores"],
            [
                [
                    name,
                    f"{t['documents']:,}",
                    f"{t['tokens']:,}",
                    "-" if t["score_min"] is None else f"{t['score_min']:.3g}..{t['score_max']:.3g}",
                ]
                for name, t in tiers.items()
            ],
        )
    )
    table, too_big = _budget_lines(spec, prepared)
    print("\nbudgets of the grid")
    print(text_table(["quality", "unique", "total", "epochs", "available", "fits"], table))
    if too_big:
        out.print(f"[red]{too_big} budget(s) do not fit[/]", highlight=False)
