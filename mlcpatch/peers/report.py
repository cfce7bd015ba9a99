"""The benchmark's outputs: a printed table, a JSON file and a PNG chart, written atomically."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

from mlcpatch.errors import MlcpatchError


class ReportError(MlcpatchError, ValueError):
    """Results that cannot be reported (no legs, missing figures)."""


ROW_FIELDS = ("prefill_tok_s", "decode_tok_s", "decode_limit_tok_s", "peak_rss_mib", "load_s")


def _check(results: dict[str, Any], fields: tuple[str, ...] = ROW_FIELDS) -> list[dict[str, Any]]:
    legs = results.get("legs")
    if not isinstance(legs, list) or not legs:
        raise ReportError("no engine results to report")
    for leg in legs:
        if "error" in leg or "skipped" in leg:
            continue
        missing = [f for f in ("engine", *fields) if f not in leg]
        if missing:
            raise ReportError(f"leg {leg.get('engine', '?')}: missing {', '.join(missing)}")
    return legs


def _replace_atomically(path: pathlib.Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(pathlib.Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(
    path: pathlib.Path, results: dict[str, Any], fields: tuple[str, ...] = ROW_FIELDS
) -> None:
    _check(results, fields)
    text = json.dumps(results, indent=2) + "\n"
    _replace_atomically(path, lambda tmp: tmp.write_text(text))


def table(results: dict[str, Any]) -> str:
    legs = _check(results)
    head = (
        f"{'engine':30s}{'prefill tok/s':>14s}{'decode tok/s':>14s}{'limit tok/s':>13s}"
        f"{'of limit':>10s}{'peak MiB':>10s}{'load s':>8s}"
    )
    lines = [head]
    for leg in legs:
        if "error" in leg or "skipped" in leg:
            lines.append(f"{leg.get('engine', '?'):30s}  {leg.get('error') or leg['skipped']}")
            continue
        share = leg["decode_tok_s"] / leg["decode_limit_tok_s"]
        lines.append(
            f"{leg['engine']:30s}{leg['prefill_tok_s']:14.1f}{leg['decode_tok_s']:14.1f}"
            f"{leg['decode_limit_tok_s']:13.1f}{share:10.0%}{leg['peak_rss_mib']:10.0f}"
            f"{leg['load_s']:8.2f}"
        )
    return "\n".join(lines)


CPU_PANELS = (
    ("prefill (tok/s)", "prefill_tok_s"),
    ("decode (tok/s); outline: bandwidth limit", "decode_tok_s"),
    ("peak RSS (MiB)", "peak_rss_mib"),
    ("load (s)", "load_s"),
)


def write_png(
    path: pathlib.Path,
    results: dict[str, Any],
    title: str,
    panels: tuple[tuple[str, str], ...] = CPU_PANELS,
) -> None:
    """One bar panel per (label, field), an engine per bar; where the legs carry
    ``decode_limit_tok_s``, the decode panel outlines it."""
    fields = tuple(key for _, key in panels)
    legs = [leg for leg in _check(results, fields) if "error" not in leg and "skipped" not in leg]
    if not legs:
        raise ReportError("every engine failed or was skipped: nothing to draw")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [leg["engine"] for leg in legs]
    xs = list(range(len(legs)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (label, key) in zip(axes[0], panels, strict=True):
        values = [leg[key] for leg in legs]
        ax.bar(xs, values, color=[f"C{i}" for i in xs])
        if key == "decode_tok_s" and all("decode_limit_tok_s" in leg for leg in legs):
            limits = [leg["decode_limit_tok_s"] for leg in legs]
            ax.bar(xs, limits, fill=False, edgecolor="black", linestyle="--", linewidth=1)
        for x, v in zip(xs, values, strict=True):
            ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    absent = [
        f"{leg['engine']}: {leg.get('error') or leg['skipped']}"
        for leg in results["legs"]
        if "error" in leg or "skipped" in leg
    ]
    if absent:
        fig.text(0.01, 0.01, "not shown: " + "; ".join(absent)[:220], fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.05 if absent else 0, 1, 1))
    _replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
