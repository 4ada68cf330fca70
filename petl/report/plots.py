"""The chapters' figures. Each is drawn on a figure of its own and glued (`glue_figure`); the chapter places it
with a `{glue:figure}` directive that gives it a name and a numbered caption."""

from __future__ import annotations

import pandas as pd

from petl.report.prose import METRIC_LABELS

COLOR = "#4c72b0"
MARKERS = "osD^vP*Xh<>"


def glue_figure(name: str, fig) -> None:
    """Glue a matplotlib figure under `name` for a `{glue:figure}` directive, and close it (it is shown there
    only, with its caption)."""
    import matplotlib.pyplot as plt
    from myst_nb import glue
    fig.tight_layout()
    glue(name, fig, display=False)
    plt.close(fig)


def _no_data(ax, text: str = "no complete run yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([]); ax.set_yticks([])


def errorbar_plot(ax, summary: pd.DataFrame, metric: str, title: str = "", baseline: float | None = None,
                  baseline_label: str = "majority class") -> None:
    """Horizontal bars of mean ± std per method (labels on the y axis), with an optional baseline line."""
    if summary.empty:
        _no_data(ax)
        return
    ax.barh(summary["label"], summary["mean"], xerr=summary["std"], color=COLOR, alpha=0.85, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(METRIC_LABELS.get(metric, metric))
    low = (summary["mean"] - summary["std"]).min()
    high = (summary["mean"] + summary["std"]).max()
    if baseline is not None:
        low, high = min(low, baseline), max(high, baseline)
        ax.axvline(baseline, color="grey", ls="--", label=baseline_label)
        ax.legend(loc="lower right", fontsize=8)
    pad = max(1.0, 0.1 * (high - low))
    ax.set_xlim(max(0.0, low - pad), high + pad)
    ax.tick_params(axis="y", labelsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def pareto_plot(ax, summary: pd.DataFrame, metric: str, title: str = "", log_x: bool = True) -> None:
    """% parameters (paper convention, log scale) against the metric, one marker per method (named in the
    legend, so no two labels overlap), with std bars."""
    if summary.empty:
        _no_data(ax)
        return
    for i, (_, row) in enumerate(summary.iterrows()):
        x = max(row["params %"], 1e-3)
        ax.errorbar(x, row["mean"], yerr=row["std"], fmt=MARKERS[i % len(MARKERS)], capsize=3, label=row["label"])
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("fine-tuned parameters (% of the backbone)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def budget_plot(ax, summary: pd.DataFrame, metric: str, model: str) -> None:
    """One line per variant of a (variant, size) summary: % parameters against the metric, with std bars."""
    if summary.empty:
        _no_data(ax)
        return
    for i, (variant, group) in enumerate(summary.groupby("variant", sort=False)):
        group = group.sort_values("params %")
        ax.errorbar(group["params %"], group["mean"], yerr=group["std"], marker=MARKERS[i % len(MARKERS)],
                    capsize=3, label=variant)
    ax.set_xscale("log")
    ax.set_xlabel(f"fine-tuned parameters (% of {model}, paper's convention)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def curves_plot(ax, curves: pd.DataFrame, ylabel: str) -> None:
    """The paper's curves (paper.paper_curves): size against value, one line per method."""
    for i, (method, group) in enumerate(curves.groupby("method", sort=False)):
        group = group.sort_values("size")
        ax.plot(group["size"], group["value"], marker=MARKERS[i % len(MARKERS)], label=method)
    ax.set_xscale("log")
    ax.set_xlabel("size (l or r)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
