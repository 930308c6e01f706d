"""Command line: thin typer commands that build a config and call one library function each (the ``melanoma``
console script; ``python cli.py`` runs the same app)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from melanoma_data import layouts
from melanoma_data.errors import MelanomaDataError, ValidationFailed

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Melanoma toolkit: dermoscopy shards and models.")
out_console = Console()
#: The input layouts, as the help names them (from the layout registry).
LAYOUT_NAMES = f"{', '.join(layouts.names()[:-1])} or {layouts.names()[-1]}"
#: The presets chosen for the inputs' layout when ``--preset`` is not given.
AUTO_PRESETS = ", ".join(f"{lay.preset} for the {lay.name} layout" for lay in layouts.registered() if lay.preset)
err_console = Console(stderr=True)


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show full tracebacks on errors, and TensorFlow's native start-up lines.")] = False,
) -> None:
    ctx.obj = {"debug": debug}
    if debug:  # TensorFlow's native start-up lines too (melanoma_data.native_logs filters them otherwise)
        os.environ["MELANOMA_NATIVE_LOGS"] = "1"


def _guard(ctx: typer.Context, fn: Callable[[], Any], interruptible: bool = False) -> Any:
    """Run ``fn``; domain errors become one readable line and exit code 2 (traceback with --debug).

    ``interruptible``: Ctrl-C becomes one line (what the run kept, how to resume) and exit code 130.
    """
    try:
        return fn()
    except KeyboardInterrupt as exc:
        if not interruptible or (ctx.obj and ctx.obj.get("debug")):
            raise
        err_console.print(f"[bold yellow]{escape(str(exc) or 'interrupted')}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except MelanomaDataError as exc:
        if ctx.obj and ctx.obj.get("debug"):
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _summary(result: Any) -> None:
    from melanoma_data.manifest import Manifest

    doc = Manifest.of(result.manifest)
    counts = doc.counts
    table = Table(title=f"dataset {doc.name} @ {doc.fingerprint}", show_header=False)
    table.add_row("inputs", str(counts.inputs))
    table.add_row("written", str(counts.written))
    table.add_row("quarantined", str(counts.quarantined))
    for reason, n in doc.quarantine_reasons.items():
        table.add_row(f"  {reason}", str(n))
    table.add_row("splits", ", ".join(f"{k}={v}" for k, v in doc.splits.items()))
    table.add_row("shards", str(len(doc.shards)))
    t = doc.timings
    if t.get("images_per_s"):
        table.add_row("speed", f"{t['images_per_s']} img/s ({t['process_s']} s processing)")
    out_console.print(table)
    for warning in doc.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    from melanoma_data.ingest import NO_LABELS_NOTE, PLAIN_LAYOUT

    for item in doc.inputs:
        if item.layout == PLAIN_LAYOUT:
            err_console.print(f"[yellow]note:[/] {escape(NO_LABELS_NOTE.format(root=item.url))}",
                              highlight=False, soft_wrap=True)
    state = "already up to date (nothing recomputed)" if result.reused else "written"
    out_console.print(f"Shards {state}: [bold]{escape(result.version_url)}[/]", highlight=False, soft_wrap=True)


@app.command()
def preprocess(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="Input folder(s) or fsspec URL(s).")],
    out: Annotated[str, typer.Option("--out", help="Output root (path or fsspec URL).")],
    workers: Annotated[int | None, typer.Option(help="Local Dask worker processes (0: run in this process).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of an existing Dask scheduler.")] = None,
    size: Annotated[int | None, typer.Option(help="Output side in pixels (default 512).")] = None,
    resize_policy: Annotated[str | None, typer.Option(help="crop or pad.")] = None,
    jpeg_quality: Annotated[int | None, typer.Option(help="JPEG quality of stored images.")] = None,
    partition_size: Annotated[int | None, typer.Option(
        help="Images per processing partition (default: derived from the number of inputs).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    name: Annotated[str | None, typer.Option(help="Dataset name (default: input folder name).")] = None,
    metadata: Annotated[str | None, typer.Option(help="Metadata CSV (overrides layout detection).")] = None,
    metadata_encoding: Annotated[str | None, typer.Option(help="Text encoding of the metadata CSV.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    preset: Annotated[str | None, typer.Option(
        help="Named settings under the config file and flags: tiles (small crops) or none. Without it, the "
             f"inputs' layout chooses ({AUTO_PRESETS}).")] = None,
    target: Annotated[str | None, typer.Option(
        help="melanoma or malignant: the target definition, derived from the diagnosis columns where an "
             "input's own target means something else (needed to combine 2024 with earlier releases).")] = None,
) -> None:
    """Normalise every image into validated, fingerprinted Parquet shards under OUT/<name>/<fingerprint>/."""
    from melanoma_data.build import auto_preset
    from melanoma_data.build import preprocess as run
    from melanoma_data.config import DeprecatedSection, load_config

    def go():
        chosen = preset if preset is not None else auto_preset(inputs, metadata)
        if chosen and preset is None:
            out_console.print(f"preset {chosen} (chosen for the input layout; --preset none switches it off)",
                              highlight=False)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always", DeprecatedSection)
            cfg = load_config(config, preset=chosen, square__size=size, square__policy=resize_policy,
                              encode__quality=jpeg_quality, partition_size=partition_size)
        for w in said:
            err_console.print(f"[yellow]deprecated:[/] {escape(str(w.message))}", highlight=False, soft_wrap=True)
        n_workers = workers if workers is not None else (None if scheduler else 2)
        return run(inputs, out, cfg, name=name, metadata=metadata, encoding=metadata_encoding,
                   workers=n_workers, scheduler=scheduler, progress=progress, console=out_console, target=target)

    _summary(_guard(ctx, go, interruptible=True))


@app.command()
def validate(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="Dataset version directory (path or fsspec URL).")],
) -> None:
    """Re-check a dataset version: schemas, checksums, counts. Exits 1 when anything is off."""
    from melanoma_data.validate import validate_version

    def go():
        try:
            return validate_version(path)
        except ValidationFailed as exc:
            err_console.print(f"[bold red]invalid:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            for problem in exc.problems:
                err_console.print(f"  - {escape(problem)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    doc = _guard(ctx, go)
    c = doc["counts"]
    out_console.print(
        f"[green]ok[/] {path}: {len(doc['shards'])} shards, {c['written']} written + "
        f"{c['quarantined']} quarantined = {c['inputs']} inputs", highlight=False, soft_wrap=True,
    )


datasets_app = typer.Typer(no_args_is_help=True, help="List and inspect dataset versions.")
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("list")
def datasets_list(
    ctx: typer.Context,
    root: Annotated[str, typer.Argument(help="Output root, dataset folder or version (path or URL).")] = ".",
) -> None:
    """Every dataset version below ROOT with size, counts, quarantine and creation time."""
    from melanoma_data import fsutil
    from melanoma_data.catalog import human_bytes, list_versions

    def go():
        fs, base = fsutil.resolve(root)
        if not fs.exists(base):
            raise MelanomaDataError(f"{root}: no such folder (give the --out of preprocess, a dataset folder or "
                                    "a version)")
        return list_versions(root)

    rows = _guard(ctx, go)
    if not rows:
        out_console.print(f"no dataset versions under {escape(root)}", highlight=False)
        return
    out_console.print(f"dataset versions under {escape(root)}:", highlight=False)
    for r in rows:
        line = f"  {escape(r['path'])}"
        if r["status"] == "ok":
            created = str(r.get("created", ""))[:16].replace("T", " ")
            line += (f"  {created}  {r.get('size')} px  {r.get('written')} images  {r.get('quarantined')} quarantined"
                     f"  {r.get('folds')} folds  {human_bytes(r.get('bytes'))}")
        else:
            line += f"  [yellow]{escape(r['status'].split(' (', 1)[0])}[/]"
        out_console.print(line, highlight=False, soft_wrap=True)
    for r in rows:
        if r["status"] == "ok":
            continue
        err_console.print(f"[yellow]note:[/] {escape(r['path'])}: {escape(r['status'])}", highlight=False,
                          soft_wrap=True)


@datasets_app.command("show")
def datasets_show(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Dataset version directory (path or URL).")],
) -> None:
    """Config summary, counts, quarantine reasons, files and folds of one version."""
    from melanoma_data.dataset import open_dataset

    ds = _guard(ctx, lambda: open_dataset(version))
    doc = ds.manifest
    table = Table(title=f"{doc.name} @ {doc.fingerprint}", show_header=False)
    found = _guard(ctx, lambda: _artefacts_found(ds)) if doc.section("artefacts").get("enabled") else None
    facts = doc.show_rows()
    at = next(i for i, (k, _) in enumerate(facts) if k == "ops on") + 1
    rows = [("path", ds.url), *facts[:at], *([("artefacts found", found)] if found else []), *facts[at:]]
    for k, v in rows:
        table.add_row(k, escape(str(v)))
    out_console.print(table)
    files = Table(title="files")
    for col in ("file", "fold", "images", "melanoma", "patients", "tfrecord"):
        files.add_column(col)
    for row in doc.file_rows():
        files.add_row(*row)
    out_console.print(files)
    from melanoma_data.embeddings import list_embeddings

    found = list_embeddings(ds.url)
    if found:
        out_console.print("embeddings (read with open_dataset(v).embeddings(KEY); fit with --set embeddings=KEY):",
                          highlight=False)
    for d in found:
        if d["status"] != "ok":
            out_console.print(f"  {escape(d['key'])}  [yellow]{escape(d['status'])}[/]", highlight=False,
                              soft_wrap=True)
            continue
        c = d["counts"]
        out_console.print(f"  {escape(d['key'])}  {d['backbone']} weights={d['weights']} {d['size']} px tta={d['tta']}"
                          f"  {d['dim']} values  {c['embedded']} embedded + {c['quarantined']} quarantined"
                          f"  fingerprint {d['fingerprint']}", highlight=False, soft_wrap=True)


@app.command()
def embed(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Dataset version directory (path or URL).")],
    backbone: Annotated[str, typer.Option(help="lite0..lite4 (lite0-2: packaged ImageNet weights) or B0..B7 "
                                               "(random init).")] = "lite0",
    size: Annotated[int | None, typer.Option(help="Input side in px (default: the backbone's native size).")] = None,
    tta: Annotated[str, typer.Option(help="none, or flip (mean of the image's and its mirror's features).")] = "none",
    workers: Annotated[int, typer.Option(help="Embed worker processes of their own (0 = in this process).")] = 1,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address instead of local workers.")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Pooled backbone features of every image of a version, stored beside it under embeddings/<key>/."""
    from melanoma_plugins.keras_image.embed import embed_version

    res = _guard(ctx, lambda: embed_version(version, backbone, size=size, tta=tta, workers=workers,
                                            scheduler=scheduler, progress=not no_progress, console=out_console))
    d = res.descriptor
    c = d["counts"]
    state = "already up to date (nothing recomputed)" if res.reused else (
        f"written in {res.seconds:.1f} s ({d['timings'].get('images_per_s')} img/s"
        + (f", {res.resumed_parts} part(s) resumed" if res.resumed_parts else "") + ")")
    out_console.print(f"embeddings {escape(d['key'])}: {c['embedded']} embedded + {c['quarantined']} quarantined "
                      f"= {c['images']} images, {d['dim']} values each; {state}\n[bold]{escape(res.url)}[/]",
                      highlight=False, soft_wrap=True)
    for reason, n in d["quarantine"]["reasons"].items():
        err_console.print(f"[yellow]note:[/] {n} image(s) not embedded: {escape(reason)}", highlight=False)


