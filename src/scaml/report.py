"""One self-contained HTML page that shows a whole scaml run.

The report reads what a run left in its output directory: ``run.json``
(written by :class:`scaml.runinfo.RunRecord`), ``summary.json``, every PNG
figure, every small CSV table and every JSON file of metrics. Figures are
embedded as base64 data URIs and the style sheet is inline, so the page opens
anywhere without network access and without JavaScript.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ScamlError
from .io import write_text
from .report_verdicts import Number, Verdict, build_verdict

__all__ = ["REPORT_FILE", "render_report", "write_report"]

#: Name of the report inside a run directory.
REPORT_FILE = "report.html"

#: Tables larger than this are listed under "Files" instead of being shown.
MAX_TABLE_ROWS = 200
MAX_TABLE_COLS = 30
#: Files larger than these (bytes) are not embedded / parsed.
MAX_TABLE_BYTES = 2_000_000
MAX_JSON_BYTES = 2_000_000
MAX_IMAGE_BYTES = 20_000_000
#: Long lists in JSON values are cut after this many items.
MAX_LIST_ITEMS = 40

#: Per-cell (or per-gene) outputs that are never worth a table in the report.
_PER_ITEM_STEMS = re.compile(
    r"(^|_)(predictions?|proba|probabilities|scores?|per_cell|cells|obs|embeddings?|latent|"
    r"neighbors|neighbours|distances|assignments)$",
    re.IGNORECASE,
)
_IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_SPECIAL_JSON = {"run.json", "summary.json"}
_SKIP_DIRS = {"__pycache__"}

#: Words written in a particular way in captions and headings.
_WORDS = {
    "umap": "UMAP", "pca": "PCA", "qc": "QC", "lisi": "LISI", "ilisi": "iLISI", "clisi": "cLISI",
    "kbet": "kBET", "asw": "ASW", "nmi": "NMI", "ari": "ARI", "pcr": "PCR", "hvg": "HVG", "roc": "ROC",
    "pr": "PR", "auc": "AUC", "auroc": "AUROC", "auprc": "AUPRC", "mlp": "MLP", "lr": "LR", "rf": "RF",
    "xgb": "XGB", "knn": "kNN", "vae": "VAE", "cvae": "cVAE", "scvi": "scVI", "scanvi": "scANVI",
    "trvae": "trVAE", "mt": "MT", "f1": "F1", "id": "ID", "scib": "scIB", "vs": "vs",
}


# ----------------------------------------------------------------------------- collecting


@dataclass
class _Table:
    path: str  # relative to the run directory
    header: list[str]
    rows: list[list[str]]
    index_column: bool = False


@dataclass
class _Contents:
    outdir: Path
    run: dict[str, Any] | None = None
    summary: Any = None
    images: dict[str, list[Path]] = field(default_factory=dict)  # folder -> images
    tables: list[_Table] = field(default_factory=list)
    json_files: list[tuple[str, Any]] = field(default_factory=list)
    subruns: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # run.json in subfolders
    files: list[tuple[str, int, str]] = field(default_factory=list)  # (path, size, note)

    @property
    def reportable(self) -> bool:
        return bool(
            self.run or self.subruns or self.summary is not None or self.images or self.tables or self.json_files
        )


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


_ORDER_WORDS = re.compile(r"(?<![a-z])(before|uncorrected|raw|pre|after|corrected|post)(?![a-z])", re.IGNORECASE)
_ORDER_RANK = {"before": "0", "uncorrected": "0", "raw": "0", "pre": "0", "after": "1", "corrected": "1", "post": "1"}


def _figure_key(name: str) -> list[Any]:
    """Natural order, with 'before'/'uncorrected' ahead of 'after'/'corrected'."""
    return _natural_key(_ORDER_WORDS.sub(lambda m: "\x00" + _ORDER_RANK[m.group(1).lower()], name))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _walk(outdir: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(outdir):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS), key=_natural_key)
        for name in files:
            if not name.startswith("."):
                found.append(Path(root) / name)
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _read_table(path: Path) -> tuple[_Table | None, str]:
    """Read a small CSV/TSV; return (table, note) where note says why it was skipped."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows: list[list[str]] = []
    try:
        with path.open(newline="") as handle:
            for row in csv.reader(handle, delimiter=delimiter):
                rows.append(row)
                if len(rows) > MAX_TABLE_ROWS + 1:
                    return None, f"not shown: more than {MAX_TABLE_ROWS} rows"
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return None, f"not shown: could not be read ({type(exc).__name__})"
    rows = [r for r in rows if r]
    if not rows:
        return None, "not shown: empty"
    header, body = rows[0], rows[1:]
    width = max(len(r) for r in rows)
    if width > MAX_TABLE_COLS:
        return None, f"not shown: {width} columns"
    header = header + [""] * (width - len(header))
    body = [r + [""] * (width - len(r)) for r in body]
    index_column = header[0].strip() in {"", "Unnamed: 0"}
    if index_column:
        header[0] = ""
    return _Table(path="", header=header, rows=body, index_column=index_column), ""


def _rel(path: Path, outdir: Path) -> str:
    return path.relative_to(outdir).as_posix()


def _folder_rank(folder: str) -> tuple[int, list[Any]]:
    if folder == "figures":
        return (0, [])
    if folder.startswith("figures/"):
        return (1, _natural_key(folder))
    if folder == "":
        return (2, [])
    return (3, _natural_key(folder))


def _table_rank(rel: str) -> tuple[int, int, list[Any]]:
    """Metric tables first, then shallow before deep, then by name."""
    name = rel.rsplit("/", 1)[-1].lower()
    return (0 if "metric" in name else 1, rel.count("/"), _natural_key(rel))


