"""The study's report.html in a real browser (headless Chromium): the page loads, every figure decodes and has
a size, nothing is logged to the console as an error, and a screenshot is written beside the report.

Chromium comes from Debian's `chromium` package (``bash scripts/setup.sh --test`` installs it when it can);
without it the test is skipped, saying so."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _chromium() -> str | None:
    env = os.environ.get("LOWLOSS_CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (install Debian's `chromium` package, "
                                "e.g. with `bash scripts/setup.sh --test` as root, or set LOWLOSS_CHROMIUM)")

# injected first into a copy of the page: records console errors and uncaught exceptions before the page's own
# content runs, then (after load) every image's decoded size, into a <pre> that --dump-dom prints
PROBE = """<script>
window.__errors = [];
const __error = console.error.bind(console);
console.error = (...a) => { window.__errors.push(a.map(String).join(' ')); __error(...a); };
window.addEventListener('error', e => window.__errors.push('uncaught: ' + (e.message || e.type)), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images).map(i => ({file: i.dataset.file || i.alt, complete: i.complete,
      w: i.naturalWidth, h: i.naturalHeight, shown_w: i.width, shown_h: i.height}));
  const pre = document.createElement('pre');
  pre.id = 'lowloss-probe';
  pre.textContent = JSON.stringify({images: imgs, errors: window.__errors, title: document.title,
                                    sections: document.querySelectorAll('section').length});
  document.body.appendChild(pre);
});
</script>"""


def _chrome(*args, timeout=120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--enable-logging=stderr",
           "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _tiny_report(tmp_path: Path) -> Path:
    """A report through lowloss.report.write_report: three claims, real PNG figures drawn by matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowloss.report import write_report

    figs = []
    for i, kind in enumerate(("line", "contour", "bars")):
        fig, ax = plt.subplots(figsize=(3 + i, 2.5))
        if kind == "line":
            ax.plot([0, 1, 2], [1, 0.3, 0.8])
        elif kind == "contour":
            import numpy as np

            x, y = np.meshgrid(np.linspace(-1, 1, 20), np.linspace(-1, 1, 20))
            ax.contourf(x, y, x**2 + y**2)
        else:
            ax.bar(["a", "b"], [3, 5])
        path = tmp_path / "study" / "fig" / f"{kind}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=60)
        plt.close(fig)
        figs.append(path)
    claims = [
        {"id": "curve_barrier", "statement": "A curve <connects> two modes & keeps low loss", "held": True,
         "measured": {"barrier": 0.01234567, "line": [0.1] * 9}, "test": "barrier < t", "threshold": {"t": 0.1},
         "figures": [figs[0], figs[1]], "note": "tiny: numbers meaningless"},
        {"id": "swag_calibrated", "statement": "SWAG is calibrated", "held": False,
         "measured": {"ece": 0.2}, "test": "ece < t", "threshold": {"t": 0.05}, "figures": [figs[2]]},
        {"id": "not_run", "statement": "A claim whose stage did not run", "held": None, "measured": {}},
    ]
    out = tmp_path / "study" / "report.html"
    write_report(out, title="lowloss study (tiny)", subtitle="digits / convnet", claims=claims,
                 base=tmp_path / "study", stages={"modes": {"status": "done", "seconds": 1.5}},
                 extra={"size": "tiny"})
    return out


def test_report_loads_in_chromium_with_every_figure_decoded(tmp_path):
    report = _tiny_report(tmp_path)
    page = report.read_text()
    n_figures = page.count("<img ")
    assert n_figures == 3

    harness = report.with_name("report.probe.html")  # the page itself, with the probe injected first
    harness.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    res = _chrome("--virtual-time-budget=10000", "--dump-dom", harness.as_uri())
    m = re.search(r'<pre id="lowloss-probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"the page did not finish loading in Chromium (rc {res.returncode}): {res.stderr[-2000:]}"
    import html

    probe = json.loads(html.unescape(m.group(1)))
    assert probe["title"] == "lowloss study (tiny)" and probe["sections"] >= 3
    assert len(probe["images"]) == n_figures
    for img in probe["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img  # decoded, with a natural size
        assert img["shown_w"] > 0 and img["shown_h"] > 0, img  # and laid out with a size on the page
    assert probe["errors"] == []
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln and ("error" in ln.lower()
                                                                             or "uncaught" in ln.lower())]
    assert console == [], console

    # a screenshot of the real page, beside the report
    shot = report.with_name("report.png")
    res = _chrome(f"--screenshot={shot}", "--window-size=1200,2400", "--virtual-time-budget=5000", report.as_uri())
    assert shot.exists() and shot.stat().st_size > 1000, res.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 2400)
        colours = im.convert("RGB").resize((60, 120)).getcolors(maxcolors=100000)
        assert colours is not None and len(colours) > 5  # not a blank page


def test_a_broken_figure_is_caught(tmp_path):
    """The probe itself: a figure whose data is not a PNG does not decode, and the check sees it."""
    report = _tiny_report(tmp_path)
    page = report.read_text()
    start = page.index("base64,") + len("base64,")
    broken = page[:start] + "bm90IGEgcG5n" + page[page.index('"', start):]  # "not a png"
    harness = report.with_name("broken.probe.html")
    harness.write_text(broken.replace("<head>", "<head>" + PROBE, 1))
    res = _chrome("--virtual-time-budget=10000", "--dump-dom", harness.as_uri())
    import html

    probe = json.loads(html.unescape(re.search(r'<pre id="lowloss-probe">(.*?)</pre>', res.stdout, re.S).group(1)))
    assert sum(1 for i in probe["images"] if i["w"] == 0) == 1