ARTEFACT_COLUMNS = ("ruler_detected", "ink_detected", "bubbles_detected", "dark_corners_detected")


def _artefacts_found(ds: Any) -> str:
    """``ruler: 3, ink: 0, ...`` over the written images (of the artefact columns the shards have)."""
    listed = ds.manifest.column_names
    cols = [c for c in ARTEFACT_COLUMNS if c in listed]
    if not cols or not ds.manifest.shards:
        return ""
    meta = ds.metadata(columns=cols)
    total = len(meta)
    return ", ".join(f"{c.removesuffix('_detected')}: {int(meta[c].fillna(False).astype(bool).sum())}/{total}"
                     for c in cols)


@app.command()
def report(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Dataset version directory (path or URL).")],
    out: Annotated[Path | None, typer.Option(help="Folder for index.html and the plots "
                                                  "(default: reports/<name>-<fingerprint>).")] = None,
) -> None:
    """EDA report: class balance, sizes, sites, sex/age, patients, folds, measurements, duplicates."""
    from melanoma_data.dataset import open_dataset
    from melanoma_data.report import write_report

    def go():
        ds = open_dataset(version)
        target = out or Path("reports") / f"{ds.manifest.name}-{ds.fingerprint}"
        return write_report(ds, target)

    path = _guard(ctx, go)
    out_console.print(f"report: [bold]{escape(str(path))}[/]", highlight=False, soft_wrap=True)


