// sae-lightning dashboards: draws the plotly figures of a page from its JSON blocks, and
// makes tables.sortable sortable (click a header) and filterable (#filter). No network.
(function () {
  "use strict";

  function drawFigures() {
    var plots = document.querySelectorAll("div.plot[data-fig]");
    for (var i = 0; i < plots.length; i++) {
      var div = plots[i];
      var spec = JSON.parse(document.getElementById(div.getAttribute("data-fig")).textContent);
      if (window.Plotly) {
        Plotly.newPlot(div, spec.data, spec.layout, { displaylogo: false, responsive: true });
      }
    }
  }

  function cellKey(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent;
    if (!numeric) return raw.toLowerCase();
    return raw === "" ? NaN : parseFloat(raw);
  }

  function sortBy(table, th) {
    var col = th.cellIndex, numeric = th.getAttribute("data-type") === "num";
    var ascending = th.getAttribute("aria-sort") === "descending";
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (r) { return [cellKey(r, col, numeric), r]; });
    keyed.sort(function (a, b) {
      var x = a[0], y = b[0];
      if (numeric) {  // empty cells last whichever the direction
        if (isNaN(x)) return isNaN(y) ? 0 : 1;
        if (isNaN(y)) return -1;
      }
      var c = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? c : -c;
    });
    var frag = document.createDocumentFragment();
    keyed.forEach(function (k) { frag.appendChild(k[1]); });
    body.appendChild(frag);
  }

  function filterRows(table, input, counter) {
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var text = rows[i].textContent.toLowerCase();
      var keep = terms.every(function (t) { return text.indexOf(t) >= 0; });
      rows[i].hidden = !keep;
      if (keep) shown++;
    }
    if (counter) counter.textContent = shown + " of " + rows.length + " shown";
  }

  function setupTables() {
    var tables = document.querySelectorAll("table.sortable");
    Array.prototype.forEach.call(tables, function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
        th.addEventListener("click", function () { sortBy(table, th); });
      });
      var input = document.getElementById("filter");
      if (input) {
        var counter = document.getElementById("shown");
        input.addEventListener("input", function () { filterRows(table, input, counter); });
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupTables();
    drawFigures();
  });
})();
