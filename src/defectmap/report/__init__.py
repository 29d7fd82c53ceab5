"""Pictures and reports: the one heatmap/overlay renderer, figures, the HTML report, tables.

* :mod:`~defectmap.report.render`: heatmap colours and overlays (shared with the service).
* :mod:`~defectmap.report.figures`: ROC, PRO and histogram figures, gallery panels.
* :mod:`~defectmap.report.html`: :func:`write_report`, the self-contained ``report.html``.
* :mod:`~defectmap.report.table`: the benchmark table (Markdown, CSV, JSON, rich).
"""

from defectmap.report.html import ReportData, render_html, select_gallery, write_report

__all__ = ["ReportData", "render_html", "select_gallery", "write_report"]
