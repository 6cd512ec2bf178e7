"""Render an evaluation report as a self-contained report.html and a report.md.

The content is the caller's: a list of sections, each with a title, paragraphs (plain text),
tables (list of dicts or a DataFrame, optionally with a caption) and images (paths, optionally
with a caption). This module only lays them out. The HTML embeds every image as a base64 data
URI and uses inline CSS, so it opens offline and can be mailed as one file; the Markdown refers
to the images by paths relative to the output folder (images elsewhere are copied into
`<out_dir>/figures/`). A fixed "Intended use" notice opens both documents; it cannot be left out.
"""

from __future__ import annotations

import base64
import html
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

INTENDED_USE_TITLE = "Intended use"
INTENDED_USE: tuple[str, ...] = (
    "Research tool, not a diagnostic device. dermae models and the numbers in this report are "
    "for research on imbalanced dermoscopy classification only. They are not validated for "
    "clinical use and must not be used to diagnose, screen or make treatment decisions for any "
    "person.",
    "Data provenance and license: HAM10000 (Human Against Machine with 10000 training images), "
    "10,015 dermatoscopic images of 7,470 pigmented skin lesions from the ViDIR Group, Medical "
    "University of Vienna, and the practice of C. Rosendahl, Queensland. License: CC BY-NC 4.0 "
    "(attribution, non-commercial use only). Cite: Tschandl P., Rosendahl C., Kittler H. "
    '"The HAM10000 dataset, a large collection of multi-source dermatoscopic images of common '
    'pigmented skin lesions." Sci. Data 5, 180161 (2018), doi:10.1038/sdata.2018.161. '
    "Synthetic images made by dermae's generator derive from these data and carry the same terms.",
)

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml", ".webp": "image/webp"}  # fmt: skip

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 1.8em; }
.notice { background: #fff6e0; border-left: 5px solid #e0a000; padding: .6em 1em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
.meta { color: #666; font-size: .85em; }
"""


# ----------------------------------------------------------------------------- content model


@dataclass
class Table:
    rows: list[dict[str, Any]]
    caption: str | None = None


@dataclass
class Image:
    path: Path
    caption: str | None = None


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Any] = field(default_factory=list)  # Table | list[dict] | DataFrame | mapping
    images: list[Any] = field(default_factory=list)  # Image | path | (path, caption) | mapping


def _table(item: Any) -> Table:
    if isinstance(item, Table):
        return item
    if isinstance(item, pd.DataFrame):
        return Table(item.to_dict(orient="records"))
    if isinstance(item, Mapping) and "rows" in item:
        inner = _table(item["rows"])
        return Table(inner.rows, item.get("caption"))
    if isinstance(item, Mapping):  # a flat {name: value} mapping -> two-column table
        return Table([{"name": k, "value": v} for k, v in item.items()])
    if isinstance(item, Sequence) and all(isinstance(r, Mapping) for r in item):
        return Table([dict(r) for r in item])
    raise TypeError(
        f"a table must be a list of dicts, a DataFrame or {{'rows': ..., 'caption': ...}}; "
        f"got {type(item).__name__}"
    )


def _image(item: Any) -> Image:
    if isinstance(item, Image):
        return item
    if isinstance(item, (str, Path)):
        return Image(Path(item))
    if isinstance(item, Mapping):
        return Image(Path(item["path"]), item.get("caption"))
    if isinstance(item, Sequence) and len(item) == 2:
        return Image(Path(item[0]), item[1])
    raise TypeError(f"an image must be a path, (path, caption) or a dict; got {item!r}")


def _section(item: Section | Mapping[str, Any]) -> Section:
    raw = item if isinstance(item, Section) else Section(**dict(item))
    paragraphs = [raw.paragraphs] if isinstance(raw.paragraphs, str) else list(raw.paragraphs)
    images = [_image(i) for i in raw.images]
    for image in images:
        if not image.path.is_file():
            raise FileNotFoundError(
                f"report section '{raw.title}': image {image.path} does not exist; "
                "write the figure before rendering the report"
            )
    return Section(raw.title, paragraphs, [_table(t) for t in raw.tables], images)


# ----------------------------------------------------------------------------- formatting


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: Any, digits: int = 3) -> str:
    """Cell text: floats to `digits` decimals, None/NaN as "n/a", everything else as str()."""
    if _is_missing(value):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_ci(
    value: float | None, ci: Sequence[float | None] | None = None, digits: int = 3
) -> str:
    """ "0.812 (0.781–0.840)"; the interval is dropped when missing, the value "n/a" if None."""
    text = format_value(None if value is None else float(value), digits)
    if ci is None or value is None or any(_is_missing(c) for c in ci):
        return text
    lo, hi = ci
    return f"{text} ({float(lo):.{digits}f}–{float(hi):.{digits}f})"


def metrics_table(
    results: Mapping[str, Mapping[str, Any]],
    cis: Mapping[str, Mapping[str, Sequence[float | None]]] | None = None,
    metrics: Sequence[str] | Mapping[str, str] | None = None,
    digits: int = 3,
) -> list[dict[str, str]]:
    """Rows = metrics, columns = models, cells "value (lo–hi)".

    `results`: model name -> {metric: value}; `cis`: model name -> {metric: (lo, hi)} (e.g. from
    `bootstrap_ci`); `metrics`: which metrics and in what order, optionally {key: display label};
    by default every scalar key of the first model, in its order.
    """
    if metrics is None:
        first = next(iter(results.values()), {})
        metrics = [k for k, v in first.items() if _is_missing(v) or isinstance(v, (int, float))]
    labels = dict(metrics) if isinstance(metrics, Mapping) else {m: m for m in metrics}
    rows = []
    for key, label in labels.items():
        row = {"metric": label}
        for model, values in results.items():
            ci = (cis or {}).get(model, {}).get(key)
            row[model] = format_ci(values.get(key), ci, digits)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- HTML


def _data_uri(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"cannot embed {path}: use one of {', '.join(sorted(_MIME))}")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _html_table(table: Table, digits: int) -> str:
    columns = list(dict.fromkeys(k for row in table.rows for k in row))
    parts = ["<table>"]
    if table.caption:
        parts.append(f"<caption>{html.escape(table.caption)}</caption>")
    parts.append("<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>")
    for row in table.rows:
        cells = "".join(
            f"<td>{html.escape(format_value(row.get(c), digits))}</td>" for c in columns
        )
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _render_html(title: str, sections: list[Section], generated: str, digits: int) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">generated {html.escape(generated)}</p>',
        f'<section class="notice"><h2>{INTENDED_USE_TITLE}</h2>',
        *(f"<p>{html.escape(p)}</p>" for p in INTENDED_USE),
        "</section>",
    ]
    for section in sections:
        out.append(f"<section><h2>{html.escape(section.title)}</h2>")
        out.extend(f"<p>{html.escape(p)}</p>" for p in section.paragraphs)
        out.extend(_html_table(t, digits) for t in section.tables)
        for image in section.images:
            alt = html.escape(image.caption or image.path.name, quote=True)
            out.append(f'<figure><img src="{_data_uri(image.path)}" alt="{alt}">')
            if image.caption:
                out.append(f"<figcaption>{html.escape(image.caption)}</figcaption>")
            out.append("</figure>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- Markdown


def _md_cell(value: Any, digits: int) -> str:
    return format_value(value, digits).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table, digits: int) -> str:
    columns = list(dict.fromkeys(k for row in table.rows for k in row))
    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines.append("| " + " | ".join(_md_cell(c, digits) for c in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_cell(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines)


def _md_image_path(path: Path, out_dir: Path) -> str:
    """Relative path from out_dir; images outside out_dir are copied to out_dir/figures/."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        target = out_dir / "figures" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != resolved:
            shutil.copyfile(resolved, target)
        return target.relative_to(out_dir).as_posix()


def _render_md(
    title: str, sections: list[Section], out_dir: Path, generated: str, digits: int
) -> str:
    out = [f"# {title}", "", f"_generated {generated}_", "", f"## {INTENDED_USE_TITLE}", ""]
    for p in INTENDED_USE:
        out += [f"> {p}", ">"]
    out[-1] = ""
    for section in sections:
        out += [f"## {section.title}", ""]
        for p in section.paragraphs:
            out += [p, ""]
        for table in section.tables:
            out += [_md_table(table, digits), ""]
        for image in section.images:
            alt = (image.caption or image.path.stem).replace("]", ")")
            out += [f"![{alt}]({_md_image_path(image.path, out_dir)})", ""]
            if image.caption:
                out += [f"*{image.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


def render_report(
    sections: Sequence[Section | Mapping[str, Any]],
    out_dir: str | Path,
    title: str = "dermae evaluation report",
    digits: int = 3,
) -> tuple[Path, Path]:
    """Write `<out_dir>/report.html` (self-contained) and `<out_dir>/report.md`.

    A section is a `Section` or a dict with keys title, paragraphs, tables, images.
    Returns (html_path, md_path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parsed = [_section(s) for s in sections]
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    html_path = out / "report.html"
    md_path = out / "report.md"
    html_path.write_text(_render_html(title, parsed, generated, digits), encoding="utf-8")
    md_path.write_text(_render_md(title, parsed, out, generated, digits), encoding="utf-8")
    return html_path, md_path