def _collect(outdir: Path) -> _Contents:
    contents = _Contents(outdir=outdir)
    images: dict[str, list[Path]] = {}
    for path in _walk(outdir):
        rel = _rel(path, outdir)
        suffix = path.suffix.lower()
        try:
            size = path.stat().st_size
        except OSError:
            continue
        note = ""
        if rel == "report.html":
            continue
        if rel == "run.json":
            data = _read_json(path)
            if isinstance(data, dict):
                contents.run = data
                note = "shown under What was run"
            else:
                note = "not shown: not a scaml run record"
        elif path.name == "run.json":
            data = _read_json(path)
            if isinstance(data, dict):
                contents.subruns.append((rel, data))
                note = "shown under What was run"
            else:
                note = "not shown: not a scaml run record"
        elif rel == "summary.json":
            data = _read_json(path)
            if data is not None:
                contents.summary = data
                note = "shown under Summary"
            else:
                note = "not shown: not valid JSON"
        elif suffix in _IMAGE_SUFFIXES:
            if size > MAX_IMAGE_BYTES:
                note = "not shown: image too large to embed"
            elif size == 0:
                note = "not shown: empty file"
            else:
                folder = path.parent.relative_to(outdir).as_posix()
                images.setdefault("" if folder == "." else folder, []).append(path)
                note = "shown under Figures"
        elif suffix in {".csv", ".tsv"}:
            if _PER_ITEM_STEMS.search(path.stem):
                note = "not shown: per-cell or per-gene values"
            elif size > MAX_TABLE_BYTES:
                note = "not shown: too large"
            else:
                table, note = _read_table(path)
                if table is not None:
                    table.path = rel
                    contents.tables.append(table)
                    note = "shown under Metrics and tables"
        elif suffix == ".json":
            if size > MAX_JSON_BYTES:
                note = "not shown: too large"
            else:
                data = _read_json(path)
                if data is None:
                    note = "not shown: not valid JSON"
                else:
                    contents.json_files.append((rel, data))
                    note = "shown under Metrics and tables"
        contents.files.append((rel, size, note))
    contents.images = {
        folder: sorted(paths, key=lambda p: _figure_key(p.stem))
        for folder, paths in sorted(images.items(), key=lambda item: _folder_rank(item[0]))
    }
    contents.tables.sort(key=lambda t: _table_rank(t.path))
    contents.json_files.sort(key=lambda item: _table_rank(item[0]))
    contents.files.sort(key=lambda item: _natural_key(item[0]))
    return contents


# ----------------------------------------------------------------------------- formatting

_esc = html.escape


def _fmt_number(value: float | int) -> str:
    """Numbers for people: 3-4 significant digits, thousands separated, NaN shown as such."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e9:
        return f"{value:.3e}"
    if magnitude >= 10_000:
        return f"{value:,.0f}"
    if magnitude < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


_INT_RE = re.compile(r"^[+-]?\d+$")


def _parse_number(text: str) -> float | int | None:
    text = text.strip()
    if not text:
        return None
    if _INT_RE.match(text):
        try:
            return int(text)
        except ValueError:
            return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def _cell(text: str) -> tuple[str, bool]:
    """Format one CSV cell: (html, is_numeric)."""
    if not text.strip():
        return '<span class="na" title="empty or NaN">—</span>', True
    number = _parse_number(text)
    if number is None:
        return _esc(text), False
    if isinstance(number, float) and math.isnan(number):
        return '<span class="na">NaN</span>', True
    return _esc(_fmt_number(number)), True


def _label(name: str) -> str:
    """A heading from a key or file stem: ``umap_batch`` -> ``UMAP batch``."""
    words = [w for w in re.split(r"[_\-\s]+", str(name)) if w]
    out = []
    for i, word in enumerate(words):
        known = _WORDS.get(word.lower())
        if known:
            out.append(known)
        elif i == 0:
            out.append(word[:1].upper() + word[1:])
        else:
            out.append(word)
    return " ".join(out) or str(name)


def _fmt_seconds(seconds: float) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or math.isnan(seconds):
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _fmt_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


def _fmt_date(text: str | None) -> str:
    if not text:
        return ""
    try:
        when = _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    return when.strftime("%d %b %Y, %H:%M")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _scalar_html(value: Any, exact: bool = False) -> tuple[str, bool]:
    """(html, is_numeric) for a JSON scalar; ``exact`` keeps floats as written (parameters)."""
    if value is None:
        return '<span class="na" title="empty or NaN">—</span>', True
    if isinstance(value, bool):
        return ("true" if value else "false"), False
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return '<span class="na">NaN</span>', True
        if exact:
            return _esc(repr(value)), True
        return _esc(_fmt_number(value)), True
    return _esc(str(value)), False


def _td(value: Any, depth: int, exact: bool = False) -> str:
    if _is_scalar(value):
        text, numeric = _scalar_html(value, exact)
        return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"
    return f"<td>{_value_html(value, depth + 1, exact=exact)}</td>"


def _matrix_keys(value: dict[str, Any]) -> list[str] | None:
    """Inner keys when ``value`` is a dict of flat dicts (a table), else None."""
    if not value or not all(isinstance(v, dict) and v for v in value.values()):
        return None
    columns: list[str] = []
    for inner in value.values():
        for key, item in inner.items():
            if not _is_scalar(item) and not _short_list(item):
                return None
            if key not in columns:
                columns.append(key)
    return columns if len(columns) <= MAX_TABLE_COLS else None


def _short_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= 8 and all(_is_scalar(v) for v in value)


def _records_keys(value: list[Any]) -> list[str] | None:
    if not value or not all(isinstance(v, dict) for v in value):
        return None
    columns: list[str] = []
    for record in value:
        for key, item in record.items():
            if not _is_scalar(item) and not _short_list(item):
                return None
            if key not in columns:
                columns.append(key)
    return columns if len(columns) <= MAX_TABLE_COLS else None


def _before_after(value: dict[str, Any]) -> bool:
    """Whether a dict is exactly {before, after} (counts before and after a filter)."""
    return set(value) == {"before", "after"}


def _kept(before: Any, after: Any) -> str:
    """``after / before`` as a percentage, or an empty string where it means nothing."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after))
    if not numbers or before <= 0 or after > before * 10:
        return ""
    return f"{100.0 * after / before:.1f}%"


def _list_html(value: list[Any], exact: bool = False) -> str:
    shown = value[:MAX_LIST_ITEMS]
    parts = [_scalar_html(v, exact)[0] for v in shown]
    more = len(value) - len(shown)
    text = ", ".join(parts) if parts else '<span class="na">(empty)</span>'
    if more > 0:
        text += f' <span class="muted">… and {more:,} more</span>'
    return text


