// Patch Studio front end: plots (plotly), live form behaviour, share and export buttons.
// The server renders everything; this file only draws figures and wires a few clicks.
(function () {
  "use strict";

  function readFigure(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function drawPlots(root) {
    root.querySelectorAll("[data-figure]").forEach(function (el) {
      var fig = readFigure(el.dataset.figure);
      if (!fig) return;
      Plotly.react(el, fig.data, fig.layout, { responsive: true, displaylogo: false });
      if (el.id === "heatmap" && !el.dataset.wired) {
        el.dataset.wired = "1";
        el.on("plotly_click", function (ev) { selectCell(el, ev.points[0]); });
      }
    });
  }

  function selectCell(el, point) {
    var cell = point.customdata;
    if (!cell) return;
    var params = new URLSearchParams();
    params.set("layer", cell[0]);
    if (cell[1] !== null && cell[1] !== undefined) params.set("pos", cell[1]);
    if (cell[2] !== null && cell[2] !== undefined) params.set("head", cell[2]);
    el.dataset.selected = cell.join(",");
    htmx.ajax("GET", el.dataset.figure1 + "?" + params.toString(), { target: "#figure1", swap: "innerHTML" });
  }

  function syncFormMode(form) {
    var method = form.querySelector("[name=method]");
    var source = form.querySelector("[name=source]:checked");
    form.dataset.method = method ? method.value : "";
    form.dataset.source = source ? source.value : "pair";
    // each method's fields come from the method registry (data-methods), never from CSS
    form.querySelectorAll("[data-methods]").forEach(function (field) {
      field.hidden = field.dataset.methods.split(" ").indexOf(form.dataset.method) < 0;
    });
    var corruption = form.querySelector("[name=corruption]");
    var corrupted = form.querySelector("[name=corrupted]");
    if (corruption && corrupted) corrupted.readOnly = corruption.value !== "custom";
    var auto = form.querySelector("[name=auto_answers]");
    ["answer", "wrong"].forEach(function (name) {
      var input = form.querySelector("[name=" + name + "]");
      if (input && auto) input.readOnly = auto.checked;
    });
    var family = form.querySelector("[name=family]");
    var pairs = form.querySelector("[name=pairs_text]");
    if (family && pairs) pairs.readOnly = family.value !== "custom";
  }

  document.addEventListener("change", function (ev) {
    var form = ev.target.closest && ev.target.closest("#spec-form");
    if (form) syncFormMode(form);
  });

  document.addEventListener("click", function (ev) {
    var copy = ev.target.closest && ev.target.closest(".copy-link");
    if (copy) {
      var link = copy.dataset.link;
      var done = function () { copy.textContent = "Copied!"; setTimeout(function () { copy.textContent = "Copy link"; }, 1500); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(link).then(done, function () { selectShare(); });
      } else {
        selectShare();
        try { document.execCommand("copy"); done(); } catch (e) { /* the link stays selected for the user */ }
      }
    }
    var png = ev.target.closest && ev.target.closest(".download-png");
    if (png) {
      var plot = document.getElementById(png.dataset.target);
      if (plot) Plotly.downloadImage(plot, { format: "png", filename: png.dataset.filename, width: 900, height: 500 });
    }
  });

  function selectShare() {
    var input = document.getElementById("share-link");
    if (input) { input.focus(); input.select(); }
  }

  htmx.onLoad(function (root) {
    drawPlots(root.querySelectorAll ? root : document);
    var form = document.getElementById("spec-form");
    if (form) syncFormMode(form);
  });
})();
