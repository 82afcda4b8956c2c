"""The self-contained HTML report: what it shows (`build`) and the HTML it is written in (`html`)."""
from clipsim.report.build import PAIRS, THUMB, build_report, default_path, report_job, write_report

__all__ = ["PAIRS", "THUMB", "build_report", "default_path", "report_job", "write_report"]
