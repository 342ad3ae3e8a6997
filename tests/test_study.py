"""The study pipeline end to end at tiny sizes: every stage runs, every claim is reported, resuming redoes nothing."""

import json
import re

from lowloss.claims import CLAIMS, collect_claims
from lowloss.study import STAGE_FILE, STAGES, Settings, mode_dirs, run_study

# every claim the claims table declares (each measuring function lists its ids and statements)
CLAIM_IDS = {i for fn in CLAIMS for i, _ in fn.claims}


def test_tiny_study_end_to_end_and_resume(tmp_path):
    out = tmp_path / "study"
    s = Settings(size="tiny", quiet=True, device="cpu", jobs=2)
    # an "interrupted" study: only the first stage finished (one stage at a time, in this process)
    run_study(out, Settings(size="tiny", quiet=True, device="cpu", jobs=1), only=["modes"])
    first = (out / "modes" / STAGE_FILE).read_text()
    summary = run_study(out, s)
    assert (out / "modes" / STAGE_FILE).read_text() == first  # not redone
    assert summary["stages"]["modes"]["status"] == "done (cached)"
    for st in STAGES:
        assert (out / st.name / STAGE_FILE).exists(), st.name
    on_disk = json.loads((out / "summary.json").read_text())
    assert {c["id"] for c in on_disk["claims"]} == CLAIM_IDS and len(CLAIM_IDS) >= 25
    for c in on_disk["claims"]:
        assert set(c) == {"id", "statement", "measured", "threshold", "test", "held", "spread", "note"}
        assert c["held"] in ("held", "within noise", "not held"), c  # every claim gets a verdict
        assert c["spread"].get("n") or all(v.get("n") for v in c["spread"].values()), c
        assert "error" not in c["measured"], (c["id"], c["measured"])
    assert set(on_disk["stage_seconds"]) == {st.name for st in STAGES}
    assert on_disk["seeds"] == [0, 1, 2] and "torch" in on_disk["versions"]
    assert on_disk["machine"]["stages_at_once"] == 2  # the rest ran two stages at a time, in worker processes

    md = (out / "summary.md").read_text()  # the claims table in Markdown, one row per claim
    assert all(f"`{i}`" in md for i in CLAIM_IDS) and "What did not reproduce here, and why" in md

    # the report embeds every figure the claims point to, and nothing is fetched from the network
    html = (out / "report.html").read_text()
    claims = collect_claims(out, mode_dirs(out, s))
    figures = [f for c in claims for f in c["figures"]]
    assert len(figures) >= 15
    for f in figures:
        rel = str(__import__("pathlib").Path(f).relative_to(out))
        assert f'data-file="{rel}"' in html, rel
    assert html.count("data:image/png;base64,") + html.count("data:image/gif;base64,") == len(figures)
    assert not re.search(r'src="https?://', html)

    # a third run finishes at once: every stage is cached
    again = run_study(out, s)
    assert all(v["status"] == "done (cached)" for v in again["stages"].values())