@app.command()
def plugins(
    ctx: typer.Context,
    params: Annotated[str | None, typer.Option(
        "--params", metavar="NAME",
        help="List this plugin's parameters (for fit --set key=value or a \\[params] table).")] = None,
) -> None:
    """The registered model plugins: name, description, what each needs, and where it comes from."""
    from melanoma_models.registry import registry

    if params is not None:
        cls = _guard(ctx, lambda: registry().get(params))
        table = Table(title=f"parameters of {params} (fit --plugin {params} --set key=value, or a \\[params] table)")
        for col in ("name", "default", "description"):
            table.add_column(col)
        for name, default, description in cls.Params.describe():
            table.add_row(name, escape(default), escape(description or "(no description)"))
        out_console.print(table)
        return
    entries = _guard(ctx, lambda: registry().entries())
    table = Table(title="model plugins (entry-point group melanoma.plugins; parameters: plugins --params NAME)")
    for col in ("name", "description", "needs", "from"):
        table.add_column(col)
    for e in entries:
        if e.cls is None:
            table.add_row(e.name, f"[red]cannot be loaded:[/] {escape(e.error or '')}", "", escape(e.value))
        else:
            table.add_row(e.name, escape(e.cls.description), ", ".join(e.cls.needs), escape(e.value))
    out_console.print(table)


