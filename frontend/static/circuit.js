// Patch Studio circuit view: draws a circuit result's graph as SVG from its data block (a JSON script
// element, as app.js reads its figures), with a top-k slider that redraws in the page without asking
// the server, and an SVG export that carries the claim. The server decides every number; this draws.
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var BLUE = "rgb(33,102,172)", RED = "rgb(178,24,43)", INK = "#222", FAINT = "#c8c8c8";
  var DASH = { q: "", k: "5 3", v: "1.5 2.5", mlp: "", logits: "" };

  function svg(name, attrs, parent) {
    var node = document.createElementNS(SVGNS, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function withName(base, name) {
    var url = new URL(base, window.location.href);
    url.searchParams.set("name", name);
    return url.pathname + url.search;
  }

  // Rows from the bottom: the input, then each layer's heads and its MLP, the logits on top.
  function place(data, width) {
    var nL = data.n_layers, nH = data.n_heads, rows = 2 * nL + 2;
    var rowH = width < 600 ? 34 : 46, top = 44, left = 34;
    var height = top + (rows - 1) * rowH + 28;
    var span = width - 2 * left, step = span / nH;
    var at = {};
    function y(row) { return height - 24 - row * rowH; }
    data.senders.forEach(function (s) {
      if (s.kind === "input") at[s.name] = { x: width / 2, y: y(0), kind: "input" };
      else if (s.kind === "head") at[s.name] = { x: left + (s.head + 0.5) * step, y: y(1 + 2 * s.layer), kind: "head" };
      else at[s.name] = { x: width / 2, y: y(2 + 2 * s.layer), kind: "mlp" };
    });
    at.logits = { x: width / 2, y: y(rows - 1), kind: "logits" };
    return { at: at, height: height, r: Math.max(3, Math.min(8, step / 4)), labels: step >= 42, rowH: rowH, width: width };
  }

  function receiverPoint(data, pos, rec) {
    var r = pos.r;
    if (rec.input === "mlp") { var m = pos.at["m" + rec.layer]; return { x: m.x, y: m.y + 8 }; }
    if (rec.input === "logits") { var l = pos.at.logits; return { x: l.x, y: l.y + 9 }; }
    var xs = rec.heads.map(function (h) { return pos.at["a" + rec.layer + ".h" + h].x; });
    var x = xs.reduce(function (a, b) { return a + b; }, 0) / xs.length;
    var y = pos.at["a" + rec.layer + ".h" + rec.heads[0]].y;
    return { x: x + { q: -0.8, k: 0, v: 0.8 }[rec.input] * r, y: y + r };
  }

  function draw(box) {
    var data = JSON.parse(document.getElementById(box.dataset.graph).textContent);
    var slider = document.getElementById("circuit-k");
    var k = slider ? Math.max(1, Math.min(+slider.value || data.k, data.edges.length)) : data.k;
    var width = Math.max(320, box.clientWidth || 640);
    var pos = place(data, width);
    var shown = data.edges.slice(0, k);
    var largest = shown.reduce(function (m, e) { return Math.max(m, Math.abs(e[2])); }, 0) || 1;
    var active = { input: true, logits: true };
    shown.forEach(function (e) { active[data.senders[e[0]].name] = true; active[data.receivers[e[1]].node] = true;
      data.receivers[e[1]].heads.forEach(function (h) { active["a" + data.receivers[e[1]].layer + ".h" + h] = true; }); });

    box.textContent = "";
    var root = svg("svg", { xmlns: SVGNS, width: width, height: pos.height, viewBox: "0 0 " + width + " " + pos.height,
      role: "img", "aria-label": "circuit graph: the top " + k + " of " + data.n_edges + " edges", "font-family": "sans-serif" }, box);
    root.id = "circuit-svg";
    [["top " + k + " of " + data.n_edges + " edges · estimated change in " + data.unit + ": blue raises, red lowers"],
     ["width: |change| · into a head: q solid, k dashed, v dotted"]].forEach(function (line, i) {
      svg("text", { x: 6, y: 13 + 13 * i, "font-size": 11, fill: "#555" }, root).textContent = line[0];
    });

    var nodes = svg("g", { "class": "nodes" });
    Object.keys(pos.at).forEach(function (name) {
      var p = pos.at[name], on = !!active[name];
      if (p.kind === "head" && !on) { svg("circle", { cx: p.x, cy: p.y, r: 2.5, fill: FAINT }, nodes); return; }
      var parent = nodes;
      if (p.kind === "head" || p.kind === "mlp") {
        parent = svg("a", { href: withName(data.node_url, name), "class": "node", "data-name": name }, nodes);
        svg("title", {}, parent).textContent = name + ": open its cell in the node heatmap";
      }
      if (p.kind === "head") {
        svg("circle", { cx: p.x, cy: p.y, r: pos.r, fill: "#fff", stroke: INK, "stroke-width": 1.5 }, parent);
      } else {
        var w = p.kind === "mlp" ? 26 : 44, h = p.kind === "mlp" ? 14 : 18;
        svg("rect", { x: p.x - w / 2, y: p.y - h / 2, width: w, height: h, rx: 3, fill: on ? "#fff" : "#f4f4f4",
          stroke: on ? INK : FAINT, "stroke-width": 1.2 }, parent);
      }
      if (on && (pos.labels || p.kind !== "head")) {
        var label = svg("text", { x: p.kind === "head" ? p.x + pos.r + 2 : p.x + (p.kind === "mlp" ? 16 : 26),
          y: p.y - (p.kind === "head" ? pos.r : 0) + 4, "font-size": 10, fill: INK,
          // a white halo: a label lies over the edges (attributes, not CSS, so the exported SVG keeps it)
          stroke: "#fff", "stroke-width": 3, "stroke-linejoin": "round", "paint-order": "stroke" }, parent);
        label.textContent = name;
      }
    });

    var edges = svg("g", { "class": "edges", fill: "none" }, root);
    shown.slice().reverse().forEach(function (e) {  // the largest drawn last, on top
      var sender = pos.at[data.senders[e[0]].name], rec = data.receivers[e[1]];
      var to = receiverPoint(data, pos, rec);
      var y0 = sender.y - (sender.kind === "head" ? pos.r : 8), mid = (y0 + to.y) / 2;
      // an edge up the middle column (input, MLPs, logits) bows out to one side, further the more rows it
      // spans, so it does not run through the nodes between its ends
      var bow = 0;
      if (Math.abs(to.x - sender.x) < 12 && y0 - to.y > pos.rowH * 1.5) {
        bow = (e[0] % 2 ? 1 : -1) * Math.min(pos.width * 0.3, 0.28 * (y0 - to.y));
      }
      var d = "M" + sender.x + " " + y0 + " C" + (sender.x + bow) + " " + mid + " " + (to.x + bow) + " " + mid + " " + to.x + " " + to.y;
      var link = svg("a", { href: withName(data.edge_url, e[4]), "class": "edge", "data-name": e[4] }, edges);
      var exact = e[3] === null ? "" : ", exact " + e[3].toFixed(4);
      svg("title", {}, link).textContent = e[4] + ": estimated change " + e[2].toFixed(4) + " " + data.unit + exact +
        " (click: its exact run)";
      svg("path", { d: d, stroke: "transparent", "stroke-width": 9 }, link);
      svg("path", { d: d, stroke: e[2] >= 0 ? BLUE : RED, "stroke-width": (0.6 + 4.4 * Math.abs(e[2]) / largest).toFixed(2),
        "stroke-dasharray": DASH[rec.input], "stroke-opacity": 0.85, "class": "edge-line" }, link);
    });
    root.appendChild(nodes);
  }

  function wrap(text, width) {
    var words = text.split(" "), lines = [], line = "";
    words.forEach(function (w) {
      if (line && (line + " " + w).length > width) { lines.push(line); line = w; } else { line = line ? line + " " + w : w; }
    });
    return lines.concat([line]);
  }

  // The exported SVG carries the claim above the graph and the caption below it.
  function exportSvg(button) {
    var source = document.querySelector("#" + button.dataset.target + " svg");
    if (!source) return;
    var copy = source.cloneNode(true), w = +source.getAttribute("width"), h = +source.getAttribute("height");
    var head = wrap(button.dataset.claim, Math.floor(w / 6.5)), foot = wrap(button.dataset.caption, Math.floor(w / 6));
    var top = 16 * head.length + 10, bottom = 15 * foot.length + 10;
    var out = svg("svg", { xmlns: SVGNS, width: w, height: h + top + bottom, viewBox: "0 0 " + w + " " + (h + top + bottom),
      "font-family": "sans-serif" });
    svg("rect", { x: 0, y: 0, width: w, height: h + top + bottom, fill: "#fff" }, out);
    head.forEach(function (line, i) { svg("text", { x: 6, y: 16 + 16 * i, "font-size": 12, "font-weight": "bold", fill: INK }, out).textContent = line; });
    var g = svg("g", { transform: "translate(0," + top + ")" }, out);
    while (copy.firstChild) g.appendChild(copy.firstChild);
    foot.forEach(function (line, i) { svg("text", { x: 6, y: top + h + 14 + 15 * i, "font-size": 11, fill: "#444" }, out).textContent = line; });
    var blob = new Blob([new XMLSerializer().serializeToString(out)], { type: "image/svg+xml" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = button.dataset.filename + ".svg";
    document.body.appendChild(a); a.click(); a.remove();
  }

  document.addEventListener("input", function (ev) {
    if (ev.target.id !== "circuit-k") return;
    var out = document.getElementById("circuit-k-value");
    if (out) out.textContent = ev.target.value;
    document.querySelectorAll("[data-graph]").forEach(draw);
  });
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest(".download-svg");
    if (button) exportSvg(button);
  });
  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () { document.querySelectorAll("[data-graph]").forEach(draw); }, 150);
  });
  htmx.onLoad(function (root) {
    (root.querySelectorAll ? root : document).querySelectorAll("[data-graph]").forEach(draw);
  });
})();
