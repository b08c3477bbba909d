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
      if (el.id === "attention-layer" && !el.dataset.wired) {
        el.dataset.wired = "1";
        el.on("plotly_click", function (ev) {
          var head = ev.points[0].customdata;
          if (head === undefined || head === null) return;
          window.location.href = el.dataset.headLink.replace(/([?&])head=\d+/, "$1head=" + head);
        });
      }
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
    if (document.getElementById("figure1")) {  // none for a reading of one run (the logit lens)
      htmx.ajax("GET", el.dataset.figure1 + "?" + params.toString(), { target: "#figure1", swap: "innerHTML" });
    }
    var strip = document.getElementById("cell-prompts");
    if (strip && strip.dataset.url) {  // the cell on each prompt, in the page's view (the URL carries _view)
      var stripUrl = new URL(strip.dataset.url, window.location.href);
      params.forEach(function (v, k) { stripUrl.searchParams.set(k, v); });
      htmx.ajax("GET", stripUrl.pathname + stripUrl.search, { target: "#cell-prompts", swap: "outerHTML" });
    }
    // the selection is view state: outline the cell and keep it in the address (_layer, _head, _pos)
    if (el.data && el.data[0].type === "heatmap") {
      var column = cell[2] !== null && cell[2] !== undefined ? cell[2] : cell[1];
      Plotly.relayout(el, { shapes: [{ type: "rect", xref: "x", yref: "y", x0: column - 0.5, x1: column + 0.5,
        y0: cell[0] - 0.5, y1: cell[0] + 0.5, line: { color: "#111", width: 3 }, name: "selected" }] });
    }
    var url = new URL(window.location.href);
    if (/^\/runs\/[0-9a-f]{16}$/.test(url.pathname)) {
      ["_layer", "_head", "_pos"].forEach(function (k) { url.searchParams.delete(k); });
      url.searchParams.set("_layer", cell[0]);
      if (cell[2] !== null && cell[2] !== undefined) url.searchParams.set("_head", cell[2]);
      if (cell[1] !== null && cell[1] !== undefined) url.searchParams.set("_pos", cell[1]);
      history.replaceState(history.state, "", url.pathname + "?" + url.searchParams.toString());
    }
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
    var reference = form.querySelector("[name=reference]");
    var referencePrompts = form.querySelector("[name=reference_prompts]");
    if (reference && referencePrompts) referencePrompts.readOnly = reference.value !== "own";
  }

  // Prompts are one line: Enter runs the experiment instead of breaking the line.
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && ev.target.matches && ev.target.matches("textarea.prompt")) {
      ev.preventDefault();
      var form = ev.target.closest("form");
      if (form) htmx.trigger(form, "submit");
    }
  });

  document.addEventListener("change", function (ev) {
    var form = ev.target.closest && ev.target.closest("#spec-form");
    if (!form) return;
    syncFormMode(form);
    // A choice (menu, box, radio) runs at once. A text field's change event is not a trigger: it fires
    // on blur, e.g. when Cancel is clicked, and would resubmit the job just cancelled.
    if (ev.target.matches("select, [type=checkbox], [type=radio]")) htmx.trigger(form, "choose");
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
    var copyText = ev.target.closest && ev.target.closest(".copy-text");
    if (copyText) {
      var source = document.getElementById(copyText.dataset.source);
      var label = copyText.textContent;
      var copied = function () { copyText.textContent = "Copied!"; setTimeout(function () { copyText.textContent = label; }, 1500); };
      if (source && navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(source.textContent).then(copied);
      } else if (source) {
        var range = document.createRange(); range.selectNodeContents(source);
        var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
        try { document.execCommand("copy"); copied(); } catch (e) { /* the text stays selected */ }
      }
    }
    var pair = ev.target.closest && ev.target.closest(".pair-ablate");
    if (pair) {
      // Paired ablation: the same experiment with this compensator, submitted from the form
      var form = document.getElementById("spec-form");
      var field = form && form.querySelector("[name=compensator]");
      if (field) {
        field.value = pair.dataset.compensator;
        htmx.trigger(form, "submit");
        var results = document.getElementById("results");
        if (results) results.scrollIntoView({ block: "start" });
      }
    }
    var png = ev.target.closest && ev.target.closest(".download-png");
    if (png) {
      var plot = document.getElementById(png.dataset.target);
      if (plot) downloadWithClaim(plot, png.dataset);
    }
  });

  function wrap(text, width) {
    var words = text.split(" "), lines = [], line = "";
    words.forEach(function (w) {
      if (line && (line + " " + w).length > width) { lines.push(line); line = w; } else { line = line ? line + " " + w : w; }
    });
    return lines.concat([line]).join("<br>");
  }

  // A PNG carries the claim: method, direction, component, metric and corruption as its title,
  // the evidence and caption below the plot.
  function downloadWithClaim(plot, meta) {
    var esc = function (t) { return t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); };
    var layout = JSON.parse(JSON.stringify(plot.layout));
    layout.title = { text: wrap(esc(meta.claim), 110) + "<br><span style='font-size:12px'>" + (layout.title && layout.title.text || "") + "</span>", font: { size: 13 } };
    layout.margin = Object.assign({}, layout.margin, { t: 130, b: 150 });
    layout.annotations = (layout.annotations || []).concat([{ text: wrap(esc(meta.caption), 140), xref: "paper", yref: "paper",
      x: 0, y: -0.32, xanchor: "left", yanchor: "top", showarrow: false, align: "left", font: { size: 11, color: "#444" } }]);
    Plotly.toImage({ data: plot.data, layout: layout }, { format: "png", width: 1100, height: 720 }).then(function (url) {
      var a = document.createElement("a"); a.href = url; a.download = meta.filename + ".png";
      document.body.appendChild(a); a.click(); a.remove();
    });
  }

  function selectShare() {
    var input = document.getElementById("share-link");
    if (input) { input.focus(); input.select(); }
  }

  // Each page load names itself to the server, which counts who is watching a job (watchers.py); an
  // edit tells it which job the page showed, so it can cancel that job if nobody else is watching.
  var PAGE = Date.now().toString(36) + Math.random().toString(36).slice(2, 12);
  document.addEventListener("htmx:configRequest", function (ev) {
    ev.detail.headers["X-Patchstudio-Page"] = PAGE;
    if (ev.detail.elt && ev.detail.elt.id === "spec-form") {
      var job = document.querySelector("#results #job[data-job-id]");
      if (job && (job.dataset.status === "queued" || job.dataset.status === "running")) {
        ev.detail.parameters["replaces"] = job.dataset.jobId;
      }
    }
  });

  htmx.onLoad(function (root) {
    drawPlots(root.querySelectorAll ? root : document);
    var form = document.getElementById("spec-form");
    if (form) syncFormMode(form);
  });
})();