def _run_summary(result: Any) -> None:
    m = result.metrics
    cfg = result.config
    table = Table(title=f"run {cfg.run_id} — {cfg.plugin} on {cfg.dataset.name} "
                        f"@ {cfg.dataset.fingerprint}", show_header=False)
    folds = ", ".join(f"{k}: {v:.3f}" for k, v in m["auc_folds"].items())
    table.add_row("OOF AUC (pooled)", f"[bold]{m['auc']:.4f}[/]")
    table.add_row("AUC per fold", f"{m['auc_mean']:.4f} ± {m['auc_sd']:.4f}  ({folds})")
    table.add_row("pAUC above 80% sens.", f"{m['pauc_80']:.4f}")
    if "pauc_80_2024" in m:
        table.add_row("pAUC 80% TPR (2024, 0-0.2)", f"{m['pauc_80_2024']:.4f}")
    for label, op in (("at 0.5", m["at_0_5"]), (f"at {m['threshold_rule']}", m["at_threshold"])):
        table.add_row(label, f"threshold {op['threshold']:.3g}: sensitivity {op['sensitivity']:.1%}, specificity "
                             f"{op['specificity']:.1%}, {op['predicted_positive']} predicted melanoma")
    cal = (m.get("calibration") or {}).get("prediction")
    if cal:
        table.add_row("calibration (raw score)", f"Brier {cal['pooled']['brier']:.4f}, ECE {cal['pooled']['ece']:.4f} "
                                                 f"({m['calibration']['bins']} equal-mass bins), slope "
                                                 f"{cal['pooled']['slope']:.2f}")
    s25 = m.get("isic2025")
    if s25:
        table.add_row("ISIC 2025 score (lesions)", escape(s25) if isinstance(s25, str) else
                      f"[bold]{s25['score']:.4f}[/] macro Dice at > 0.5 over {s25['n']} lesions; balanced accuracy "
                      f"{s25['balanced_accuracy']:.4f}, macro AUC {s25['macro_auc']:.4f}")
    d = m["dermatologists"]
    table.add_row("vs dermatologists", f"sensitivity {d['our_sensitivity']:.1%} at {d['specificity']:.0%} "
                                       f"specificity (theirs: {d['their_sensitivity']:.1%})")
    if isinstance(m.get("subgroups"), list):
        low = [f"{r['dimension']} {r['group']} {r['auc']:.3f} ({r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f})"
               for r in m["subgroups"] if r["below_overall"]]
        table.add_row("subgroups below overall", escape("; ".join(low)) if low else "none (report: subgroup table)")
    if isinstance(m.get("artefacts"), dict):
        skewed = [f"{r['artefact']} in {r['positives_with']}/{r['positives']} melanomas vs "
                  f"{r['negatives_with']}/{r['negatives']} benign" for r in m["artefacts"]["rates"]
                  if r["positives_with"] + r["negatives_with"] >= 5 and r["ratio"] == r["ratio"]
                  and not 0.5 < r["ratio"] < 2]
        low = [f"{r['dimension']} {r['group']} {r['auc']:.3f}" for r in m["artefacts"]["auc"] if r["below_overall"]]
        table.add_row("artefacts by class", escape("; ".join(skewed)) if skewed else
                      "no artefact twice as common in one class (report: artefact tables)")
        if low:
            table.add_row("artefact groups below overall", escape("; ".join(low)))
    out_console.print(table)
    state = "already finished (reused; --rerun to train again)" if result.reused else "written"
    if result.resumed_folds and not result.reused:
        state += f" (resumed: {result.resumed_folds} fold(s) were already done)"
    out_console.print(f"Run {state}: [bold]{escape(str(result.run_dir))}[/] "
                      f"(report: {escape(str(result.run_dir / 'report' / 'index.html'))})",
                      highlight=False, soft_wrap=True)