def _value_html(value: Any, depth: int = 0, *, exact: bool = False) -> str:
    """Any JSON value as HTML: dicts become tables, lists of records become tables."""
    if _is_scalar(value):
        return _scalar_html(value, exact)[0]
    if isinstance(value, list):
        if all(_is_scalar(v) for v in value):
            return _list_html(value, exact)
        columns = _records_keys(value)
        if columns is not None and len(value) <= MAX_TABLE_ROWS:
            head = "".join(f"<th>{_esc(str(c))}</th>" for c in columns)
            body = "".join(
                "<tr>" + "".join(_td(rec.get(c), depth, exact) for c in columns) + "</tr>" for rec in value
            )
            return f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
        items = "".join(f"<li>{_value_html(v, depth + 1, exact=exact)}</li>" for v in value[:MAX_LIST_ITEMS])
        more = len(value) - MAX_LIST_ITEMS
        if more > 0:
            items += f'<li class="muted">… and {more:,} more</li>'
        return f"<ol>{items}</ol>"
    if isinstance(value, dict):
        if not value:
            return '<span class="na">(empty)</span>'
        columns = _matrix_keys(value)
        if columns is not None and len(value) <= MAX_TABLE_ROWS and (len(value) > 1 or depth > 0):
            head = "<th></th>" + "".join(f"<th>{_esc(str(c))}</th>" for c in columns)
            body = "".join(
                f"<tr><th>{_esc(str(key))}</th>" + "".join(_td(inner.get(c), depth, exact) for c in columns) + "</tr>"
                for key, inner in value.items()
            )
            if _before_after(value):
                kept = [_kept(value["before"].get(c), value["after"].get(c)) for c in columns]
                body += '<tr class="kept"><th>kept</th>' + "".join(f'<td class="num">{k}</td>' for k in kept) + "</tr>"
            return f'<div class="scroll"><table class="data matrix"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
        rows = "".join(f"<tr><th>{_esc(str(key))}</th>{_td(item, depth, exact)}</tr>" for key, item in value.items())
        if _before_after(value):
            rows += f'<tr class="kept"><th>kept</th><td class="num">{_kept(value["before"], value["after"])}</td></tr>'
        return f'<div class="scroll"><table class="kv">{rows}</table></div>'
    return _esc(str(value))


def _sectioned_html(value: Any, level: int = 3) -> str:
    """A dict whose dict-valued keys get their own sub-heading; scalars share one table."""
    if not isinstance(value, dict):
        return _value_html(value)
    flat = {k: v for k, v in value.items() if _is_scalar(v) or isinstance(v, list)}
    nested = {k: v for k, v in value.items() if isinstance(v, dict)}
    parts = []
    if flat:
        parts.append(_panel("", _value_html(flat), level))
    for key, item in nested.items():
        if _matrix_keys(item) is None and level < 4 and any(isinstance(v, dict) for v in item.values()):
            parts.append(_panel(_label(key), _sectioned_html(item, level + 1), level))
        else:
            parts.append(_panel(_label(key), _value_html(item, depth=1), level))
    return '<div class="panels">' + "\n".join(parts) + "</div>"


def _panel(heading: str, body: str, level: int = 3) -> str:
    head = f"<h{level}>{_esc(heading)}</h{level}>" if heading else ""
    return f'<div class="panel">{head}{body}</div>'


def _table_html(table: _Table) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in table.header)
    body_rows = []
    for row in table.rows:
        cells = []
        for i, text in enumerate(row):
            if i == 0 and table.index_column:
                cells.append(f"<th>{_esc(text)}</th>")
                continue
            content, numeric = _cell(text)
            if numeric:
                cells.append(f'<td class="num">{content}</td>')
            else:  # long text (notes) wraps in a readable column instead of stretching the table
                cells.append(f'<td class="long">{content}</td>' if len(text) > 40 else f"<td>{content}</td>")
        body_rows.append("<tr>" + "".join(cells) + "</tr>")
    if not body_rows:
        body_rows.append(f'<tr><td colspan="{len(table.header)}" class="na">(no rows)</td></tr>')
    return (
        '<div class="scroll"><table class="data"><thead><tr>' + head + "</tr></thead><tbody>"
        + "".join(body_rows) + "</tbody></table></div>"
    )


