"""The report page's inline style and script (no network: the page must work from ``file://``)."""

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
  background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px} h4{margin:10px 0 4px;font-size:14px}
.sub{color:#666} .cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:18px} .card span{color:#666;font-size:12px}
table{border-collapse:collapse;background:#fff;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #e2e2e2;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f0f0f0;cursor:pointer;user-select:none;position:sticky;top:0}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
tr.changed td.pass{font-weight:600} tr.nochange{color:#777}
.opts{color:#777;font-size:11px} .miss{color:#b35900} .ok{color:#2a7d2a} .bad{color:#b00020}
.where{color:#888;font-size:11px}
details{background:#fff;border:1px solid #e2e2e2;border-radius:6px;margin:6px 0;padding:4px 10px}
summary{cursor:pointer;font-weight:600} summary .sub{font-weight:400}
pre.diff{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;background:#fcfcfc;overflow:auto;
  max-height:480px;padding:6px;border:1px solid #eee}
.diff .add{background:#e6ffec;color:#116329;display:block}
.diff .del{background:#ffebe9;color:#82071e;display:block}
.diff .hunk{color:#0550ae;display:block} .diff .file{color:#666;display:block}
.sites{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.side{display:inline-block;vertical-align:top;margin-right:18px}
.side .lbl{font-size:12px;color:#666}
svg.graph rect{fill:#fff;stroke:#999} svg.graph .removed rect{fill:#ffd8d3;stroke:#c0392b}
svg.graph .added rect{fill:#d4f5dc;stroke:#1e8449}
svg.graph text{font:11px system-ui,sans-serif;text-anchor:middle} svg.graph .op{font-weight:600}
svg.graph .nm{fill:#666;font-size:9.5px} svg.graph .edge{stroke:#999;stroke-width:1.2}
svg.chart{background:#fff;border:1px solid #e2e2e2;border-radius:6px;margin:4px 8px 4px 0}
svg.chart .ct{font:600 13px system-ui,sans-serif} svg.chart .tick{font:10.5px system-ui,sans-serif}
svg.chart .ax{stroke:#999}
.charts{display:flex;flex-wrap:wrap;align-items:flex-start}
code{font:12px ui-monospace,Menlo,Consolas,monospace}
"""

SCRIPT = """
(function () {
  // click a header to sort its table (numbers by data-sort, else text)
  document.querySelectorAll("table.sortable th").forEach(function (th, col) {
    th.title = "click to sort";
    th.addEventListener("click", function () {
      var body = th.closest("table").tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === "asc" ? -1 : 1;
      th.dataset.dir = dir === 1 ? "asc" : "desc";
      function key(r) {
        var c = r.cells[col];
        var v = c.dataset.sort;
        return v !== undefined ? parseFloat(v) : c.textContent.trim();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        return (x > y ? 1 : x < y ? -1 : 0) * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.body.dataset.ready = "1";
})();
"""