@app.command()
def fit(
    ctx: typer.Context,
    plugin: Annotated[str | None, typer.Option(help="Plugin name (see `plugins`).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset version directory.")] = None,
    folds: Annotated[int | None, typer.Option(help="CV folds (default: the dataset's; fewer merges folds).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Plugin parameter key=value (repeatable; list them "
                                                   "with: plugins --params NAME).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML with plugin, data, folds and a \\[params] table.")] = None,
    runs: Annotated[Path, typer.Option(help="Folder for run directories.")] = Path("runs"),
    rerun: Annotated[bool, typer.Option(help="Train again even if this exact run exists.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """k-fold cross-validation of a plugin: per-fold models, OOF and test predictions, metrics, report.
    Plugin parameters come from --set key=value and the config's \\[params] table (flags win); list a plugin's
    parameters, defaults and meanings with: plugins --params NAME (e.g. plugins --params effnet).
    """
    from melanoma_models.runner import fit as run_fit
    from melanoma_models.runner import parse_sets

    def go():
        return run_fit(plugin, data, runs=runs, sets=parse_sets(set_), config=config, folds=folds, rerun=rerun,
                       progress=not no_progress, console=out_console)

    _run_summary(_guard(ctx, go, interruptible=True))


@app.command(context_settings={"allow_extra_args": True})
def predict(
    ctx: typer.Context,
    run: Annotated[Path, typer.Option(help="Run directory written by `fit`.")],
    data: Annotated[str | None, typer.Option(help="Dataset version with a test split.")] = None,
    images: Annotated[list[str] | None, typer.Option(
        "--images", help="Image files, folders or input folders in any layout (several may follow the flag).")] = None,
    image: Annotated[list[str] | None, typer.Option(
        "--image", help="A two-view run's lesion, one view each: --image dermoscopic=FILE --image clinical=FILE.")
    ] = None,
    out: Annotated[Path | None, typer.Option(
        help="CSV to write (default submission.csv with --data, scores.csv with --images).")] = None,
    metadata: Annotated[str | None, typer.Option(help="Metadata CSV (image_name, sex, age_approx, site, ...) for "
                                                      "plugins that need it (--images).")] = None,
    workers: Annotated[int, typer.Option(help="Local Dask workers preprocessing --images (0 = this process).")] = 0,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address instead of local workers.")] = None,
    allow_version_mismatch: Annotated[bool, typer.Option(
        "--allow-version-mismatch", help="Score even if the run's data was made by other op versions.")] = False,
) -> None:
    """Predict with every fold model of a run (averaged): a dataset version's test split (--data, a Kaggle
    submission), or raw images (--images: preprocessed exactly as the run's training data was)."""
    from melanoma_models.runner import predict as run_predict

    def warn(msg: str) -> None:
        err_console.print(f"[yellow]note:[/] {escape(msg)}", highlight=False, soft_wrap=True)

    paths = [*(images or []), *ctx.args]
    problem = (f"unexpected argument(s) {' '.join(ctx.args)}" if ctx.args and images is None
               else "give --image VIEW=FILE (a lesion's views) or --images PATH..., not both" if image and paths
               else "give either --data VERSION or --images PATH..."
               if (data is None) == (not paths and not image) else None)
    if problem:
        err_console.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if data is not None:
        target = out or Path("submission.csv")
        sub = _guard(ctx, lambda: run_predict(run, data, target, warn=warn))
        out_console.print(f"wrote {len(sub)} predictions to [bold]{escape(str(target))}[/]", highlight=False)
        if (run / "calibration.json").exists():
            warn("target holds the raw fold-averaged scores (a submission is ranked); the calibrated probabilities "
                 "of the run's own test split are prediction_calibrated in its test_predictions.parquet")
        return
    from melanoma_models.score import parse_views, score_images

    target = out or Path("scores.csv")
    res = _guard(ctx, lambda: score_images(run, paths, target, metadata=metadata, workers=workers,
                                           scheduler=scheduler, allow_version_mismatch=allow_version_mismatch,
                                           warn=warn, views=parse_views(image) if image else None))
    lesions = (f" of {res.scores['lesion_id'].nunique()} lesion(s)" if "lesion_id" in res.scores.columns
               and res.scores["lesion_id"].notna().all() else "")
    out_console.print(f"scored {len(res.scores)} image(s){lesions}: [bold]{escape(str(res.out))}[/]",
                      highlight=False)
    if "prediction_calibrated" in res.scores.columns:
        warn("prediction is the raw score (fold models averaged; the run's threshold applies to it), "
             "prediction_calibrated that score through the run's stored calibration")
    if len(res.quarantine):
        reasons = ", ".join(f"{k}: {v}" for k, v in res.quarantine["reason"].value_counts().items())
        err_console.print(f"[yellow]note:[/] {len(res.quarantine)} input(s) not scored ({escape(reasons)}): "
                          f"{escape(str(res.quarantine_out))}", highlight=False, soft_wrap=True)


@app.command(context_settings={"allow_extra_args": True})
def explain(
    ctx: typer.Context,
    run: Annotated[Path, typer.Option(help="Run directory written by `fit`.")],
    images: Annotated[list[str] | None, typer.Option(
        "--images", help="Image files, folders or input folders in any layout (several may follow the flag).")] = None,
    image: Annotated[list[str] | None, typer.Option(
        "--image", help="A two-view run's lesion, one view each: --image dermoscopic=FILE --image clinical=FILE.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for index.html, a page and PNGs per image.")] = Path("explain"),
    metadata: Annotated[str | None, typer.Option(help="Metadata CSV for plugins that need it.")] = None,
    workers: Annotated[int, typer.Option(help="Local Dask workers preprocessing the images (0 = this process).")] = 0,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address instead of local workers.")] = None,
    allow_version_mismatch: Annotated[bool, typer.Option(
        "--allow-version-mismatch", help="Explain even if the run's data was made by other op versions.")] = False,
    top: Annotated[int, typer.Option(help="Feature contributions shown for tabular plugins.")] = 12,
) -> None:
    """Why each image got its score: a page per image with the preprocessing it got and the score's reasons
    (Grad-CAM for image plugins, TreeSHAP contributions for the boosted trees, base-run weights for a stack)."""
    from melanoma_models.explain import explain_images

    def warn(msg: str) -> None:
        err_console.print(f"[yellow]note:[/] {escape(msg)}", highlight=False, soft_wrap=True)

    from melanoma_models.score import parse_views

    paths = [*(images or []), *ctx.args]
    problem = ("give --image VIEW=FILE (a lesion's views) or --images PATH..., not both" if image and paths
               else "give --images PATH... (or --image VIEW=FILE for a two-view run's lesion)"
               if not image and not paths else None)
    if problem:
        err_console.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    index = _guard(ctx, lambda: explain_images(run, paths, out, metadata=metadata, workers=workers,
                                               scheduler=scheduler, allow_version_mismatch=allow_version_mismatch,
                                               top=top, warn=warn, views=parse_views(image) if image else None))
    out_console.print(f"explanations: [bold]{escape(str(index))}[/]", highlight=False)


@app.command()
def serve(
    ctx: typer.Context,
    run: Annotated[Path, typer.Option(help="Run directory written by `fit`.")],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Uploads scored at the same time (threads).")] = 2,
    allow_version_mismatch: Annotated[bool, typer.Option(
        "--allow-version-mismatch", help="Serve even if the run's data was made by other op versions.")] = False,
) -> None:
    """Serve a run over HTTP: POST /predict (multipart image; a two-view run: the files dermoscopic and clinical),
    an upload page at /, GET /health (extra: serve)."""
    from melanoma_models.serve import serve as run_service

    out_console.print(f"serving {escape(str(run))} on http://{escape(host)}:{port}/ (Ctrl-C stops)", highlight=False)
    _guard(ctx, lambda: run_service(run, host, port, workers, allow_version_mismatch))


@app.command()
def evaluate(
    ctx: typer.Context,
    run: Annotated[Path, typer.Option(help="Run directory written by `fit`.")],
    threshold: Annotated[str | None, typer.Option(
        help="youden, a number in (0,1), spec=0.9 or sens=0.9 (default: keep the run's stored rule).")] = None,
    prevalence: Annotated[float | None, typer.Option(
        help="Melanoma rate where the model is used (e.g. 0.018): PPV/NPV also at it (default: the stored one).")
    ] = None,
) -> None:
    """Recompute a run's metrics and report from its OOF predictions (at another threshold, say)."""
    from melanoma_models.evaluate import evaluate as run_evaluate
    from melanoma_models.runner import RunResult, run_config

    def say(msg: str) -> None:
        err_console.print(f"[yellow]note:[/] {escape(msg)}", highlight=False, soft_wrap=True)

    def go():
        metrics = run_evaluate(run, threshold, prevalence, say=say)
        return RunResult(run, run_config(run), metrics, reused=True)

    result = _guard(ctx, go)
    result.reused = False
    _run_summary(result)


@app.command()
def card(
    ctx: typer.Context,
    run: Annotated[Path, typer.Argument(help="Run directory written by `fit`.")],
    out: Annotated[Path | None, typer.Option(help="File to write (default RUN/card.md, or card.html).")] = None,
    html: Annotated[bool, typer.Option("--html", help="Write HTML instead of Markdown.")] = False,
) -> None:
    """The run's model card: intended use, data and licences, model, evaluation with intervals, limitations and a
    TRIPOD+AI / CLEAR Derm checklist, every figure read from the run's files."""
    from melanoma_data.errors import ConfigError
    from melanoma_models.card import write_card

    def go():
        if out is not None and out.suffix.lower() in (".md", ".html", ".htm") and (out.suffix.lower() == ".md") == html:
            raise ConfigError(f"--out {out} does not match the format: --html writes HTML (name it .html), without it "
                              "the card is Markdown (.md)")
        return write_card(run, out, html)

    path = _guard(ctx, go)
    out_console.print(f"model card: [bold]{escape(str(path))}[/]", highlight=False, soft_wrap=True)


@app.command("inspect")
def inspect_cmd(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A dataset version or an input folder.")],
    n: Annotated[int, typer.Option(help="Images to show (a seeded random choice).")] = 24,
    out: Annotated[Path, typer.Option(help="Contact sheet PNG (an HTML page is written beside it).")] = Path(
        "inspect.png"),
    seed: Annotated[int, typer.Option(help="Seed of the choice.")] = 0,
    config: Annotated[Path | None, typer.Option(help="Preprocessing TOML for an input folder.")] = None,
    metadata: Annotated[str | None, typer.Option(
        help="Metadata CSV for an input folder (overrides layout detection, as in preprocess).")] = None,
) -> None:
    """Before/after contact sheet of the normalisation ops (field of view, hair, colour) with measurements."""
    from melanoma_data.config import load_config
    from melanoma_data.inspect import inspect as run_inspect

    def note(msg: str) -> None:
        err_console.print(f"[yellow]note:[/] {escape(msg)}", highlight=False, soft_wrap=True)

    png, page = _guard(ctx, lambda: run_inspect(source, out, n=n, seed=seed,
                                                cfg=load_config(config) if config else None, metadata=metadata,
                                                warn=note))
    out_console.print(f"contact sheet: [bold]{escape(str(png))}[/]; page: {escape(str(page))}", highlight=False,
                      soft_wrap=True)


@app.command()
def synth(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder to write.")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 48,
    layout: Annotated[str, typer.Option(help=f"{LAYOUT_NAMES}.")] = "kaggle2020",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    size: Annotated[list[str] | None, typer.Option(help="WIDTHxHEIGHT (repeatable).")] = None,
    defects: Annotated[float, typer.Option(help="Probability scale of hair, vignette, casts, rotation.")] = 0.5,
    positive_rate: Annotated[float | None, typer.Option(
        help="Share of positives (isic2024: malignant tiles, default 0.001; others: melanomas, default 0.2).")] = None,
    workers: Annotated[int, typer.Option(help="Processes drawing isic2024 tiles.")] = 1,
) -> None:
    """Generate a synthetic dermoscopy dataset (with ground truth) in one of the input layouts.
    --layout isic2024 writes the 2024 challenge shape: train-image.hdf5 and train-metadata.csv with the 2024
    columns, small tiles, many per patient, 3 test tiles.
    """
    from melanoma_data.synth import write_dataset, write_isic2024

    if positive_rate is not None and not 0.0 <= positive_rate <= 1.0:
        err_console.print(f"[bold red]error:[/] --positive-rate must be in [0, 1], got {positive_rate}")
        raise typer.Exit(2)
    _guard(ctx, lambda: layouts.get(layout))  # an unknown layout: one line naming the known ones
    if layout == "isic2024":
        info = _guard(ctx, lambda: write_isic2024(out, n=n, seed=seed, workers=workers,
                                                  positive_rate=0.001 if positive_rate is None else positive_rate))
        out_console.print(f"wrote {info['train']} train + {info['test']} test tiles (isic2024, "
                          f"{len(info['malignant'])} malignant, {info['patients']} patients) to [bold]{out}[/]",
                          highlight=False)
        return

    def go():
        sizes = None
        if size:
            try:
                sizes = [tuple(int(v) for v in s.lower().split("x")) for s in size]
            except ValueError:
                raise MelanomaDataError(f"--size must look like 1024x768, got {size}") from None
        rate = 0.2 if positive_rate is None else positive_rate
        writer = layouts.get(layout)
        if writer.synth_entry is None:  # a layout with its own writer (milk10k, ham10000, derm7pt, pad-ufes-20)
            import inspect

            wanted = {"sizes": sizes, "defects": defects, "melanoma_rate": rate}
            accepted = inspect.signature(writer.write).parameters
            return writer.write(out, n=n, seed=seed, **{k: v for k, v in wanted.items() if k in accepted})
        return write_dataset(out, n=n, layout=layout, seed=seed, sizes=sizes, defects=defects, melanoma_rate=rate)

    truth = _guard(ctx, go)
    out_console.print(f"wrote {len(truth)} synthetic images ({layout}) to [bold]{out}[/]", highlight=False)


@app.command()
def tune(
    ctx: typer.Context,
    plugin: Annotated[str, typer.Option(help="Plugin name.")],
    data: Annotated[str, typer.Option(help="Dataset version directory.")],
    grid: Annotated[list[str], typer.Option(help="key=v1,v2,... (repeatable): the values to search.")],
    budget: Annotated[int | None, typer.Option(help="At most this many trials (random search).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Fixed parameter key=value (repeatable).")] = None,
    folds: Annotated[int | None, typer.Option(help="CV folds.")] = None,
    runs: Annotated[Path, typer.Option(help="Folder for trial runs and the search results.")] = Path("runs"),
    seed: Annotated[int, typer.Option(help="Seed of the random subset.")] = 0,
) -> None:
    """Grid or random search scored by CV AUC (--set metric=pauc_80_2024: the 2024 pAUC); writes results, a plot
    and best.toml (for fit --config)."""
    from melanoma_models.runner import parse_sets
    from melanoma_models.tune import parse_grid
    from melanoma_models.tune import tune as run_tune

    def trial(i: int, total: int, combo: dict, auc: float) -> None:
        desc = ", ".join(f"{k}={v}" for k, v in combo.items())
        out_console.print(f"trial {i}/{total}: {escape(desc)} → AUC {auc:.4f}", highlight=False)

    res = _guard(ctx, lambda: run_tune(plugin, data, parse_grid(grid), budget=budget, runs=runs,
                                       sets=parse_sets(set_), folds=folds, seed=seed, on_trial=trial))
    table = Table(title=f"{plugin}: {len(res.results)} trials (pooled OOF AUC)")
    cols = [c for c in res.results.columns if c != "run"]
    for c in cols:
        table.add_column(c)
    for _, r in res.results.iterrows():
        table.add_row(*(f"{r[c]:.4f}" if isinstance(r[c], float) else escape(str(r[c])) for c in cols))
    out_console.print(table)
    out_console.print(f"results: [bold]{escape(str(res.tune_dir))}[/]; reuse the best with "
                      f"`python cli.py fit --config {escape(str(res.tune_dir / 'best.toml'))}`",
                      highlight=False, soft_wrap=True)


@app.command()
def demo(
    ctx: typer.Context,
    root: Annotated[Path, typer.Option(help="Where the demo data, shards, runs and reports go.")] = Path("demo-data"),
    n: Annotated[int, typer.Option(help="Number of synthetic images.")] = 200,
    workers: Annotated[int, typer.Option(help="Local Dask worker processes (0 = in this process).")] = 2,
    image_model: Annotated[str, typer.Option(
        help="cnn (small CNN, 20 epochs), effnet (B0 from random weights, 4 epochs) or none.")] = "cnn",
    epochs: Annotated[int | None, typer.Option(help="Epochs of the image model (default: see image-model).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the image model.")] = 0,
    embeddings: Annotated[bool, typer.Option(
        help="Add lite0 ImageNet embeddings + a logistic regression on them as a base of the stack.")] = True,
) -> None:
    """The main job on the embedded default: generate, preprocess, EDA, embed (lite0), fit lgbm + logreg + a linear
    model on the embeddings + an image CNN, stack."""
    from melanoma_models.demo import run_demo

    def say(msg: str) -> None:
        out_console.print(escape(msg), highlight=False, soft_wrap=True)

    res = _guard(ctx, lambda: run_demo(root, n=n, workers=workers, image_model=image_model, epochs=epochs,
                                       say=say, progress=True, console=out_console, seed=seed,
                                       embeddings=embeddings))
    table = Table(title=f"demo: {n} synthetic images; Bayes-optimal AUC of their labels {res.bayes_auc:.3f}")
    for col in ("model", "OOF AUC", "per fold", "report"):
        table.add_column(col)
    for name, run in res.runs.items():
        m = run.metrics
        table.add_row(name, f"{m['auc']:.3f}", f"{m['auc_mean']:.3f} ± {m['auc_sd']:.3f}",
                      escape(str(run.run_dir / "report" / "index.html")))
    out_console.print(table)
    out_console.print(f"shards: {escape(res.version)}\nEDA: {escape(str(res.eda))}", highlight=False, soft_wrap=True)


@app.command("docs")
def docs_cmd(
    root: Annotated[Path, typer.Option(help="The checkout whose docs/reference/ pages to write or check.")] = Path("."),
    check: Annotated[bool, typer.Option("--check", help="Only say which pages are stale (exit 1 if any).")] = False,
) -> None:
    """Write docs/reference/ (ops, columns, layouts, plugins) from the tables the code runs on."""
    from melanoma_cli import docs

    if check:
        stale = docs.stale(root)
        for name in stale:
            err_console.print(f"stale: {docs.REFERENCE / name} (run `melanoma docs`)", highlight=False)
        raise typer.Exit(1 if stale else 0)
    changed = docs.write(root)
    out_console.print(f"{len(changed)} of {len(docs.pages())} pages under {docs.REFERENCE} rewritten"
                      + "".join(f"\n  {p}" for p in changed), highlight=False)


@app.command()
def submission(
    ctx: typer.Context,
    run: Annotated[Path, typer.Argument(help="Run directory of an ISIC 2025 (eleven-class) model.")],
    out: Annotated[Path | None, typer.Option(help="CSV to write (default RUN/submission.csv).")] = None,
) -> None:
    """Write the ISIC 2025 submission CSV from a run's test lesions: lesion_id and the eleven class probabilities,
    one row per lesion."""
    from melanoma_models.submission import write_submission

    path, frame = _guard(ctx, lambda: write_submission(run, out))
    out_console.print(f"submission: {len(frame)} lesions → [bold]{escape(str(path))}[/]", highlight=False,
                      soft_wrap=True)


@app.command("score-submission")
def score_submission(
    ctx: typer.Context,
    submission_csv: Annotated[Path, typer.Argument(metavar="SUBMISSION", help="Submission CSV (lesion_id + 11).")],
    ground_truth: Annotated[Path, typer.Argument(help="Ground truth CSV as MILK10k publishes it (lesion_id + 11 "
                                                      "one-hot columns).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the score as JSON here.")] = None,
) -> None:
    """Score an ISIC 2025 submission as the official scorer does: per-class Dice (F1, a class called at
    probability > 0.5), macro-averaged, beside per-class AUC and balanced accuracy."""
    import json

    from melanoma_models.submission import score_rows
    from melanoma_models.submission import score_submission as run_score

    score = _guard(ctx, lambda: run_score(submission_csv, ground_truth))
    table = Table(title=f"ISIC 2025 score {score['score']:.4f} (macro Dice at > 0.5) over {score['n']} lesions")
    for col in ("class", "lesions", "called > 0.5", "true positives", "Dice (F1)", "AUC"):
        table.add_column(col)
    for row in score_rows(score):
        table.add_row(*(escape(c) for c in row))
    out_console.print(table)
    out_console.print(f"balanced accuracy {score['balanced_accuracy']:.4f}; macro AUC {score['macro_auc']:.4f}",
                      highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(score, indent=2, default=str), encoding="utf-8")


def main() -> None:
    """Entry point of the ``melanoma`` console script and of ``python cli.py``."""
    app()


if __name__ == "__main__":
    sys.exit(main())
