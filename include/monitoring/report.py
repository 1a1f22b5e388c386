"""The monitor's HTML report (a summary table, a histogram per feature, reference vs current, as embedded PNGs; the
attribution drift's table and a bar chart of the attribution shares, reference vs current)."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd

from include.monitoring.attribution import AttributionDrift, ColumnShift
from include.monitoring.drift import DRIFTED, NOT_ENOUGH_DATA, DriftReport, FeatureDrift

PLOT_ROWS = 200_000  # histograms of a sample: the shape is the same, the plot much cheaper


def render(title: str, lines: list[str], report: DriftReport, reference: pd.DataFrame, current: pd.DataFrame,
           predictions: tuple[pd.Series, pd.Series] | None, attribution: AttributionDrift | None = None) -> str:
    """A self-contained HTML page: drifted features first and highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    features = sorted(report.features.values(), key=lambda f: (not f.drifted, f.name))
    if report.prediction is not None:
        features.append(report.prediction)
    frames = {f.name: report.values[f.name] if f.name in report.values else (reference[f.name], current[f.name])
              for f in report.features.values()}
    if predictions is not None and report.prediction is not None:
        frames[report.prediction.name] = predictions
    rows = "".join(_row(f) for f in features)
    plots = "".join(f'<figure><img alt="{html.escape(f.name)}" src="data:image/png;base64,{_plot(f, *frames[f.name])}">'
                    f"<figcaption>{html.escape(f.name)}: {html.escape(f.status)}</figcaption></figure>"
                    for f in features)
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
tr.drifted{{background:#fdd;font-weight:bold}}
tr.nodata{{color:#888}} figure{{display:inline-block;margin:4px}} figcaption{{font-size:small;text-align:center}}
</style></head><body><h1>{html.escape(title)}</h1><ul>{summary}</ul>
<table><tr><th>feature</th><th>status</th><th>test</th><th>statistic</th><th>p-value</th><th>corrected</th>
<th>distance</th><th>threshold</th><th>rows (ref / cur)</th><th>missing (ref / cur)</th><th>out of range</th></tr>
{rows}</table>{_attribution(attribution)}<h2>Reference (blue) vs current (orange)</h2>{plots}</body></html>
"""


def _attribution(drift: AttributionDrift | None) -> str:
    """The attribution drift section: each input column's share of the mean |attribution|, drifted ones first."""
    if drift is None:
        return ""
    head = f"<h2>What drives predictions (attribution drift)</h2><p>{html.escape(drift.describe())}</p>"
    if not drift.columns:
        return head
    order = sorted(drift.columns, key=lambda n: (not drift.columns[n].drifted, -drift.columns[n].share_current, n))
    rows = "".join(_attribution_row(name, drift.columns[name]) for name in order)
    chart = f'<figure><img alt="attribution shares" src="data:image/png;base64,{_shares_plot(drift, order)}">' \
            "<figcaption>share of mean |attribution|: reference (blue) vs current (orange)</figcaption></figure>"
    return (f"{head}<table><tr><th>input column</th><th>status</th><th>share (reference)</th>"
            f"<th>share (current)</th><th>change</th><th>ratio</th><th>mean |attribution| (ref / cur)</th></tr>"
            f"{rows}</table>{chart}")


def _attribution_row(name: str, c: ColumnShift) -> str:
    cells = [name, "drifted" if c.drifted else "ok", f"{c.share_reference:.1%}", f"{c.share_current:.1%}",
             f"{c.change * 100:+.1f} points", "" if c.ratio is None else f"{c.ratio:.2f}",
             f"{c.reference:.4g} / {c.current:.4g}"]
    return f'<tr class="{"drifted" if c.drifted else ""}">' + "".join(
        f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"


def _shares_plot(drift: AttributionDrift, order: list[str]) -> str:
    """Horizontal bars, two per column (at most 20 columns: the drifted and the largest)."""
    import matplotlib.pyplot as plt

    names = order[:20][::-1]
    positions = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5.5, 0.8 + 0.3 * len(names)), dpi=80)
    ax.barh(positions + 0.2, [drift.columns[n].share_reference for n in names], height=0.4, label="reference")
    ax.barh(positions - 0.2, [drift.columns[n].share_current for n in names], height=0.4, label="current")
    ax.set_yticks(positions, names, fontsize=7)
    for label, name in zip(ax.get_yticklabels(), names):
        label.set_color("red" if drift.columns[name].drifted else "black")
    ax.set_xlabel("share of mean |attribution|", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _png(fig: object) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return base64.b64encode(buffer.getvalue()).decode()


def _number(value: float | None, spec: str = ".4g") -> str:
    return "" if value is None else format(value, spec)


def _row(f: FeatureDrift) -> str:
    css = {DRIFTED: "drifted", NOT_ENOUGH_DATA: "nodata"}.get(f.status, "")
    cells = [f.name, f.status, f.test, _number(f.statistic), _number(f.p_value, ".3g"), _number(f.p_adjusted, ".3g"),
             f"{f.distance_name} {_number(f.distance)}", f"p < {f.threshold_p_value}, > {f.threshold_distance}",
             f"{f.rows_reference} / {f.rows_current}", f"{f.missing_reference:.1%} / {f.missing_current:.1%}",
             "" if f.out_of_range is None else f"{f.out_of_range:.1%}"]
    return f'<tr class="{css}">' + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _plot(feature: FeatureDrift, reference: pd.Series, current: pd.Series) -> str:
    import matplotlib.pyplot as plt

    ref, cur = _sample(reference.dropna()), _sample(current.dropna())
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=80)
    if feature.kind in ("numeric", "datetime") and len(ref) + len(cur):
        if feature.kind == "datetime":  # days since 1970 on the axis: the two ranges side by side
            ref, cur = (s.astype("datetime64[ns]").astype("int64") / 86_400e9 for s in (ref, cur))
            ax.set_xlabel("days since 1970-01-01", fontsize=7)
        values = np.concatenate([ref.to_numpy(dtype=float), cur.to_numpy(dtype=float)])
        edges = np.histogram_bin_edges(values, bins=30)
        for series, label in ((ref, "reference"), (cur, "current")):
            if len(series):
                ax.hist(series.to_numpy(dtype=float), bins=edges, density=True, alpha=0.5, label=label)
    elif len(ref) + len(cur):
        shares = pd.concat([ref.astype(str).value_counts(normalize=True).rename("reference"),
                            cur.astype(str).value_counts(normalize=True).rename("current")], axis=1).fillna(0)
        if feature.name.endswith((".hour", ".dayofweek")):  # a datetime's part: all of it, in its order
            shares = shares.sort_index(key=lambda index: index.astype(int))
        else:
            shares = shares.head(20)
        shares.plot.bar(ax=ax, alpha=0.7, legend=False)
    ax.set_title(feature.name, fontsize=9, color="red" if feature.drifted else "black")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _sample(values: pd.Series) -> pd.Series:
    return values.sample(PLOT_ROWS, random_state=0) if len(values) > PLOT_ROWS else values

