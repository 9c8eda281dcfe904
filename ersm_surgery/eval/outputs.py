"""What an evaluation leaves on disk: the figures, then ``results.json`` naming them, then the HTML report.

``ersm-surgery evaluate`` and the ``run``/``reproduce`` pipeline both write through :func:`write_evaluation`,
so the files and the order they are written in (the results record the figures' names and the report's
path before they are saved) are the same wherever an evaluation comes from.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import EvalResult

__all__ = ["write_evaluation", "REPORT"]

REPORT = "report.html"


def write_evaluation(result: EvalResult, out_dir: str | Path, report: str | Path | None = None) -> dict[str, Path]:
    """Write the figures, ``results.json`` and the HTML report of ``result`` into ``out_dir``, as a whole.

    The files are written into a staging folder beside ``out_dir`` and swapped in at once
    (:mod:`ersm_surgery.io.publish`), under the folder's write lock: a reader, or an interrupted run, never
    leaves a ``results.json`` of one evaluation beside the figures of another. Files of an older evaluation
    that this one does not write (a figure it has no data for) are removed; anything else in the folder is kept.

    Args:
        result: what :func:`ersm_surgery.eval.evaluate` returned; its ``results`` gain the keys ``figures``
            (name -> file name in ``out_dir``) and ``report`` (the report's path).
        out_dir: the folder (created if missing).
        report: where the HTML report goes (default: ``out_dir/report.html``); a path outside ``out_dir``
            is written on its own, atomically, after the folder is published.

    Returns:
        ``{"results": results.json, "report": the report, <figure name>: its PNG, ...}``.
    """
    import shutil

    from ..io.publish import output_lock, publish, staging_dir
    from .figures import write_figures
    from .report import write_report
    from .results import RESULTS_FILE, write_results

    with output_lock(out_dir) as out:
        report_path = Path(report).resolve() if report else out / REPORT
        inside = report_path.parent == out
        staging = staging_dir(out)
        try:
            staged = write_figures(result.results, result.samples, staging)
            result.results["figures"] = {k: p.name for k, p in staged.items()}
            result.results["report"] = str(report_path)
            write_results(result.results, staging)
            if inside:
                write_report(result.results, staged, staging / report_path.name)
            names = [RESULTS_FILE, *(p.name for p in staged.values())] + ([report_path.name] if inside else [])
            publish(staging, out, names, owned=_owned(out))
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after a publish; scratch after a failure
        figures = {k: out / p.name for k, p in staged.items()}
        if not inside:
            write_report(result.results, figures, report_path)
    return {"results": out / RESULTS_FILE, "report": report_path, **figures}


def _owned(out: Path) -> set[str]:
    """The names an evaluation writes: an older evaluation's figures are replaced, never left stale."""
    from .figures import FIXED_FIGURES

    owned = {REPORT, *FIXED_FIGURES}
    if out.is_dir():
        owned |= {p.name for p in out.glob("deletion_*.png")}
    return owned
