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
    """Write the figures, ``results.json`` and the HTML report of ``result`` into ``out_dir``.

    Args:
        result: what :func:`ersm_surgery.eval.evaluate` returned; its ``results`` gain the keys ``figures``
            (name -> file name in ``out_dir``) and ``report`` (the report's path).
        out_dir: the folder (created if missing).
        report: where the HTML report goes (default: ``out_dir/report.html``).

    Returns:
        ``{"results": results.json, "report": the report, <figure name>: its PNG, ...}``.
    """
    from .figures import write_figures
    from .report import write_report
    from .results import write_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(result.results, result.samples, out_dir)
    result.results["figures"] = {k: p.name for k, p in figures.items()}
    report_path = Path(report) if report else out_dir / REPORT
    result.results["report"] = str(report_path)
    results_path = write_results(result.results, out_dir)
    write_report(result.results, figures, report_path)
    return {"results": results_path, "report": report_path, **figures}
