"""The HTML compile report: what the instrument records, ``qgraph report``, a real browser."""

import json
import os
import re
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from qgraph.bundle import Bundle
from qgraph.cli import main
from qgraph.instruments.neighbourhood import changed_sites, snapshot
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from tests.conftest import small_model

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("QGRAPH_TEST_ARTIFACTS", ROOT / "test-artifacts"))


class Cells(HTMLParser):
    """The pipeline table's rows as {class: (text, attributes)} dicts, and the body's attrs."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.body: dict = {}
        self._in_pipeline = self._cell = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "table" and "pipeline" in (a.get("class") or ""):
            self._in_pipeline = True
        if self._in_pipeline and tag == "tr" and "data-pass" in a:
            self.rows.append({"_pass": a["data-pass"]})
        if self._in_pipeline and tag == "td" and self.rows:
            self._cell, self._text = a, []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_pipeline = False
        if tag == "td" and self._cell is not None:
            name = (self._cell.get("class") or "").split()[-1:] or [""]
            self.rows[-1][name[0]] = ("".join(self._text).strip(), self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._text.append(data)


def parse(html: str) -> Cells:
    cells = Cells()
    cells.feed(html)
    return cells


def total_nodes(bundle_dir: Path) -> int:
    bundle = Bundle.load(bundle_dir)
    return sum(sum(1 for _ in m.graph.all_nodes()) for m in bundle.components.values())


def test_neighbourhood_of_a_cse_merge():
    before_model = small_model()
    before = snapshot(before_model)
    bundle = Bundle(family="test")
    bundle.add_component("small", before_model)
    (cse,) = expand("cse", default_registry())
    cse(before_model)
    sites = changed_sites(before, snapshot(before_model))
    assert sites["count"] == 1
    (site,) = sites["sites"]
    ops = [op for op, _name, changed in site["before"]["nodes"] if changed]
    assert "MatMul" in ops and site["removed"] >= 1
    assert all(0 <= a < len(site["after"]["nodes"]) for a, _ in site["after"]["edges"])


def test_near_misses_say_where_they_happened(small_onnx, tmp_path, capsys):
    out, page = tmp_path / "out", tmp_path / "r.html"
    argv = ["compile", str(small_onnx), "-o", str(out), "--passes", "quantize-int4{roles=[q]}"]
    assert main([*argv, "--report", str(page), "--stats"]) == 0
    (entry,) = json.loads((out / "qgraph.json").read_text())["pipeline"]
    assert entry["stats"] == {"skipped:weight is not a constant": 2}  # Transpose(w): not folded
    sites = entry["where"]["skipped:weight is not a constant"]
    assert len(sites) == 2 and all(s.startswith("small: ") for s in sites)
    assert f"at {', '.join(sites)}" in capsys.readouterr().out
    assert escape(f"(at {', '.join(sites)})") in page.read_text()


def test_compile_report_and_qgraph_report_draw_the_same_page(small_onnx, tmp_path, capsys):
    out, page = tmp_path / "out", tmp_path / "r.html"
    code = main(
        [
            "compile",
            str(small_onnx),
            "-o",
            str(out),
            "--passes",
            "default",
            "--report",
            str(page),
            "--memory",
            "--verify-each",
        ]
    )
    assert code == 0 and f"wrote {page}" in capsys.readouterr().out
    history = json.loads((out / "qgraph.json").read_text())["pipeline"]
    first = history[0]["report"]
    assert first["input"]["components"]["small"]["nodes"] == 7
    assert first["input"]["manifest"]["files"]  # the input bundle's hashes
    cse = next(h for h in history if h["pass"] == "cse")
    assert cse["report"]["sites"]["small"]["count"] == 1
    assert cse["report"]["diff"]["small"]["lines"] > 0
    assert cse["report"]["verified"] == {"small": "ok"}

    html = page.read_text()
    rows = parse(html).rows
    assert [r["_pass"] for r in rows] == [h["pass"] for h in history]
    last = rows[-1]
    assert last["nodes"][1]["data-after"] == str(total_nodes(out))
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")

    again = tmp_path / "again.html"
    assert main(["report", str(out), "-o", str(again)]) == 0
    assert again.read_text() == html  # from the manifest alone


def test_report_of_a_bundle_compiled_without_report(small_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(small_onnx), "-o", str(out), "--passes", "hygiene"]) == 0
    assert main(["report", str(out)]) == 0
    page = tmp_path / "out-report.html"
    rows = parse(page.read_text()).rows
    assert len(rows) == 5 and rows[0]["nodes"][0] == "—"
    assert main(["report", str(tmp_path / "nothing")]) == 1
    assert "no qgraph.json" in capsys.readouterr().err


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


def run_browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    return subprocess.run(
        [binary, *flags, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_report_renders_in_headless_chromium(tiny_raw, tmp_path, capsys):
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's 'chromium')")
    out, page = tmp_path / "default", tmp_path / "report.html"
    argv = ["compile", str(tiny_raw), "-o", str(out), "--passes", "default", "--memory"]
    assert main([*argv, "--report", str(page), "-q"]) == 0
    url = page.resolve().as_uri()

    dom = run_browser(
        binary, tmp_path / "p1", "--enable-logging=stderr", "--v=0", "--dump-dom", url
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no script errors, no failed loads
    cells = parse(dom.stdout)
    assert cells.body.get("data-ready") == "1"  # the page's script ran
    history = json.loads((out / "qgraph.json").read_text())["pipeline"]
    assert len(cells.rows) == len(history) == len(expand("default", default_registry()))
    assert cells.rows[-1]["nodes"][1]["data-after"] == str(total_nodes(out))
    quant = next(r for r in cells.rows if r["_pass"] == "quantize-int4")
    assert "quantized = 18" in quant["stats"][0] and quant["modified"][0] == "yes"
    assert all(r["peak"][0].endswith("B") for r in cells.rows)
    assert re.search(r"<svg[^>]*class=\"graph\"", dom.stdout)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-tiny-default.png"
    shot.unlink(missing_ok=True)
    res = run_browser(
        binary, tmp_path / "p2", "--window-size=1400,2600", f"--screenshot={shot}", url
    )
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]
    shutil.copy(page, ARTIFACTS / "report-tiny-default.html")
