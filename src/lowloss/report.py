"""A self-contained HTML report: one section per claim, figures embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .utils import atomic_path

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1em 0;font-size:.92em} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}
th{background:#f4f4f4} .held{color:#0a7d28;font-weight:600} .noise{color:#8a6d00;font-weight:600} .failed{color:#b3261e;font-weight:600}
.na{color:#777;font-weight:600}
section{border-top:1px solid #eee;margin-top:1.6em;padding-top:.6em}
figure{margin:.6em 0;display:inline-block;vertical-align:top} figure img{max-width:520px;border:1px solid #eee}
figcaption{font-size:.8em;color:#666} pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
"""


def _img(path: Path, base: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    rel = path.relative_to(base) if path.is_relative_to(base) else path.name
    return (f'<figure><img alt="{html.escape(str(rel))}" data-file="{html.escape(str(rel))}" '
            f'src="data:image/{"gif" if path.suffix == ".gif" else "png"};base64,{data}"><figcaption>{html.escape(str(rel))}</figcaption></figure>')


def _status(held) -> str:
    """A verdict ("held", "within noise", "not held"; a bool is read as held / not held) as HTML."""
    if held is None:
        return '<span class="na">not measured</span>'
    if held is True or held == "held":
        return '<span class="held">held</span>'
    if held == "within noise":
        return '<span class="noise">within noise</span>'
    return '<span class="failed">not held</span>'


def _spread(c: dict) -> str:
    """'margin ± SE (n seeds)' of a claim's paired difference(s), or 'one run' when it has no seed spread."""
    sp = c.get("spread") or {}
    if not sp:
        return ""
    if "n" in sp and not isinstance(sp["n"], dict):
        if sp.get("margin") is None:
            return "one run, no seed spread"
        se = f" ± {sp['se']:.3g}" if sp.get("se") is not None else " (no spread)"
        return f"{sp['margin']:+.3g}{se} (n={sp['n']})"
    return "; ".join(f"{k}: {_spread({'spread': v})}" for k, v in sp.items() if isinstance(v, dict))


def write_report(path: Path, *, title: str, subtitle: str, claims: list[dict], base: Path,
                 stages: dict | None = None, extra: dict | None = None, stage_data: dict | None = None) -> Path:
    """Write the HTML report. Each claim: id, statement, measured (dict), test and threshold (how `held` was
    decided), held (a verdict string, a bool, or None), spread (margin, SE, n), figures (paths), note.
    `stage_data`: {stage: where it runs and why}. Ends with 'what did not reproduce here, and why'."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='sub'>{html.escape(subtitle)}</p>"]
    parts.append("<table><tr><th>claim</th><th>result</th><th>margin ± SE of the paired difference (seeds)</th>"
                 "<th>threshold</th><th>measured</th></tr>")
    for c in claims:
        meas = ", ".join(f"{k}={_fmt(_round(v))}" for k, v in (c.get("measured") or {}).items())
        parts.append(f"<tr><td><a href='#{c['id']}'>{html.escape(c['statement'])}</a></td>"
                     f"<td>{_status(c.get('held'))}</td><td>{html.escape(_spread(c))}</td>"
                     f"<td>{html.escape(json.dumps(c.get('threshold') or {}))}</td><td>{html.escape(meas)}</td></tr>")
    parts.append("</table>")
    for c in claims:
        parts.append(f"<section id='{c['id']}'><h2>{html.escape(c['statement'])}</h2>"
                     f"<p>{_status(c.get('held'))} &mdash; <code>{html.escape(c['id'])}</code></p>")
        if c.get("note"):
            parts.append(f"<p>{html.escape(c['note'])}</p>")
        for fig in c.get("figures", []):
            p = Path(fig)
            if p.exists():
                parts.append(_img(p, base))
        if c.get("test"):
            parts.append(f"<p>test: <code>{html.escape(c['test'])}</code>"
                         + (f" with <code>{html.escape(json.dumps(c['threshold']))}</code>" if c.get("threshold")
                            else "") + "</p>")
        if c.get("measured"):
            parts.append("<pre>" + html.escape(json.dumps(_round(c["measured"]), indent=1, default=str)) + "</pre>")
        parts.append("</section>")
    if stages:
        parts.append("<section><h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>seconds</th></tr>")
        for name, st in stages.items():
            parts.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(st.get('status')))}</td>"
                         f"<td>{st.get('seconds', 0):.1f}</td></tr>")
        parts.append("</table></section>")
    if stage_data:
        parts.append("<section id='where'><h2>Where each stage runs, and why</h2><table>"
                     "<tr><th>stage</th><th>data</th></tr>")
        parts += [f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in stage_data.items()]
        parts.append("</table></section>")
    if extra:
        parts.append("<section><h2>Setting</h2><pre>" + html.escape(json.dumps(extra, indent=1, default=str))
                     + "</pre></section>")
    missed = [c for c in claims if c.get("held") not in (True, "held")]
    parts.append("<section id='not-reproduced'><h2>What did not reproduce here, and why</h2>")
    if not missed:
        parts.append("<p>Every claim held beyond noise.</p>")
    for c in missed:
        meas = {k: v for k, v in (c.get("measured") or {}).items() if k not in ("diffs", "runs")}
        parts.append(f"<h3>{html.escape(c['statement'])}</h3><p>{_status(c.get('held'))} &mdash; "
                     f"<code>{html.escape(c['id'])}</code>; margin {html.escape(_spread(c) or 'n/a')}; test "
                     f"<code>{html.escape(c.get('test', ''))}</code></p>"
                     + (f"<p>why: {html.escape(c['note'])}</p>" if c.get("note") else "")
                     + ("" if c.get("held") is not None else
                        "<p>why: not measured: its stage did not run (see Stages) or its data was damaged.</p>")
                     + "<pre>" + html.escape(json.dumps(_round(meas), default=str)[:1500]) + "</pre>")
    parts.append("</section>")
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path


def _round(v, digits: int = 4):
    """Numbers to `digits` significant digits, recursively (the JSON summary keeps full precision)."""
    if isinstance(v, float):
        return float(f"{v:.{digits}g}")
    if isinstance(v, dict):
        return {k: _round(x, digits) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_round(x, digits) for x in v]
    return v


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) > 6:
        return f"[{len(v)} values]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def write_markdown(path: Path, *, title: str, subtitle: str, claims: list[dict]) -> Path:
    """The claims table as Markdown (summary.md beside report.html): claim, verdict, margin ± SE of the paired
    difference (n replicates) and, for every claim that did not hold, its note (why, with the numbers)."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", "", subtitle, "", "| claim | verdict | margin ± SE (n) |", "|---|---|---|"]
    for c in claims:
        verdict = c.get("held") or "not measured"
        lines.append(f"| `{c['id']}`: {cell(c['statement'])} | **{verdict}** | {cell(_spread(c))} |")
    missed = [c for c in claims if c.get("held") not in (True, "held")]
    lines += ["", "## What did not reproduce here, and why", ""]
    lines += [f"- `{c['id']}` ({c.get('held') or 'not measured'}): {cell(c.get('note') or 'no note')}"
              for c in missed] or ["Every claim held beyond noise."]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
