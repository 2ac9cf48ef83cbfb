/* kzbridge report: draws the data block (kzbridge/kazoo/report_html.py) with DOM and Canvas.
   Every piece of text from the node goes through textContent or canvas fillText: never markup. */
"use strict";
(function () {
  var LEVEL_COLOURS = { debug: "#9aa5b1", info: "#3b82f6", notice: "#14b8a6", warning: "#f59e0b",
    error: "#ef4444", critical: "#b91c1c", alert: "#7f1d1d", emergency: "#581c87" };
  var NODE_COLOURS = ["#3b82f6", "#14b8a6", "#8b5cf6", "#f97316", "#64748b", "#0ea5e9", "#84cc16", "#ec4899"];
  var MAX_LANES = 30, ROW_H = 18, CALL_H = 18;
  var $ = function (id) { return document.getElementById(id); };
  var D, N, T, NODE, LEVEL, MODULE, PID, CALLID, LINE, NLINES;
  var texts = [], lower = [], starts = [], lineEvent = [];
  var WARN = -1, ERR = -1;
  var state = { text: "", node: -1, module: -1, callid: "", levels: null, lane: "node",
    v0: 0, v1: 1, ranged: false, sort: "first", desc: false, call: -1 };
  var sel = null;
  var lists = {};

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function status(text) { $("status").textContent = text; }

  function fromBase64(b64) {
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(b64);  // Chrome 140+, Firefox 133+, Safari 18.2+
    var bin = atob(b64), n = bin.length, u = new Uint8Array(n);
    for (var i = 0; i < n; i++) u[i] = bin.charCodeAt(i);
    return u;
  }
  async function inflate(b64) {
    var u = fromBase64(b64);
    var stream = new Blob([u]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  var TYPES = { f64: Float64Array, u8: Uint8Array, u16: Uint16Array, u32: Uint32Array };
  async function column(spec) {
    var bytes = await inflate(spec[1]);
    var Type = TYPES[spec[0]];
    return new Type(bytes.buffer, bytes.byteOffset, bytes.byteLength / Type.BYTES_PER_ELEMENT);
  }

  function iso(rel) { return new Date(Math.round((D.t0 + rel) * 1000)).toISOString(); }
  function clock(rel) { return iso(rel).slice(11, 23); }
  function seconds(s) { return s.toFixed(3) + " s"; }

  // What a row shows of a record: newlines as a visible mark, control characters escaped.
  var CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
  function shown(text) {
    return text.replace(CONTROL, function (c) {
      var h = c.charCodeAt(0).toString(16);
      return c.charCodeAt(0) > 255 ? "\\u" + ("000" + h).slice(-4) : "\\x" + ("0" + h).slice(-2);
    }).replace(/\t/g, "\\t").replace(/\n/g, " \u23ce ");
  }
  function recordText(i) {
    var nd = NODE[i], s = starts[nd], a = LINE[i], b = a + NLINES[i];
    var end = b < s.length ? s[b] - 1 : texts[nd].length;
    if (b >= s.length && texts[nd].charCodeAt(end - 1) === 10) end--;  // the file's final newline
    return texts[nd].slice(s[a], end);
  }

  function lineStarts(text) {
    var out = [0], p = text.indexOf("\n");
    while (p !== -1) { out.push(p + 1); p = text.indexOf("\n", p + 1); }
    if (out[out.length - 1] === text.length) out.pop();
    return Float64Array.from(out);
  }
  function lineOf(s, pos) {
    var lo = 0, hi = s.length - 1;
    while (lo < hi) { var mid = (lo + hi + 1) >> 1; if (s[mid] <= pos) lo = mid; else hi = mid - 1; }
    return lo;
  }

  // ------------------------------------------------------------------ filters

  function textHits(q) {
    var hit = new Uint8Array(N);
    q = q.toLowerCase();
    for (var nd = 0; nd < texts.length; nd++) {
      if (!lower[nd]) lower[nd] = texts[nd].toLowerCase();
      var low = lower[nd], s = starts[nd], map = lineEvent[nd];
      var p = low.indexOf(q);
      while (p !== -1) {
        var ln = lineOf(s, p), ev = map[ln];
        if (ev >= 0) hit[ev] = 1;
        var next = ln + 1 < s.length ? s[ln + 1] : low.length;
        p = low.indexOf(q, Math.max(next, p + 1));
      }
    }
    return hit;
  }

  function compute() {
    var t0 = performance.now();
    var hit = state.text ? textHits(state.text) : null;
    var cids = null;
    if (state.callid) {
      var q = state.callid.toLowerCase();
      cids = new Uint8Array(D.callids.length);
      for (var c = 1; c < D.callids.length; c++) if (D.callids[c].toLowerCase().indexOf(q) !== -1) cids[c] = 1;
    }
    var levels = state.levels, out = new Uint32Array(N), k = 0;
    var lo = state.ranged ? state.v0 : -Infinity, hiT = state.ranged ? state.v1 : Infinity;
    for (var i = 0; i < N; i++) {
      if (!levels[LEVEL[i]]) continue;
      if (state.node >= 0 && NODE[i] !== state.node) continue;
      if (state.module >= 0 && MODULE[i] !== state.module) continue;
      if (cids && !cids[CALLID[i]]) continue;
      if (hit && !hit[i]) continue;
      var t = T[i];
      if (t < lo || t > hiT) continue;
      out[k++] = i;
    }
    sel = out.subarray(0, k);
    render();
    status(k === N && !state.ranged ? "" : "selected " + k + " of " + N + " events (" + Math.round(performance.now() - t0) + " ms)");
  }

  // ------------------------------------------------------------------ views

  function render() {
    renderStats();
    drawTimeline();
    drawRate();
    renderCalls();
    lists.lines.set(sel);
    $("lines-count").textContent = "(" + sel.length + ")";
    var r = $("range");
    r.dataset.v0 = String(state.v0);  // the range shown, in seconds from the first event (D.t0)
    r.dataset.v1 = String(state.v1);
    r.textContent = state.ranged ? "range " + clock(state.v0) + " to " + clock(state.v1) + " (" + seconds(state.v1 - state.v0) + ")" : "";
  }

  function renderStats() {
    var counts = new Array(D.levels.length).fill(0), first = Infinity, last = -Infinity, nodes = new Uint8Array(D.nodes.length);
    for (var j = 0; j < sel.length; j++) {
      var i = sel[j], t = T[i];
      counts[LEVEL[i]]++;
      if (t < first) first = t;
      if (t > last) last = t;
      nodes[NODE[i]] = 1;
    }
    $("stat-events").textContent = String(sel.length);
    $("stat-total").textContent = String(N);
    var span = sel.length ? last - first : 0;
    $("stat-span").textContent = seconds(span);
    $("stat-first").textContent = sel.length ? iso(first) : "-";
    $("stat-last").textContent = sel.length ? iso(last) : "-";
    $("stat-nodes").textContent = String(nodes.reduce(function (a, b) { return a + b; }, 0));
    var box = $("level-counts");
    box.textContent = "";
    D.levels.forEach(function (name, lv) {
      if (!present[lv]) return;
      var s = el("span", name + " ", "lv-" + name);
      var b = el("b", String(counts[lv]));
      b.id = "lv-count-" + name;
      s.appendChild(b);
      box.appendChild(s);
    });
  }

  var present = [];
  var lanes = { key: null, index: null, names: [] };

  function laneSetup() {
    var col = state.lane === "node" ? NODE : state.lane === "module" ? MODULE : PID;
    var names = state.lane === "node" ? D.labels : state.lane === "module" ? D.modules : D.pids;
    var counts = new Float64Array(names.length);
    for (var i = 0; i < N; i++) counts[col[i]]++;
    var order = [];
    for (var v = 0; v < names.length; v++) if (counts[v] > 0) order.push(v);
    if (state.lane !== "node") order.sort(function (a, b) {  // busiest first, then by name
      var x = names[a] || "Undefined", y = names[b] || "Undefined";
      return counts[b] - counts[a] || (x < y ? -1 : x > y ? 1 : 0);
    });
    var index = new Int32Array(names.length).fill(-1), shownNames = [];
    order.forEach(function (v, k) {
      if (k < MAX_LANES) { index[v] = k; shownNames.push(names[v] || "Undefined"); }
      else index[v] = MAX_LANES;
    });
    if (order.length > MAX_LANES) shownNames.push("(" + (order.length - MAX_LANES) + " others)");
    lanes = { key: col, index: index, names: shownNames };
    $("timeline").dataset.lanes = JSON.stringify(shownNames);  // an attribute's text: for tests and tools
  }

  function canvasSize(cv, height) {
    var ratio = window.devicePixelRatio || 1, w = cv.parentElement.clientWidth - 2;
    cv.style.height = height + "px";
    cv.width = Math.max(100, Math.floor(w * ratio));
    cv.height = Math.floor(height * ratio);
    var ctx = cv.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return { ctx: ctx, w: w, h: height };
  }
  var LEFT = 110;

  function axis(ctx, w, y) {
    var span = state.v1 - state.v0, steps = [0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400];
    var step = steps[steps.length - 1];
    for (var s = 0; s < steps.length; s++) if (span / steps[s] <= (w - LEFT) / 90) { step = steps[s]; break; }
    ctx.fillStyle = "#52606d";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    var abs0 = D.t0 + state.v0, first = Math.ceil(abs0 / step) * step;
    for (var a = first; a <= D.t0 + state.v1; a += step) {
      var x = LEFT + (a - D.t0 - state.v0) / span * (w - LEFT);
      ctx.fillRect(x, y, 1, 4);
      ctx.fillText(new Date(Math.round(a * 1000)).toISOString().slice(11, step < 1 ? 23 : 19), x + 2, y + 3);
    }
  }

  function drawTimeline() {
    var lh = 16, names = lanes.names, height = names.length * lh + 20;
    var c = canvasSize($("timeline"), height), ctx = c.ctx, W = Math.max(1, Math.floor(c.w - LEFT));
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.w, c.h);
    var worst = new Int16Array(names.length * W).fill(-1);
    var span = state.v1 - state.v0, key = lanes.key, index = lanes.index;
    for (var j = 0; j < sel.length; j++) {
      var i = sel[j], x = Math.floor((T[i] - state.v0) / span * W);
      if (x < 0 || x >= W) { if (x === W) x = W - 1; else continue; }
      var cell = index[key[i]] * W + x;
      if (LEVEL[i] > worst[cell]) worst[cell] = LEVEL[i];
    }
    for (var ln = 0; ln < names.length; ln++) {
      ctx.fillStyle = ln % 2 ? "#f8fafc" : "#fff";
      ctx.fillRect(0, ln * lh, c.w, lh);
      ctx.fillStyle = "#323f4b";
      ctx.font = "11px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      ctx.fillText(names[ln].length > 17 ? names[ln].slice(0, 16) + "\u2026" : names[ln], 4, ln * lh + lh / 2);
      for (var px = 0; px < W; px++) {
        var lv = worst[ln * W + px];
        if (lv < 0) continue;
        ctx.fillStyle = LEVEL_COLOURS[D.levels[lv]] || "#111";
        var tall = lv >= WARN && WARN >= 0;
        ctx.fillRect(LEFT + px, ln * lh + (tall ? 1 : 3), 2, tall ? lh - 2 : lh - 6);
      }
    }
    axis(ctx, c.w, names.length * lh + 2);
  }

  var rateBins = null;
  function drawRate() {
    var c = canvasSize($("rate"), 110), ctx = c.ctx, W = c.w - LEFT, bins = Math.max(10, Math.min(400, Math.floor(W / 3)));
    var nn = D.nodes.length, counts = new Float64Array(bins * nn), warn = new Float64Array(bins), err = new Float64Array(bins);
    var span = state.v1 - state.v0;
    for (var j = 0; j < sel.length; j++) {
      var i = sel[j], b = Math.floor((T[i] - state.v0) / span * bins);
      if (b === bins) b = bins - 1;
      if (b < 0 || b >= bins) continue;
      counts[b * nn + NODE[i]]++;
      if (LEVEL[i] === WARN) warn[b]++;
      else if (ERR >= 0 && LEVEL[i] >= ERR) err[b]++;
    }
    var top = 1, totalWarn = 0, totalErr = 0;
    for (var b2 = 0; b2 < bins; b2++) {
      var sum = 0;
      for (var n2 = 0; n2 < nn; n2++) sum += counts[b2 * nn + n2];
      if (sum > top) top = sum;
      totalWarn += warn[b2]; totalErr += err[b2];
    }
    rateBins = { bins: bins, counts: counts, warn: warn, err: err, width: span / bins };
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.w, c.h);
    var plotH = c.h - 30, bw = W / bins, perSecond = span / bins > 0 ? 1 / (span / bins) : 0;
    ctx.fillStyle = "#323f4b"; ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "top";
    ctx.fillText("events/s", 4, 10);
    ctx.fillText("peak " + (top * perSecond).toFixed(top * perSecond < 10 ? 1 : 0), 4, 26);
    for (var b3 = 0; b3 < bins; b3++) {
      var y = 10 + plotH;
      for (var n3 = 0; n3 < nn; n3++) {
        var v = counts[b3 * nn + n3];
        if (!v) continue;
        var h = v / top * plotH;
        ctx.fillStyle = NODE_COLOURS[n3 % NODE_COLOURS.length];
        ctx.fillRect(LEFT + b3 * bw, y - h, Math.max(1, bw - 0.5), h);
        y -= h;
      }
      if (warn[b3] || err[b3]) {
        ctx.fillStyle = err[b3] ? LEVEL_COLOURS.error : LEVEL_COLOURS.warning;
        ctx.beginPath();
        var cx = LEFT + (b3 + 0.5) * bw;
        ctx.moveTo(cx - 4, 0); ctx.lineTo(cx + 4, 0); ctx.lineTo(cx, 8); ctx.fill();
      }
    }
    axis(ctx, c.w, 10 + plotH + 2);
    var legend = $("rate-legend");
    legend.textContent = "";
    D.labels.forEach(function (name, k) {
      var s = el("span", "\u25a0 " + name);
      s.style.color = NODE_COLOURS[k % NODE_COLOURS.length];
      legend.appendChild(s);
    });
    var w = el("span", "\u25bc warnings " + totalWarn); w.style.color = "#b45309"; w.id = "rate-warnings";
    var e = el("span", "\u25bc errors " + totalErr); e.style.color = "#dc2626"; e.id = "rate-errors";
    legend.appendChild(w); legend.appendChild(e);
  }

  // The calls: one row per callid (callRows, sorted); the table holds only the rows in view.
  var callRows = [];
  function renderCalls() {
    var nc = D.callids.length, first = new Float64Array(nc).fill(Infinity), last = new Float64Array(nc).fill(-Infinity);
    var events = new Uint32Array(nc), worst = new Int16Array(nc).fill(-1), nodes = [];
    for (var j = 0; j < sel.length; j++) {
      var i = sel[j], c = CALLID[i];
      if (!c) continue;
      var t = T[i];
      if (t < first[c]) first[c] = t;
      if (t > last[c]) last[c] = t;
      events[c]++;
      if (LEVEL[i] > worst[c]) worst[c] = LEVEL[i];
      var set = nodes[c] || (nodes[c] = {});
      set[NODE[i]] = 1;
    }
    var rows = [];
    for (var c2 = 1; c2 < nc; c2++) if (events[c2]) {
      var ns = Object.keys(nodes[c2]).map(Number).sort(function (a, b) { return a - b; });
      rows.push({ c: c2, callid: D.callids[c2], first: first[c2], last: last[c2], duration: last[c2] - first[c2],
        nodes: ns, events: events[c2], worst: worst[c2] });
    }
    $("stat-calls").textContent = String(rows.length);
    $("calls-note").textContent = "(" + rows.length + ")";
    callRows = rows;
    sortCalls();
  }

  function sortCalls() {
    var key = state.sort, sign = state.desc ? -1 : 1;
    callRows.sort(function (a, b) {
      var x = key === "nodes" ? a.nodes.length : a[key], y = key === "nodes" ? b.nodes.length : b[key];
      return (x < y ? -1 : x > y ? 1 : a.first - b.first) * sign;
    });
    lists.calls.reset();
  }

  // A table body that holds only the rows in view, between a top and a bottom spacer row: every row
  // is CALL_H pixels high (report.css: #calls tbody td); past ~440k calls the scroll position maps
  // proportionally (as in VList), so the body stays under MAX_H pixels.
  function CallTable(box, table) {
    var body = table.tBodies[0], MAX_H = 8e6, pool = [], pending = false;
    var topPad = el("tr", null, "pad"), bottomPad = el("tr", null, "pad");
    var topCell = el("td"), bottomCell = el("td");
    topCell.colSpan = bottomCell.colSpan = 7;
    topPad.appendChild(topCell); bottomPad.appendChild(bottomCell);
    body.textContent = "";
    body.appendChild(topPad); body.appendChild(bottomPad);
    function draw() {
      pending = false;
      var n = callRows.length, head = table.tHead.offsetHeight, viewH = Math.max(0, box.clientHeight - head);
      var rows = Math.min(n, Math.ceil(viewH / CALL_H) + 1), top = box.scrollTop, full = n * CALL_H, firstRow, pad;
      if (full <= MAX_H) {
        firstRow = Math.floor(top / CALL_H);
      } else {
        full = MAX_H;
        firstRow = Math.round(top / Math.max(1, head + MAX_H - box.clientHeight) * (n - rows));
      }
      firstRow = Math.max(0, Math.min(firstRow, n - rows));
      pad = full === MAX_H ? Math.min(top, MAX_H - rows * CALL_H) : firstRow * CALL_H;
      while (pool.length < rows) {
        var tr = document.createElement("tr");
        for (var k = 0; k < 7; k++) tr.appendChild(el("td"));
        tr.cells[6].className = "lv";
        pool.push(tr);
      }
      while (body.rows.length - 2 > rows) body.removeChild(body.rows[body.rows.length - 2]);
      for (var r = 0; r < rows; r++) {
        var row = callRows[firstRow + r], tr2 = pool[r], cells = tr2.cells, lv = D.levels[row.worst];
        if (tr2.parentNode !== body) body.insertBefore(tr2, bottomPad);
        tr2.dataset.callid = String(row.c);
        tr2.dataset.row = String(firstRow + r);
        tr2.className = row.c === state.call ? "sel" : "";
        cells[0].textContent = row.callid;
        cells[0].title = row.callid;
        cells[1].textContent = clock(row.first);
        cells[2].textContent = clock(row.last);
        cells[3].textContent = seconds(row.duration);
        cells[4].textContent = row.nodes.map(function (k) { return D.labels[k]; }).join(", ");
        cells[5].textContent = String(row.events);
        cells[6].textContent = lv;
        cells[6].className = "lv lv-" + lv;
      }
      topCell.style.height = pad + "px";
      bottomCell.style.height = Math.max(0, full - pad - rows * CALL_H) + "px";
      topPad.hidden = pad === 0;
      bottomPad.hidden = full - pad - rows * CALL_H <= 0;
    }
    box.addEventListener("scroll", function () {
      if (pending) return;
      pending = true;
      requestAnimationFrame(draw);
    });
    return {
      reset: function () { box.scrollTop = 0; draw(); },
      draw: draw
    };
  }

  function showCall(c) {
    state.call = c;
    var out = [];
    for (var i = 0; i < N; i++) if (CALLID[i] === c) out.push(i);
    $("call-title").textContent = D.callids[c];
    $("call-count").textContent = "(" + out.length + " events)";
    lists.call.set(Uint32Array.from(out));
    lists.calls.draw();
  }

  // A list that renders only the rows in view; past ~500k rows the scroll position maps proportionally.
  function VList(box) {
    var spacer = el("div", null, "spacer"), pool = [], items = new Uint32Array(0), scale = 1;
    box.appendChild(spacer);
    function draw() {
      var viewH = box.clientHeight, rows = Math.ceil(viewH / ROW_H) + 1, n = items.length;
      var top = box.scrollTop, firstRow;
      if (scale === 1) firstRow = Math.floor(top / ROW_H);
      else firstRow = Math.floor(top / Math.max(1, spacer.offsetHeight - viewH) * Math.max(0, n - rows + 1));
      firstRow = Math.max(0, Math.min(firstRow, Math.max(0, n - rows + 1)));
      while (pool.length < rows) {
        var row = el("div", null, "row");
        ["nd", "tm", "lv", "tx"].forEach(function (cls) { row.appendChild(el("span", "", cls)); });
        box.appendChild(row);
        pool.push(row);
      }
      for (var k = 0; k < pool.length; k++) {
        var r = pool[k], idx = firstRow + k;
        if (k >= rows || idx >= n) { r.hidden = true; continue; }
        var i = items[idx], lv = D.levels[LEVEL[i]];
        r.hidden = false;
        r.style.top = (top + (idx - firstRow) * ROW_H - (scale === 1 ? top % ROW_H : 0)) + "px";
        r.dataset.ev = String(i);
        r.dataset.row = String(idx);
        r.childNodes[0].textContent = D.labels[NODE[i]];
        r.childNodes[1].textContent = clock(T[i]);
        r.childNodes[2].textContent = lv;
        r.childNodes[2].className = "lv lv-" + lv;
        r.childNodes[3].textContent = shown(recordText(i));
      }
    }
    box.addEventListener("scroll", function () { requestAnimationFrame(draw); });
    return {
      set: function (list) {
        items = list;
        var h = list.length * ROW_H;
        scale = h > 8e6 ? 8e6 / h : 1;
        spacer.style.height = Math.min(h, 8e6) + "px";
        box.scrollTop = 0;
        draw();
      },
      draw: draw
    };
  }

  // ------------------------------------------------------------------ interaction

  function brush(cv) {
    var box = cv.parentElement, mark = box.querySelector(".brush"), x0 = null;
    function xOf(ev) { return ev.clientX - cv.getBoundingClientRect().left; }
    cv.addEventListener("mousedown", function (ev) { x0 = xOf(ev); mark.hidden = false; mark.style.left = x0 + "px"; mark.style.width = "0"; });
    window.addEventListener("mousemove", function (ev) {
      if (x0 === null) return;
      var x = xOf(ev);
      mark.style.left = Math.min(x, x0) + "px";
      mark.style.width = Math.abs(x - x0) + "px";
    });
    window.addEventListener("mouseup", function (ev) {
      if (x0 === null) return;
      var x1 = xOf(ev), a = Math.min(x0, x1), b = Math.max(x0, x1), w = cv.clientWidth - LEFT;
      x0 = null;
      mark.hidden = true;
      if (b - a < 3 || b < LEFT) return;
      var span = state.v1 - state.v0;
      var v0 = state.v0 + Math.max(0, a - LEFT) / w * span, v1 = state.v0 + Math.min(w, b - LEFT) / w * span;
      zoom(v0, v1);
    });
  }

  function zoom(v0, v1) {
    state.v0 = v0; state.v1 = Math.max(v1, v0 + 0.001); state.ranged = true;
    compute();
  }

  function wholeRange() {
    var lo = 0, hi = 0;
    for (var i = 0; i < N; i++) if (T[i] > hi) hi = T[i];
    state.v0 = lo; state.v1 = Math.max(hi, 0.001); state.ranged = false;
  }

  function controls() {
    var nodeSel = $("f-node"), modSel = $("f-module");
    D.nodes.forEach(function (name, k) { var o = el("option", name); o.value = String(k); nodeSel.appendChild(o); });
    var modCount = new Float64Array(D.modules.length);
    for (var i = 0; i < N; i++) modCount[MODULE[i]]++;
    D.modules.forEach(function (name, k) {
      if (!modCount[k]) return;
      var o = el("option", (name || "Undefined") + " (" + modCount[k] + ")"); o.value = String(k); modSel.appendChild(o);
    });
    state.levels = new Uint8Array(D.levels.length).fill(1);
    var box = $("f-levels");
    D.levels.forEach(function (name, lv) {
      if (!present[lv]) return;
      var label = el("label"), cb = el("input");
      cb.type = "checkbox"; cb.checked = true; cb.dataset.level = name;
      cb.addEventListener("change", function () { state.levels[lv] = cb.checked ? 1 : 0; compute(); });
      label.appendChild(cb);
      label.appendChild(document.createTextNode(" " + name));
      box.appendChild(label);
    });
    $("f-text").addEventListener("change", function () { state.text = $("f-text").value; compute(); });
    $("f-text").addEventListener("search", function () { state.text = $("f-text").value; compute(); });
    $("f-callid").addEventListener("change", function () { state.callid = $("f-callid").value.trim(); compute(); });
    nodeSel.addEventListener("change", function () { state.node = nodeSel.value === "" ? -1 : Number(nodeSel.value); compute(); });
    modSel.addEventListener("change", function () { state.module = modSel.value === "" ? -1 : Number(modSel.value); compute(); });
    $("lane-by").addEventListener("change", function () { state.lane = $("lane-by").value; laneSetup(); drawTimeline(); });
    $("zoom-reset").addEventListener("click", function () { wholeRange(); compute(); });
    $("calls").tHead.addEventListener("click", function (ev) {
      var key = ev.target && ev.target.dataset ? ev.target.dataset.sort : null;
      if (!key) return;
      state.desc = state.sort === key ? !state.desc : key !== "callid" && key !== "first";
      state.sort = key;
      sortCalls();
    });
    $("calls").tBodies[0].addEventListener("click", function (ev) {
      var tr = ev.target.closest ? ev.target.closest("tr") : null;
      if (tr && tr.dataset.callid) showCall(Number(tr.dataset.callid));
    });
    brush($("timeline"));
    brush($("rate"));
    var pending = false;
    window.addEventListener("resize", function () {
      if (pending) return;
      pending = true;
      requestAnimationFrame(function () { pending = false; drawTimeline(); drawRate(); lists.lines.draw(); lists.call.draw(); lists.calls.draw(); });
    });
  }

  var phases = {};  // milliseconds from navigation at the end of each start-up step (bench/report.py prints them)
  function phase(name) { phases[name] = Math.round(performance.now()); }

  async function main() {
    phase("script");
    D = JSON.parse($("kz-data").textContent);
    phase("json");
    N = D.n;
    $("title").textContent = D.title;
    WARN = D.levels.indexOf("warning");
    ERR = D.levels.indexOf("error");
    var names = ["t", "node", "level", "module", "pid", "callid", "line", "nlines"];
    var inflating = Promise.all(D.texts.map(inflate));  // the texts inflate while the columns do
    var cols = await Promise.all(names.map(function (k) { return column(D.cols[k]); }));
    T = cols[0]; NODE = cols[1]; LEVEL = cols[2]; MODULE = cols[3]; PID = cols[4]; CALLID = cols[5]; LINE = cols[6]; NLINES = cols[7];
    phase("columns");
    var raw = await inflating;
    phase("inflate");
    var decoder = new TextDecoder("utf-8");
    texts = raw.map(function (b) { return decoder.decode(b); });
    D.texts = null;
    phase("decode");
    starts = texts.map(lineStarts);
    lineEvent = starts.map(function (s) { return new Int32Array(s.length).fill(-1); });
    present = new Uint8Array(D.levels.length);
    for (var i = 0; i < N; i++) {
      present[LEVEL[i]] = 1;
      var map = lineEvent[NODE[i]], a = LINE[i], b = a + NLINES[i];
      for (var ln = a; ln < b && ln < map.length; ln++) map[ln] = i;
    }
    phase("index");
    lists.lines = VList($("lines"));
    lists.call = VList($("call-lines"));
    lists.calls = CallTable($("calls-scroll"), $("calls"));
    controls();
    laneSetup();
    wholeRange();
    compute();
    phase("ready");
    window.__kzPhases = phases;
    document.body.dataset.ready = "1";
    window.__kzReadyMs = performance.now();
  }

  main().catch(function (err) {
    status("this report could not be shown: " + (err && err.message ? err.message : String(err)));
    console.error(err);
  });
})();
