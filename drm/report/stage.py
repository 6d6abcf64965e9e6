"""Stage `report`: methods side by side (markdown), the ID-vs-OOD plot, the diagnostics."""
from __future__ import annotations

from pathlib import Path

from drm.base.params import StageParams
from drm.report.config import ReportConfig


class Params(StageParams):
    report: ReportConfig = ReportConfig()


def run(params: Params, *, metrics: Path, out: Path, plot: Path, diagnostics: Path | None) -> dict:
    from drm.diagnostics.problem import problem_exists, problem_markdown
    from drm.report.run import run_report

    extra = []
    if diagnostics is not None and diagnostics.exists():
        extra = [diagnostics.read_text(), problem_markdown(problem_exists(metrics))]
    run_report(metrics, params.report, out, plot, extra)
    return {"report": str(out), "plot": str(plot)}
