// Patch Studio front end: plots (plotly), live form behaviour, share and export buttons.
// The server renders everything; this file only draws figures and wires a few clicks.
(function () {
  "use strict";

  function readFigure(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  // Rewrap a title (plotly takes <br>) to lines of at most ``width`` characters.
  function rewrap(text, width) {
    return wrapLines(text.replace(/<br>/g, " "), Math.max(width, 12)).join("<br>");
  }

  // The server's figures are drawn for a wide column; in a narrow one (the 800 px layout) the
  // colour bar lies under the plot instead of beside it, and long axis titles are rewrapped to the
  // width there is, so the cells keep the room and no title is cut at the edge.
  function fitToWidth(el, fig) {
    var width = el.clientWidth || 600;
    var layout = fig.layout;
    ["xaxis", "yaxis"].forEach(function (name) {
      var axis = layout[name];
      if (axis && axis.title && axis.title.text) {
        var room = name === "xaxis" ? width - 120 : (layout.height || 400) - 80;
        axis.title.text = rewrap(axis.title.text, Math.floor(room / 7));
      }
    });
    if (width >= 560) return fig;
    fig.data.forEach(function (trace) {
      if (!trace.colorbar || trace.showscale === false) return;
      var title = trace.colorbar.title || {};
      trace.colorbar = Object.assign({}, trace.colorbar, { orientation: "h", x: 0.5, xanchor: "center", y: -0.18,
        yanchor: "top", len: 0.95, thickness: 10,
        title: { text: rewrap(title.text || "", Math.floor((width - 40) / 7)), side: "top" } });
      layout.height = (layout.height || 420) + 90;
      layout.margin = Object.assign({}, layout.margin, { r: 10, b: ((layout.margin || {}).b || 40) + 90 });
    });
    return fig;
  }

  function drawPlots(root) {
    root.querySelectorAll("[data-figure]").forEach(function (el) {
      var fig = readFigure(el.dataset.figure);
      if (!fig) return;
      fig = fitToWidth(el, fig);
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
      withCell(url, cell, true);
      history.replaceState(history.state, "", url.pathname + "?" + url.searchParams.toString());
    }
    keepSelection(cell);
  }

  // The selected cell is view state (_layer, _head, _pos): set it on a URL (``withPos`` false: keep
  // the URL's own _pos, a position link's).
  function withCell(url, cell, withPos) {
    ["_layer", "_head"].concat(withPos ? ["_pos"] : []).forEach(function (k) { url.searchParams.delete(k); });
    url.searchParams.set("_layer", cell[0]);
    if (cell[2] !== null && cell[2] !== undefined) url.searchParams.set("_head", cell[2]);
    if (withPos && cell[1] !== null && cell[1] !== undefined) url.searchParams.set("_pos", cell[1]);
    return url;
  }

  // After a click on a cell: the share link, and the links to other views, scales and positions,
  // carry the new selection (the server drew them with the one before).
  function keepSelection(cell) {
    var share = document.getElementById("share-link");
    var copy = document.querySelector(".copy-link");
    if (share && share.value) {
      share.value = withCell(new URL(share.value), cell, true).toString();
      if (copy) copy.dataset.link = share.value;
    }
    document.querySelectorAll("#views a.view, #scales a.view, .positions a.pos").forEach(function (a) {
      var own = new URL(a.getAttribute("href"), window.location.href);
      var link = withCell(own, cell, !a.classList.contains("pos"));
      var path = link.pathname + link.search;
      a.setAttribute("href", path);
      if (a.hasAttribute("hx-get")) { a.setAttribute("hx-get", path); htmx.process(a); }
    });
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

  // Choosing a file to upload is not an edit of the experiment: the upload posts it (hx-post on the
  // input), and its answer runs the form once the set's pairs are filled in (HX-Trigger-After-Settle).
  document.addEventListener("input", function (ev) {
    if (ev.target.matches && ev.target.matches("[type=file]")) ev.stopPropagation();
  }, true);

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

  function wrapLines(text, width) {
    var words = text.split(" "), lines = [], line = "";
    words.forEach(function (w) {
      if (line && (line + " " + w).length > width) { lines.push(line); line = w; } else { line = line ? line + " " + w : w; }
    });
    return lines.concat([line]);
  }

  // A PNG carries the whole claim (web/explore_page.png_caption): the claim line (method, direction,
  // component, metric, corruption) as its title, then the figure's own title, the evidence, the
  // ablation reference, the prompt count, the floor and the marked cells, and the run's id and link.
  // All of it sits in the top margin, sized to its lines, so nothing is cut by the axes below.
  function downloadWithClaim(plot, meta) {
    var esc = function (t) { return t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); };
    var caption = JSON.parse(meta.caption);
    var layout = JSON.parse(JSON.stringify(plot.layout));
    var claim = wrapLines(esc(caption.claim), 120);
    var own = (layout.title && layout.title.text) || "";
    var share = document.getElementById("share-link");  // the link as it is now (a click on a cell changes it)
    var lines = [];
    caption.lines.concat([caption.run + " · " + (share && share.value ? share.value : caption.link)])
      .forEach(function (line) { lines = lines.concat(wrapLines(esc(line), 150)); });
    var text = claim.join("<br>") + "<br>" + own + "<br>" +
      lines.map(function (l) { return "<span style='font-size:11px'>" + l + "</span>"; }).join("<br>");
    var ownLines = own ? own.split("<br>").length : 0;
    var top = 30 + 18 * claim.length + 17 * ownLines + 15 * lines.length;
    layout.title = { text: text, x: 0.01, xanchor: "left", y: 1, yref: "container", yanchor: "top", pad: { t: 10 },
      font: { size: 13 } };
    layout.margin = Object.assign({}, layout.margin, { t: top });
    layout.width = 1100;
    layout.height = top + (layout.height || 420);
    var figure = { data: plot.data, layout: layout };
    Plotly.toImage(figure, { format: "png", width: layout.width, height: layout.height }).then(function (url) {
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

  // A refused request (4xx, 5xx) that would replace the result shows its message above it instead:
  // the last result stays on screen, dimmed (app.css), on every error.
  document.addEventListener("htmx:beforeSwap", function (ev) {
    var d = ev.detail;
    if (!d.xhr || d.xhr.status < 400) return;
    var results = document.getElementById("results");
    var status = document.getElementById("result-status");
    if (!results || !status || !results.querySelector(".result")) return;
    if (d.target !== results && !results.contains(d.target)) return;
    d.target = status;
    d.swapOverride = "innerHTML";
    d.serverResponse += '<p class="muted if-result">The result below is the last one that ran.</p>';
  });

  // An estimate's follow-up (explore.html's #exact-follow-up) brings the exact result of that edit:
  // it may replace the estimate only while the estimate is on screen. Once a newer answer has been
  // swapped in, the follow-up's element is gone and its request is aborted, so its answer is never
  // drawn. (Its events cannot be caught later: an element removed from the page bubbles none.)
  var followUps = [];
  document.addEventListener("htmx:beforeRequest", function (ev) {
    var elt = ev.detail.elt;
    if (elt && elt.classList && elt.classList.contains("exact-follow-up")) followUps.push({ elt: elt, xhr: ev.detail.xhr });
  });
  document.addEventListener("htmx:afterSwap", function () {
    followUps = followUps.filter(function (f) {
      if (document.body.contains(f.elt)) return true;
      if (f.xhr.readyState !== 4) f.xhr.abort();
      return false;
    });
  });

  htmx.onLoad(function (root) {
    drawPlots(root.querySelectorAll ? root : document);
    var form = document.getElementById("spec-form");
    if (form) syncFormMode(form);
  });
})();
