"""`reports/index.html`: one row per run (what differs from the default recipe, final and best validation
accuracy, training time, links to its reports) and links to the comparison pages; columns sort on a click.

Rendered by jinja2 with autoescaping: run names, settings and report names are text, never markup.
"""

from __future__ import annotations

import time
from pathlib import Path

import jinja2

from classifier_lib.report.runs_table import differences_from_default, load_run
from classifier_lib.utils.fileio import atomic_write, read_json
from classifier_lib.utils.runs import list_runs

COMPARE_DIR = "compare"  # reports/compare/<name>.html: comparison pages

INDEX_TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><title>classifier runs</title>
<style>
body{font-family:sans-serif;margin:2em} td,th{padding:4px 10px;border-bottom:1px solid #ddd;vertical-align:top}
th{cursor:pointer;background:#f4f4f4;text-align:left} th:hover{background:#e4e4e4} code{font-size:90%}
</style></head><body>
<h1>Runs</h1>
{% if comparisons %}<p>Comparison pages:
{% for page in comparisons %}<a href="{{ compare_dir }}/{{ page }}.html">{{ page }}</a>
{% if not loop.last %} · {% endif %}{% endfor %}
</p>{% endif %}
<p>Click a column to sort. "last" is the validation accuracy after the last epoch (no epoch picked on
Valid); "balanced" its mean recall per class, the fair headline when classes are imbalanced; "best" is
the best epoch's accuracy, chosen on Valid and so optimistic there.</p>
<table id="runs"><thead><tr><th>run</th><th>date</th><th>sweep</th><th>differs from the default recipe</th>
<th>last valid acc</th><th>last balanced acc</th><th>best valid acc</th><th>epochs</th><th>train time (s)</th>
<th>evaluated acc</th>
<th>reports</th></tr></thead><tbody>
{% for row in rows %}<tr><td data-sort="{{ row.number }}">{{ row.name }}</td><td>{{ row.date }}</td>
<td>{{ row.sweep }}</td><td>{% for key, value in row.changes.items() %}<code>{{ key }}={{ value }}</code><br>{% endfor %}</td>
<td>{{ row.final }}</td><td>{{ row.balanced }}</td><td>{{ row.best }}</td><td>{{ row.epochs }}</td><td>{{ row.train_s }}</td>
<td>{{ row.evaluated }}</td>
<td>{% for page in row.pages %}<a href="{{ row.name }}/{{ page }}.html">{{ page }}</a>
{% else %}(no reports){% endfor %}</td></tr>
{% endfor %}</tbody></table>
<script>
document.querySelectorAll("#runs th").forEach((header, column) => header.addEventListener("click", () => {
  const body = document.querySelector("#runs tbody");
  const key = row => { const cell = row.children[column]; return cell.dataset.sort ?? cell.textContent.trim(); };
  const ascending = header.dataset.order !== "asc";
  const rows = [...body.rows].sort((a, b) => {
    const [x, y] = [key(a), key(b)], numeric = x !== "" && y !== "" && !isNaN(x) && !isNaN(y);
    return (numeric ? x - y : x.localeCompare(y)) * (ascending ? 1 : -1);
  });
  header.dataset.order = ascending ? "asc" : "desc";
  rows.forEach(row => body.appendChild(row));
}));
</script></body></html>
"""


def write_index(runs_root: str | Path = "runs", reports_root: str | Path = "reports") -> Path:
    """Write `reports/index.html` for every run under `runs_root`, newest first."""
    reports_root = Path(reports_root)
    reports_root.mkdir(parents=True, exist_ok=True)
    rows = [_row(run, reports_root) for run in reversed(list_runs(runs_root))]
    comparisons = sorted(page.stem for page in (reports_root / COMPARE_DIR).glob("*.html"))
    template = jinja2.Environment(autoescape=True).from_string(INDEX_TEMPLATE)
    index = reports_root / "index.html"
    atomic_write(index, template.render(rows=rows, comparisons=comparisons, compare_dir=COMPARE_DIR))
    return index


def _row(run: Path, reports_root: Path) -> dict:
    try:
        record = load_run(run)
        changes, sweep, metrics = differences_from_default(record.config), record.sweep, record.metrics
    except (FileNotFoundError, ValueError):  # no training yet, or a config from elsewhere
        changes, sweep, metrics = {}, "", read_json(run / "metrics.json")
    history = metrics.get("history") or [{}]
    return {
        "name": run.name,
        "number": int(run.name.rsplit("_", 1)[-1]),
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.stat().st_mtime)),
        "sweep": sweep,
        "changes": changes,
        "final": _fmt(metrics.get("final_valid_acc")),
        "balanced": _fmt(metrics.get("final_valid_balanced_acc")),
        "best": _fmt(metrics.get("best_valid_acc")),
        "epochs": metrics.get("epochs_done", ""),
        "train_s": f"{history[-1]['elapsed_s']:.0f}" if "elapsed_s" in history[-1] else "",
        "evaluated": _fmt(read_json(run / "evaluation.json").get("accuracy")),
        "pages": [page.stem for page in sorted((reports_root / run.name).glob("*.html"))],
    }


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ""