# ----------------------------------------------------------------------------- images


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG header (None for other formats)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _image_uri(path: Path) -> tuple[str, tuple[int, int] | None]:
    """The image as a base64 data URI, and its PNG size when known."""
    data = path.read_bytes()
    mime = _IMAGE_SUFFIXES[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", _image_size(data)


def _figure_html(path: Path, outdir: Path, *, key: bool = False) -> str:
    """One figure with its caption; ``key`` figures span the page.

    Figures are saved at 150 dpi and shown at about 100 dpi (never wider than the page); a click
    shows them at full resolution inside their own scroll box. On a phone, a figure of several
    panels side by side keeps a legible size and scrolls sideways within its box.
    """
    uri, size = _image_uri(path)
    caption = _label(path.stem)
    dims = ""
    classes = "fig key" if key else "fig"
    hint = ""
    if size:
        width, height = size
        ratio = width / height if height else 1.0
        dims = (f' width="{width}" height="{height}" '
                f'style="--w:{round(width / 1.5)}px;--zw:{width}px;--ar:{min(ratio, 3.0):.2f}"')
        if ratio > 1.9 and not key:
            classes += " wide"
        if ratio >= 2.5:  # several panels side by side
            classes += " panels"
            hint = '<span class="hint">scroll sideways for every panel; tap to enlarge</span>'
    rel = _rel(path, outdir)
    return (
        f'<figure class="{classes}"><div class="imgbox"><img src="{uri}" alt="{_esc(caption)}"{dims} '
        f'loading="eager" title="click to enlarge"></div>'
        f'<figcaption><span class="cap">{_esc(caption)}</span> <span class="file">{_esc(rel)}</span>{hint}'
        "</figcaption></figure>"
    )


# ----------------------------------------------------------------------------- page

_CSS = """
:root {
  --fg: #1f2328; --muted: #656d76; --bg: #ffffff; --panel: #f6f8fa; --line: #d0d7de;
  --accent: #2f5d8a; --warn-bg: #fff8e1; --warn-line: #d4a72c; --warn-fg: #5c4400; --ok: #1a7f37;
  --bar: #9db7d3; --verdict-bg: #eef4fb; --verdict-line: #9db7d3;
}
@media (prefers-color-scheme: dark) {
  :root {
    --fg: #e6edf3; --muted: #9198a1; --bg: #0d1117; --panel: #161b22; --line: #30363d;
    --accent: #79a6d2; --warn-bg: #2b2111; --warn-line: #9e7a1f; --warn-fg: #f0d58a; --ok: #3fb950;
    --bar: #35587a; --verdict-bg: #14202d; --verdict-line: #35587a;
  }
  img { background: #ffffff; }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; color: var(--fg); background: var(--bg);
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
main { max-width: 1240px; margin: 0 auto; padding: 20px 28px 64px; }
header.top { margin-bottom: 12px; }
h1 { font-size: 1.6rem; line-height: 1.25; margin: 0 0 2px; font-weight: 650; letter-spacing: -0.01em; }
h2 { font-size: 1.3rem; margin: 0; font-weight: 620; display: inline; }
h3 { font-size: 1.05rem; margin: 20px 0 8px; font-weight: 620; }
h4 { font-size: 0.95rem; margin: 16px 0 6px; font-weight: 620; color: var(--muted); }
.meta { color: var(--muted); margin: 0; font-size: 0.9rem; }
.meta span + span::before { content: "·"; margin: 0 8px; color: var(--line); }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 0.86em; }
pre.cmd {
  background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
  white-space: pre-wrap; word-break: break-word; margin: 0 0 12px;
}
.verdict { border: 1px solid var(--verdict-line); background: var(--verdict-bg); border-radius: 10px; padding: 10px 18px 12px; margin: 0 0 14px; }
.verdict ul.lines { list-style: none; margin: 0; padding: 0; font-size: 1.12rem; line-height: 1.5; }
.verdict ul.lines li { margin: 4px 0; }
.lines .lab { font-weight: 650; }
.lines li.missing { color: var(--muted); font-style: italic; }
.vnum { font-weight: 650; font-variant-numeric: tabular-nums; white-space: nowrap; }
.facts { color: var(--muted); font-size: 0.88rem; margin: 8px 0 0; }
.facts span + span::before { content: "·"; margin: 0 8px; color: var(--line); }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 260px), 1fr)); gap: 14px; margin: 0 0 14px; }
a.tile {
  display: flex; flex-direction: column; border: 1px solid var(--verdict-line); background: var(--verdict-bg);
  border-radius: 10px; padding: 10px 14px 12px; color: var(--fg); min-width: 0;
}
a.tile:hover { text-decoration: none; border-color: var(--accent); }
a.tile h2 { font-size: 1.1rem; display: block; color: var(--accent); }
a.tile .folder { color: var(--muted); font-size: 0.78rem; }
a.tile ul.lines { list-style: none; margin: 6px 0 8px; padding: 0; font-size: 0.92rem; line-height: 1.45; flex: 1; }
a.tile ul.lines li { margin: 2px 0; }
a.tile img.thumb { display: block; width: 100%; height: 130px; object-fit: contain; background: #ffffff; border-radius: 4px; }
a.tile .more { font-size: 0.82rem; margin-top: 6px; color: var(--accent); }
section.step { margin-top: 26px; border-top: 1px solid var(--line); padding-top: 14px; }
section.step > h2 + .folder { color: var(--muted); margin-left: 8px; font-size: 0.85rem; }
section.step .verdict { margin-top: 10px; }
.keyfigs { display: flex; flex-direction: column; gap: 14px; margin: 0 0 14px; }
.warnbox { border: 1px solid var(--warn-line); background: var(--warn-bg); color: var(--warn-fg); border-radius: 10px; padding: 8px 16px; margin: 0 0 14px; }
.warnbox strong { display: block; margin-bottom: 2px; }
.warnbox ul { margin: 0; padding-left: 20px; }
.warnbox li { margin: 3px 0; white-space: pre-wrap; word-break: break-word; }
nav.toc { margin: 22px 0 4px; padding: 10px 14px; border: 1px solid var(--line); border-radius: 8px; }
nav.toc strong { font-size: 0.85rem; text-transform: uppercase; letter-spacing: 0.06em; color: var(--muted); }
nav.toc ol { margin: 6px 0 0; padding-left: 22px; columns: 2 220px; column-gap: 28px; }
nav.toc li { margin: 1px 0; break-inside: avoid; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
section.more { margin-top: 10px; }
details.sec { border-top: 1px solid var(--line); padding-top: 10px; }
details.sec > summary { cursor: pointer; list-style-position: outside; margin-left: 18px; }
details.sec > summary::marker { color: var(--muted); }
details.sec > .body { margin-top: 10px; }
.count { color: var(--muted); font-weight: 400; font-size: 0.95rem; margin-left: 6px; }
.scroll { overflow: auto; max-width: 100%; max-height: 75vh; margin: 6px 0 12px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 0.9rem; }
table.data th, table.data td, table.kv th, table.kv td { padding: 4px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
table.data thead th {
  text-align: left; border-bottom: 2px solid var(--line); font-weight: 620; white-space: nowrap;
  background: var(--panel); position: sticky; top: 0; z-index: 1; cursor: pointer; user-select: none;
}
table.data thead th[aria-sort="ascending"]::after { content: " ▲"; color: var(--muted); font-size: 0.75em; }
table.data thead th[aria-sort="descending"]::after { content: " ▼"; color: var(--muted); font-size: 0.75em; }
table.data tbody th { text-align: left; font-weight: 560; white-space: nowrap; }
table.data tbody tr:hover { background: var(--panel); }
table.kv th { text-align: left; font-weight: 560; color: var(--muted); white-space: nowrap; padding-left: 0; }
table.kv td { word-break: break-word; }
table.kv table.kv th { padding-left: 0; }
td.num { text-align: right; white-space: nowrap; }
td.long { min-width: 18em; max-width: 40em; }
.lines, .facts, figcaption, .folder, .tablebox > .name, h3 .count, .meta { overflow-wrap: anywhere; }
table.kv td.num { text-align: left; }
.na, .muted { color: var(--muted); }
.tablebox { margin: 4px 0 18px; }
.panels { display: flex; flex-wrap: wrap; gap: 6px 40px; align-items: flex-start; }
.panel { min-width: 0; max-width: 100%; }
tr.kept th, tr.kept td { color: var(--muted); font-style: italic; }
.panel > h3:first-child, .panel > h4:first-child { margin-top: 6px; }
.tablebox > .name { font-size: 0.92rem; font-weight: 600; margin: 12px 0 2px; }
.tablebox > .name .file { font-weight: 400; color: var(--muted); font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.82rem; margin-left: 8px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 460px), 1fr)); gap: 18px; margin: 8px 0 14px; }
figure.fig { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 10px; background: var(--bg); display: flex; flex-direction: column; min-width: 0; }
figure.fig.wide { grid-column: 1 / -1; }
figure.fig .imgbox { max-width: 100%; }
figure.fig img { display: block; width: var(--w, auto); max-width: 100%; height: auto; margin: 0 auto; cursor: zoom-in; }
figure.fig.zoomed .imgbox { overflow-x: auto; }
figure.fig.zoomed img { max-width: none; width: var(--zw, auto); cursor: zoom-out; }
figcaption .hint { display: none; color: var(--muted); font-size: 0.78rem; }
figcaption { margin-top: 8px; font-size: 0.88rem; }
figcaption .cap { font-weight: 600; }
figcaption .file { color: var(--muted); font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.78rem; margin-left: 6px; }
p.ok { color: var(--ok); margin: 0 0 12px; }
.bar { display: inline-block; height: 0.7em; background: var(--bar); border-radius: 2px; vertical-align: baseline; min-width: 1px; }
td.barcell { width: 40%; min-width: 120px; }
footer { margin-top: 40px; padding-top: 12px; border-top: 1px solid var(--line); color: var(--muted); font-size: 0.82rem; }
@media (max-width: 640px) {
  main { padding: 12px 10px 40px; }
  h1 { font-size: 1.3rem; }
  .verdict { padding: 8px 12px 10px; }
  .verdict ul.lines { font-size: 1rem; }
  figure.fig { padding: 4px; }
  figure.fig.panels .imgbox { overflow-x: auto; }
  figure.fig.panels img { max-width: none; width: min(calc(var(--ar, 1) * 100%), var(--zw, 100%)); }
  figure.fig.panels.zoomed img { width: var(--zw, auto); }
  figcaption .hint { display: block; }
  .panels { gap: 4px 20px; }
}
@media print {
  nav.toc { display: none; }
  figure.fig { break-inside: avoid; }
  details.sec > .body { display: block; }
}
"""

#: Sortable tables (a click on a column header), figures enlarged by a click, and a link to a
#: collapsed section opens it. A few lines, inline: the page works without them.
_SCRIPT = """
(function () {
  function key(row, col) {
    var cell = row.cells[col], text = cell ? cell.textContent.trim() : "";
    var n = parseFloat(text.replace(/,/g, "").replace("\\u2212", "-").replace("%", ""));
    return isNaN(n) ? [1, text.toLowerCase()] : [0, n];
  }
  document.addEventListener("click", function (event) {
    var img = event.target.closest("figure.fig img");
    if (img && !event.target.closest("a")) { img.closest("figure").classList.toggle("zoomed"); return; }
    var th = event.target.closest("table.data > thead th");
    if (!th) return;
    var table = th.closest("table"), body = table.tBodies[0];
    if (!body) return;
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    var rows = Array.prototype.filter.call(body.rows, function (r) { return !r.classList.contains("kept"); });
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      if (x[0] !== y[0]) return x[0] - y[0];
      return (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0) * dir;
    });
    var last = body.querySelector("tr.kept");
    rows.forEach(function (r) { body.insertBefore(r, last); });
  });
  function openTarget() {
    var target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (!target) return;
    var details = target.tagName === "DETAILS" ? target : (target.querySelector("details") || target.closest("details"));
    if (details && !details.open) { details.open = true; target.scrollIntoView(); }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
})();
"""


def _section(anchor: str, title: str, body: str, *, count: str = "", open_: bool = False) -> str:
    opened = " open" if open_ else ""
    count_html = f'<span class="count">{_esc(count)}</span>' if count else ""
    return (
        f'<section id="{anchor}" class="more"><details class="sec"{opened}><summary><h2>{_esc(title)}</h2>'
        f'{count_html}</summary><div class="body">\n{body}\n</div></details></section>'
    )


def _timings_html(timings: dict[str, Any], wall: Any) -> str:
    items = [(k, v) for k, v in timings.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not items:
        return '<p class="muted">No step timings were recorded.</p>'
    longest = max((v for _, v in items), default=0) or 1
    rows = []
    for name, seconds in items:
        width = max(0.0, min(100.0, 100.0 * seconds / longest))
        rows.append(
            f"<tr><th>{_esc(str(name))}</th><td class=\"num\">{_esc(_fmt_seconds(seconds))}</td>"
            f'<td class="barcell"><span class="bar" style="width:{width:.1f}%"></span></td></tr>'
        )
    if isinstance(wall, (int, float)) and not isinstance(wall, bool):
        rows.append(f'<tr><th>whole run (wall clock)</th><td class="num">{_esc(_fmt_seconds(wall))}</td><td></td></tr>')
    return (
        '<div class="scroll"><table class="data"><thead><tr><th>step</th><th>time</th><th></th></tr></thead><tbody>'
        + "".join(rows) + "</tbody></table></div>"
    )


def _qc_counts(data: Any) -> dict[str, tuple[Any, Any]]:
    """``{"cells": (before, after), "genes": ...}`` found in run data or a summary (either spelling)."""
    found: dict[str, tuple[Any, Any]] = {}
    if not isinstance(data, dict):
        return found
    qc = data.get("qc") if isinstance(data.get("qc"), dict) else data
    pairs = [(qc.get("before"), qc.get("after")), (data.get("before_qc"), data.get("after_qc"))]
    for before, after in pairs:
        if not (isinstance(before, dict) and isinstance(after, dict)):
            continue
        for key, label in (("n_cells", "cells"), ("n_genes", "genes")):
            b, a = before.get(key), after.get(key)
            if isinstance(b, (int, float)) and isinstance(a, (int, float)) and label not in found:
                found[label] = (b, a)
    return found


def _run_panels(
    run: dict[str, Any], started: str, folder: str, *, sub_run: bool = False, parent_command_line: str = ""
) -> str:
    """Panels with the command, the inputs and the parameters of one run.json."""
    overview: dict[str, Any] = {}
    if run.get("command"):
        overview["command"] = str(run["command"])
    if sub_run and run.get("command_line") and run.get("command_line") != parent_command_line:
        overview["command line"] = str(run["command_line"])
    if started:
        overview["started"] = started
    if isinstance(run.get("wall_seconds"), (int, float)):
        overview["wall time"] = _fmt_seconds(run["wall_seconds"])
    overview["output directory"] = f"{folder}/"
    parts = [_panel("Run", _value_html(overview))]
    inputs = run.get("inputs")
    if inputs:
        parts.append(_panel("Inputs", _value_html(inputs, depth=1)))
    params = run.get("parameters")
    parts.append(_panel(
        "Parameters",
        _value_html(params, depth=1, exact=True) if params else '<p class="muted">None recorded.</p>',
    ))
    if sub_run and run.get("data"):
        parts.append(_panel("Data", _value_html(run["data"], depth=1)))
    if sub_run and isinstance(run.get("timings_seconds"), dict) and run["timings_seconds"]:
        parts.append(_panel("Timings", _value_html(
            {k: _fmt_seconds(v) for k, v in run["timings_seconds"].items()}, depth=1)))
    return '<div class="panels">' + "".join(parts) + "</div>"


def _escape_lines(lines: Iterable[str]) -> str:
    return "".join(f"<li>{_esc(str(line))}</li>" for line in lines)


# ----------------------------------------------------------------------------- the first screen


@dataclass
class _Step:
    """One run of the page with a verdict: the top run, or a sub-run in a folder."""

    folder: str  # "" for the top of the run directory
    run: dict[str, Any]
    verdict: Verdict

    @property
    def anchor(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", (self.folder or self.verdict.command).lower()).strip("-")
        return f"step-{slug or 'run'}"

    def path(self, rel: str) -> str:
        """A path of the step's directory, relative to the page's run directory."""
        return f"{self.folder}/{rel}" if self.folder else rel


#: The order of the steps of a multi-step run (the demo): the way the work flows.
_STEP_ORDER = {c: i for i, c in enumerate(
    ["integrate", "evaluate", "train", "learning-curve", "novelty", "reference build", "map"])}


def _steps(contents: _Contents) -> list[_Step]:
    """The top run, then the outermost sub-runs whose command has a verdict, in the order the work flows."""
    top: list[_Step] = []
    if contents.run is not None:
        verdict = build_verdict(contents.outdir, contents.run)
        if verdict is not None:
            top.append(_Step("", contents.run, verdict))
    subs: list[_Step] = []
    folders = [rel.rsplit("/", 1)[0] for rel, _ in contents.subruns]
    for (_, sub), folder in zip(contents.subruns, folders, strict=True):
        if any(folder.startswith(other + "/") for other in folders if other != folder):
            continue  # inside another sub-run: that one's verdict covers it
        verdict = build_verdict(contents.outdir / folder, sub)
        if verdict is not None:
            subs.append(_Step(folder, sub, verdict))
    subs.sort(key=lambda s: (_STEP_ORDER.get(s.verdict.command, len(_STEP_ORDER)), _natural_key(s.folder)))
    return top + subs


def _number_html(number: Number, step: _Step) -> str:
    value = number.value
    raw = repr(value) if isinstance(value, float) else str(value)
    return (
        f'<span class="vnum" data-src="{_esc(step.path(number.source))}" data-key="{_esc(number.key)}" '
        f'data-value="{_esc(raw)}">{_esc(number.text)}</span>'
    )


def _lines_html(step: _Step) -> str:
    items = []
    for line in step.verdict.lines:
        body = "".join(_number_html(p, step) if isinstance(p, Number) else _esc(p) for p in line.parts)
        cls = ' class="missing"' if line.missing else ""
        items.append(f'<li{cls}><span class="lab">{_esc(line.label)}:</span> {body}</li>')
    return f'<ul class="lines">{"".join(items)}</ul>'


def _facts_html(run: dict[str, Any], summary: Any = None, n_warnings: int = 0) -> str:
    """Cells and genes through QC, the wall time and a link to the warnings, one muted line."""
    facts = []
    qc = _qc_counts(run.get("data")) or _qc_counts(summary)
    for label, (before, after) in qc.items():
        facts.append(f"{_fmt_number(after)} of {_fmt_number(before)} {label} kept by QC")
    if isinstance(run.get("wall_seconds"), (int, float)) and not isinstance(run.get("wall_seconds"), bool):
        facts.append(f"wall time {_fmt_seconds(run['wall_seconds'])}")
    spans = [f"<span>{_esc(f)}</span>" for f in facts]
    if n_warnings:
        spans.append(f'<span><a href="#warnings">{_esc(_plural(n_warnings, "warning"))} below</a></span>')
    return f'<p class="facts">{"".join(spans)}</p>' if spans else ""


def _verdict_box(step: _Step, summary: Any = None, n_warnings: int = 0) -> str:
    return f'<div class="verdict" data-command="{_esc(step.verdict.command)}">{_lines_html(step)}' \
           f"{_facts_html(step.run, summary, n_warnings)}</div>"


def _key_figures_html(step: _Step, outdir: Path) -> str:
    figures = [_figure_html(outdir / step.path(rel), outdir, key=True) for rel in step.verdict.figures]
    return f'<div class="keyfigs">{"".join(figures)}</div>' if figures else ""


def _tile_html(step: _Step, outdir: Path) -> str:
    thumb = ""
    if step.verdict.figures:
        first = outdir / step.path(step.verdict.figures[0])
        uri, _ = _image_uri(first)
        thumb = f'<img class="thumb" src="{uri}" alt="{_esc(_label(first.stem))}">'
    folder = f"{step.folder}/" if step.folder else "./"
    return (
        f'<a class="tile" href="#{step.anchor}" data-command="{_esc(step.verdict.command)}">'
        f'<h2>{_esc(step.verdict.title)}</h2><span class="folder mono">scaml {_esc(step.verdict.command)} · '
        f"{_esc(folder)}</span>{_lines_html(step)}{thumb}<span class=\"more\">details ↓</span></a>"
    )


def _warnings_box(contents: _Contents, warnings: list[str]) -> str:
    if not (contents.run or contents.subruns):
        return ""  # nothing is known about warnings without run.json
    if not warnings:
        return '<p class="ok" id="warnings">No warnings were raised during this run.</p>'
    return (
        f'<div class="warnbox" id="warnings" role="note"><strong>{_esc(_plural(len(warnings), "warning"))}</strong>'
        f'<ul class="warnings">{_escape_lines(warnings)}</ul></div>'
    )


def _first_screen_html(contents: _Contents, steps: list[_Step], warnings: list[str]) -> tuple[str, set[str]]:
    """The answer: verdicts, key figures, warnings; and the figures it shows (relative paths)."""
    shown: set[str] = set()
    outdir = contents.outdir
    if len(steps) == 1:
        step = steps[0]
        shown.update(step.path(rel) for rel in step.verdict.figures)
        body = _verdict_box(step, contents.summary, len(warnings)) + _key_figures_html(step, outdir) + _warnings_box(contents, warnings)
        return f'<section id="verdict" class="first">{body}</section>', shown
    if steps:
        tiles = '<div class="tiles">' + "".join(_tile_html(s, outdir) for s in steps) + "</div>"
        parts = [f'<section id="verdict" class="first">{tiles}{_warnings_box(contents, warnings)}</section>']
        for step in steps:
            shown.update(step.path(rel) for rel in step.verdict.figures)
            folder = f"{step.folder}/" if step.folder else "./"
            parts.append(
                f'<section class="step" id="{step.anchor}"><h2>{_esc(step.verdict.title)}</h2>'
                f'<span class="folder mono">scaml {_esc(step.verdict.command)} · {_esc(folder)}</span>'
                f"{_verdict_box(step, contents.summary if not step.folder else None)}"
                f"{_key_figures_html(step, outdir)}</section>"
            )
        return "\n".join(parts), shown
    note = '<p class="muted">No verdict: this folder holds no run.json of a scaml command; ' \
           "everything it holds is below.</p>"
    return f'<section id="verdict" class="first">{note}{_warnings_box(contents, warnings)}</section>', shown


# ----------------------------------------------------------------------------- the page


def _render(contents: _Contents, title: str | None) -> str:
    """The whole page: header, the first screen, the table of contents, the collapsed sections."""
    command = str((contents.run or {}).get("command") or "")
    if title is None:
        title = f"scaml {command} report" if command else f"scaml report: {contents.outdir.name}"
    started = _started(contents)
    warnings = _all_warnings(contents)
    steps = _steps(contents)
    first, shown = _first_screen_html(contents, steps, warnings)
    n_figures = sum(1 for paths in contents.images.values() for p in paths if _rel(p, contents.outdir) not in shown)
    n_tables = len(contents.tables) + len(contents.json_files)

    sections = _sections(contents, started, n_tables, shown, open_figures=not steps)
    counts = {"figures": _plural(n_figures, "figure"), "tables": _plural(n_tables, "table"),
              "files": _plural(len(contents.files), "file")}
    header = _header_html(contents, title, started, n_steps=len(steps))
    return _page_html(contents, title, header, first, sections, counts, open_figures=not steps, many=len(steps) > 1)


def _versions(run: dict[str, Any]) -> dict[str, Any]:
    """The package versions a run.json recorded (empty when none)."""
    versions = run.get("versions")
    return versions if isinstance(versions, dict) else {}


def _started(contents: _Contents) -> str:
    """When the run started (run.json), else when its newest file was written."""
    started = _fmt_date((contents.run or {}).get("started"))
    if not started:
        newest = max((os.path.getmtime(contents.outdir / rel) for rel, _, _ in contents.files), default=None)
        if newest is not None:
            started = _dt.datetime.fromtimestamp(newest).strftime("%d %b %Y, %H:%M")
    return started


def _all_warnings(contents: _Contents) -> list[str]:
    """The run's warnings, then each sub-run's own (prefixed with its folder), none repeated."""
    run = contents.run or {}
    warnings = run.get("warnings") if isinstance(run.get("warnings"), list) else []
    for rel, sub in contents.subruns:
        folder = rel.rsplit("/", 1)[0]
        sub_warnings = sub.get("warnings") if isinstance(sub.get("warnings"), list) else []
        warnings = warnings + [f"[{folder}/] {w}" for w in sub_warnings if w not in warnings]
    return warnings


def _sections(
    contents: _Contents, started: str, n_tables: int, shown: set[str], *, open_figures: bool = False
) -> list[tuple[str, str, str]]:
    """The collapsed sections below the first screen, as ``(anchor, title, html)``; empty ones are left out."""
    run = contents.run or {}
    sections: list[tuple[str, str, str]] = []
    if run or contents.subruns:
        sections.append(("run", "What was run", _what_was_run_html(contents, started)))
    data = run.get("data")
    if data:
        sections.append(("data", "Data before and after QC" if _qc_counts(data) else "Data", _sectioned_html(data)))
    if contents.summary is not None:
        sections.append(("summary", "Summary", _sectioned_html(contents.summary)))
    if n_tables:
        sections.append(("tables", "Metrics and tables", _tables_section_html(contents)))
    figures = _figures_section_html(contents, shown)
    if figures:
        sections.append(("figures", "More figures" if shown else "Figures", figures))
    timings = run.get("timings_seconds")
    if isinstance(timings, dict) and timings:
        sections.append(("timings", "Timings", _timings_html(timings, run.get("wall_seconds"))))
    versions = _versions(run)
    if versions:
        sections.append(("versions", "Versions", _value_html(versions)))
    if contents.files:
        sections.append(("files", "Files", _files_section_html(contents)))
    return sections


def _what_was_run_html(contents: _Contents, started: str) -> str:
    """The command line, the run's panels (inputs, parameters), then one heading and panels per sub-run."""
    run = contents.run or {}
    parts = []
    command_line = str(run.get("command_line") or "")
    if command_line:
        parts.append(f'<pre class="cmd"><code>$ {_esc(command_line)}</code></pre>')
    if run:
        parts.append(_run_panels(run, started, contents.outdir.name))
    for rel, sub in contents.subruns:
        folder = rel.rsplit("/", 1)[0]
        name = f"scaml {sub.get('command')}" if sub.get("command") else "A run"
        parts.append(
            f'<h3>{_esc(name)} <span class="count mono">{_esc(folder)}/</span></h3>'
            + _run_panels(
                sub, _fmt_date(sub.get("started")), folder, sub_run=True,
                parent_command_line=str(run.get("command_line") or ""),
            )
        )
    return "\n".join(parts)


def _tables_section_html(contents: _Contents) -> str:
    """One box per CSV table and per JSON file of metrics."""
    boxes = []
    for table in contents.tables:
        boxes.append(
            f'<div class="tablebox"><div class="name">{_esc(_label(Path(table.path).stem))}'
            f'<span class="file">{_esc(table.path)}</span></div>{_table_html(table)}</div>'
        )
    for rel, value in contents.json_files:
        boxes.append(
            f'<div class="tablebox"><div class="name">{_esc(_label(Path(rel).stem))}'
            f'<span class="file">{_esc(rel)}</span></div>{_value_html(value, depth=1)}</div>'
        )
    return "\n".join(boxes)


def _figures_section_html(contents: _Contents, shown: set[str]) -> str:
    """A grid of the figures not on the first screen, per folder, with a heading per folder unless there is one."""
    images = {
        folder: [p for p in paths if _rel(p, contents.outdir) not in shown] for folder, paths in contents.images.items()
    }
    images = {folder: paths for folder, paths in images.items() if paths}
    parts = []
    if shown and images:
        parts.append('<p class="muted">The key figures are at the top of the page.</p>')
    for folder, paths in images.items():
        if len(images) > 1 or folder not in ("", "figures"):
            heading = _label(folder.rsplit("/", 1)[-1]) if folder else "Other figures"
            parts.append(f'<h3>{_esc(heading)} <span class="count mono">{_esc(folder + "/" if folder else "./")}</span></h3>')
        parts.append('<div class="grid">' + "".join(_figure_html(p, contents.outdir) for p in paths) + "</div>")
    return "\n".join(parts)


def _files_section_html(contents: _Contents) -> str:
    """The table of every file in the run directory, with its size and why it is not shown."""
    rows = "".join(
        f'<tr><td class="mono">{_esc(rel)}</td><td class="num">{_esc(_fmt_size(size))}</td>'
        f'<td class="muted">{_esc(note)}</td></tr>'
        for rel, size, note in contents.files
    )
    return (
        '<div class="scroll"><table class="data"><thead><tr><th>file</th><th>size</th><th></th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _header_html(contents: _Contents, title: str, started: str, *, n_steps: int = 0) -> str:
    """Title and one line: command (or the number of runs), date, version, folder.

    The command line itself is under "What was run".
    """
    run = contents.run or {}
    command = str(run.get("command") or "")
    scaml_version = _versions(run).get("scaml", "")
    if n_steps > 1:
        meta = [f"<span>{n_steps} scaml runs</span>"]
    else:
        meta = [f"<span>scaml {_esc(command)}</span>" if command else "<span>scaml</span>"]
    if started:
        meta.append(f"<span>{_esc(started)}</span>")
    if scaml_version:
        meta.append(f"<span>version {_esc(str(scaml_version))}</span>")
    meta.append(f'<span class="mono">{_esc(contents.outdir.name)}/</span>')
    return f"<h1>{_esc(title)}</h1>" + f'<p class="meta">{"".join(meta)}</p>'


def _page_html(
    contents: _Contents, title: str, header: str, first: str, sections: list[tuple[str, str, str]],
    counts: dict[str, str], *, open_figures: bool = False, many: bool = False,
) -> str:
    """The HTML document: head with the style sheet, header, first screen, contents, sections, footer."""
    toc = "".join(
        f'<li><a href="#{anchor}">{_esc(name)}</a>'
        + (f' <span class="muted">· {_esc(counts[anchor])}</span>' if anchor in counts else "")
        + "</li>"
        for anchor, name, _ in sections
    )
    body = "\n".join(
        _section(anchor, name, html_, count=counts.get(anchor, "") if anchor in {"figures", "tables"} else "",
                 open_=open_figures and anchor == "figures")
        for anchor, name, html_ in sections
    )
    # a contents box only where the step sections stand between the first screen and the details
    nav = f'<nav class="toc"><strong>More in this report</strong><ol>{toc}</ol></nav>\n' if sections and many else ""
    scaml_version = _versions(contents.run or {}).get("scaml", "")
    generated = _dt.datetime.now().strftime("%d %b %Y, %H:%M")
    footer = (
        f"<footer>Generated by scaml{(' ' + _esc(str(scaml_version))) if scaml_version else ''} on {_esc(generated)} "
        f"from the files in <span class=\"mono\">{_esc(contents.outdir.name)}/</span>. "
        "Rebuild it with <code>scaml report DIR</code>.</footer>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="color-scheme" content="light dark">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f'<header class="top">{header}</header>\n{first}\n<div id="details">{nav}'
        f"{body}</div>\n{footer}\n</main>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------- API


def render_report(outdir: str | os.PathLike, *, title: str | None = None) -> str:
    """Render the HTML report of a run directory.

    Parameters
    ----------
    outdir
        A directory written by a scaml command (``integrate``, ``evaluate``,
        ``train``, ``map``, ...). Whatever it holds of ``run.json``,
        ``summary.json``, PNG figures, small CSV tables and JSON metric files
        is shown; anything else is listed under "Files".
    title
        Page title; by default ``"scaml <command> report"``.

    Returns
    -------
    str
        One self-contained HTML page (figures embedded as data URIs, inline CSS).

    Raises
    ------
    ScamlError
        If ``outdir`` does not exist, is not a directory, or holds nothing to report.
    """
    path = Path(outdir)
    if not path.exists():
        raise ScamlError(f"run directory {str(path)!r} does not exist; pass the --out directory of a scaml run.")
    if not path.is_dir():
        raise ScamlError(f"{str(path)!r} is a file, not a run directory; pass the --out directory of a scaml run.")
    contents = _collect(path)
    if not contents.reportable:
        raise ScamlError(
            f"run directory {str(path)!r} holds nothing to report (no run.json, summary.json, PNG figures, "
            "CSV tables or JSON metrics); pass the --out directory of a finished scaml run."
        )
    return _render(contents, title)


def write_report(outdir: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write ``outdir/report.html`` (atomically) and return its path.

    Parameters
    ----------
    outdir
        The run directory; see :func:`render_report`.
    title
        Page title; by default ``"scaml <command> report"``.

    Returns
    -------
    pathlib.Path
        The path of the written report.
    """
    page = render_report(outdir, title=title)
    return write_text(page, Path(outdir) / REPORT_FILE)


def maybe_write_report(outdir: str | os.PathLike, *, title: str | None = None) -> Path | None:
    """Write ``outdir/report.html`` at the end of a run; a failure becomes a warning, never an error.

    Every library function that writes an output directory calls this last, so a run from a
    notebook gets the same report as one from the command line. The report's path is printed.

    Returns
    -------
    pathlib.Path or None
        The report's path, or None when it could not be written.
    """
    from ._utils import info, warn

    if not Path(outdir).is_dir():
        return None
    try:
        path = write_report(outdir, title=title)
    except Exception as exc:  # noqa: BLE001 - the run succeeded; a broken report must not fail it
        warn(f"could not write the HTML report in {str(outdir)!r}: {type(exc).__name__}: {exc}")
        return None
    info(f"report: {path}")
    return path
