// streamgate console: draws /api/state (pushed by /api/events) as tables and inline SVG. No dependencies.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
let state = null;
const ui = { attr: null, window: "merged" };

// ---------------------------------------------------------------- helpers
const $ = (sel) => document.querySelector(sel);
const int = (x) => (x === null || x === undefined ? "-" : Math.round(x).toLocaleString("en-US"));
const f3 = (x) => (x === null || x === undefined ? "-" : Number(x).toFixed(3));
const f1 = (x) => (x === null || x === undefined ? "-" : Number(x).toFixed(1));
const f2 = (x) => (x === null || x === undefined ? "-" : Number(x).toFixed(2));

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function setK(key, text) {
  for (const e of document.querySelectorAll(`[data-k="${key}"]`)) e.textContent = text;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function sig(v, signed = true) {
  if (v === true) return el("span", { class: "ok", "data-verified": "true" }, "✓ verified");
  if (v === false) return el("span", { class: "bad", "data-verified": "false" }, "✗ UNVERIFIED");
  if (!signed) return el("span", { class: "muted", "data-verified": "unsigned" }, "unsigned by design (not a receipt)");
  return el("span", { class: "muted", "data-verified": "unknown" }, "not checked (no key)");
}

// "19,617 feature reports · 19,617 examples"
const unit = (n, k) => `${int(n)} ${n === 1 ? k.replace(/s$/, "") : k}`;
const parts = (o) => Object.entries(o || {}).map(([k, v]) => unit(v, k)).join(" · ") || "-";

function time(t) {
  if (!t) return "-";
  return String(t).replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// ---------------------------------------------------------------- charts
// series: [{cls, points: [[x, y], ...]}]; opts: band [[x, lo, hi]], marks [x], y0 (lowest y shown),
// yrange [lo, hi] (fixed), yfmt. Drawn at the box's pixel width, so text keeps its size.
function lineChart(box, series, opts = {}) {
  const W = Math.max(320, Math.round(box.clientWidth || 640)), H = 220, L = 64, R = 12, T = 12, B = 28;
  const pts = series.flatMap((s) => s.points);
  const band = opts.band || [];
  const xs = pts.map((p) => p[0]).concat(band.map((b) => b[0]));
  const ys = pts.map((p) => p[1]).concat(band.flatMap((b) => [b[1], b[2]]));
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img" });
  if (!xs.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "no data yet"));
    box.replaceChildren(root);
    return;
  }
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) { x0 -= 30; x1 += 30; }
  if (opts.yrange) {
    [y0, y1] = [Math.min(opts.yrange[0], y0), Math.max(opts.yrange[1], y1)];
  } else {
    if (opts.y0 !== undefined) y0 = Math.min(y0, opts.y0);
    if (y1 === y0) y1 = y0 + 1;
    const pad = (y1 - y0) * 0.08;
    y1 += pad;
    if (opts.y0 === undefined || y0 < opts.y0) y0 -= pad;
  }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const fmt = opts.yfmt || ((y) => (Math.abs(y1 - y0) >= 20 ? int(y) : f2(y)));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    root.append(svg("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "grid" }));
    root.append(svg("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, fmt(y)));
  }
  for (const x of [x0, x1]) {
    root.append(svg("text", { x: sx(x), y: H - 8, "text-anchor": x === x0 ? "start" : "end", class: "tick" },
      new Date(x * 1000).toISOString().slice(11, 19)));
  }
  if (band.length) {
    const up = band.map((b) => `${sx(b[0])},${sy(b[2])}`);
    const down = band.slice().reverse().map((b) => `${sx(b[0])},${sy(b[1])}`);
    if (band.length === 1) {
      root.append(svg("line", { x1: sx(band[0][0]), x2: sx(band[0][0]), y1: sy(band[0][1]), y2: sy(band[0][2]), class: "whisker" }));
    } else {
      root.append(svg("polygon", { points: up.concat(down).join(" "), class: "band" }));
    }
  }
  for (const m of opts.marks || []) {
    if (m >= x0 && m <= x1) root.append(svg("line", { x1: sx(m), x2: sx(m), y1: T, y2: H - B, class: "mark" }));
  }
  for (const s of series) {
    if (!s.points.length) continue;
    root.append(svg("polyline", { points: s.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), class: `line ${s.cls}` }));
    for (const p of s.points) root.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, class: `dot ${s.cls}` }));
  }
  box.replaceChildren(root);
}

// rows: [{label, value, cls}] -> horizontal bars with the count at the end
function countBars(box, rows, attr) {
  const max = Math.max(1, ...rows.map((r) => r.value));
  const out = rows.map((r) => {
    const s = svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", class: "hbar" });
    s.append(svg("rect", { x: 0, y: 1, width: (100 * r.value) / max, height: 8, class: r.cls || "bar" }));
    return el("div", { class: "barrow", [attr]: r.label }, el("span", { class: "lab" }, r.label), s,
      el("span", { class: "val" }, int(r.value)));
  });
  box.replaceChildren(...(out.length ? out : [el("p", { class: "muted" }, "none")]));
}

// ---------------------------------------------------------------- views
function renderPipeline(p) {
  setK("events_in", int(p.events_in));
  setK("protected", int(p.protected));
  setK("dead_lettered", int(p.dead_lettered));
  const r = p.rates || {};
  setK("rate_in", f1(r.in));
  setK("rate_protected", f1(r.protected));
  setK("rate_dlq", f1(r.dlq));
  lineChart($("#rates-chart"), [
    { cls: "s-in", points: p.series.map((q) => [q.ts, q.in]) },
    { cls: "s-prot", points: p.series.map((q) => [q.ts, q.protected]) },
    { cls: "s-dlq", points: p.series.map((q) => [q.ts, q.dlq]) },
  ], { y0: 0 });
  countBars($("#dlq-reasons"), Object.entries(p.dlq_by_reason).map(([k, v]) => ({ label: k, value: v, cls: "bar dlq" })),
    "data-reason");
  const now = Date.now() / 1000;
  fill($("#workers tbody"), p.workers.map((w) => {
    const name = w.worker + (w.instance ? ` ${w.instance}` : "") + (w.aggregating ? " (aggregator)" : "");
    const ins = unit(w.events_in, w.in_unit) +
      (w.examples_in_model !== undefined && w.examples_in_model !== null ? ` (feature reports and examples; ${int(w.examples_in_model)} examples in the model)` : "");
    const shown = w.status === "live" ? "not ready" : w.status;
    return el("tr", { "data-worker": w.worker, "data-status": w.status },
      el("td", {}, name), el("td", {}, w.pid),
      el("td", { class: w.ready ? "ok" : "bad", "data-col": "ready" }, w.ready ? "ready" : (w.status === "stopped" || w.status === "failed") && w.reason ? w.reason : `${shown}${w.reason ? ": " + w.reason : ""}`),
      el("td", { "data-k": "lag" }, int(w.lag)), el("td", { "data-col": "in" }, ins), el("td", { "data-col": "out" }, parts(w.out)),
      el("td", { "data-col": "rate_in" }, f1(w.rates.in)), el("td", { "data-col": "rate_out" }, f1(w.rates.out)),
      el("td", {}, `${f1(Math.max(0, now - (state.now - w.age_s)))} s`));
  }));
}

// one value: the projected frequency as a bar, the 95 % interval of the unbiased estimate as a whisker,
// the estimate and (when known) the truth as marks; scaled to xmax
function estimateRow(v, truthKnown, xmax) {
  const [value, proj, est, lo, hi, truth] = v;
  const s = svg("svg", { viewBox: "0 0 1000 14", preserveAspectRatio: "none", class: "ebar" });
  const c = (x) => Math.max(0, Math.min(1000, (x / xmax) * 1000));
  s.append(svg("rect", { x: 0, y: 2, width: c(proj), height: 10, class: "bar est" }));
  s.append(svg("line", { x1: c(lo), x2: c(hi), y1: 7, y2: 7, class: "whisker" }));
  for (const x of [lo, hi]) if (x >= 0 && x <= xmax) s.append(svg("line", { x1: c(x), x2: c(x), y1: 3, y2: 11, class: "whisker" }));
  s.append(svg("line", { x1: c(est), x2: c(est), y1: 0, y2: 14, class: "estmark" }));
  if (truth !== null && truth !== undefined) s.append(svg("line", { x1: c(truth), x2: c(truth), y1: 0, y2: 14, class: "truthmark" }));
  const text = el("span", { class: "nums" }, el("span", { class: "num-proj" }, f3(proj)), " est ",
    el("span", { class: "num-est" }, f3(est)), " ", el("span", { class: "num-ci" }, `[${f3(lo)}, ${f3(hi)}]`));
  if (truthKnown) text.append(" true ", el("span", { class: "num-truth" }, truth === null || truth === undefined ? "-" : f3(truth)));
  return el("div", { class: "barrow est", "data-value": value }, el("span", { class: "lab" }, value), s, text);
}

function renderEstimates(e) {
  const cats = e.attributes.filter((a) => a.kind === "categorical");
  const sel = $("#attr");
  if (!ui.attr && cats.length) ui.attr = cats[0].name;
  const names = cats.map((a) => a.name);
  if (sel.dataset.names !== names.join(",")) {
    sel.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    sel.dataset.names = names.join(",");
  }
  sel.value = ui.attr || "";
  const a = cats.find((x) => x.name === ui.attr);
  const wsel = $("#window");
  const opts = [["merged", "all windows (merged)"]].concat(
    (a ? a.windows : []).slice().reverse().map((w) => [String(w.start_ms), new Date(w.start_ms).toISOString().slice(11, 19) + " UTC"]));
  const key = opts.map((o) => o[0]).join(",");
  if (wsel.dataset.keys !== key) {
    wsel.replaceChildren(...opts.map(([v, t]) => el("option", { value: v }, t)));
    wsel.dataset.keys = key;
  }
  if (!opts.some((o) => o[0] === ui.window)) ui.window = "merged";
  wsel.value = ui.window;
  const view = !a ? null : ui.window === "merged" ? a.merged : a.windows.find((w) => String(w.start_ms) === ui.window);
  const truthKnown = ui.window === "merged" && !!(e.truth && e.truth.frequencies && e.truth.frequencies[ui.attr]);
  const skipped = (e.skipped || []).filter((k) => !a || k.attribute === ui.attr);
  $("#window-info").textContent = (view ? `n = ${int(view.n)} reports` + (view.windows > 1 ? `, ${view.windows} windows` : "") +
    (a ? ` · ${a.mechanism}, ε∞ = ${a.eps_inf}` : "") : "no estimates yet (the first window closes after it ends)") +
    skipped.map((k) => ` · ${int(k.records)} records of ${k.attribute} skipped: written with ${k.why}` +
      " (start the console with the settings they were written with)").join("");
  $("#legend").replaceChildren(el("span", { class: "key est" }, "projected"), el("span", { class: "key whisker" }, "95 % interval"),
    el("span", { class: "key estmark" }, "unbiased estimate"), el("span", { id: "scale" }), ...(truthKnown ? [el("span", { class: "key truthmark" }, `true (${e.truth.label})`)] : []));
  const xmax = view ? Math.min(1, Math.max(0.05, ...view.values.flatMap((v) => [v[1], v[4], truthKnown && v[5] ? v[5] : 0]))) : 1;
  $("#scale").textContent = `scale 0 – ${f2(xmax)}`;
  $("#freq").replaceChildren(...(view ? view.values.map((v) => estimateRow(v, truthKnown, xmax)) : []));

  const num = e.attributes.find((x) => x.kind === "numeric");
  if (num) {
    $("#numeric-name").textContent = num.name;
    const pts = num.series.filter((w) => w.mean !== null && w.mean !== undefined);
    const mid = (w) => (w.start_ms + w.end_ms) / 2000;
    lineChart($("#mean-chart"), [{ cls: "s-mean", points: pts.map((w) => [mid(w), w.mean]) }],
      { band: pts.map((w) => [mid(w), w.ci95[0], w.ci95[1]]), yfmt: f1 });  // no truth line: the truth is of the whole run
    const m = num.merged;
    $("#mean-merged").replaceChildren(...(m && m.mean !== null && m.mean !== undefined ? [
      "all windows: mean ", el("span", { class: "num-mean", "data-attr": num.name }, f2(m.mean)), " ",
      el("span", { class: "num-ci" }, `[${f2(m.ci95[0])}, ${f2(m.ci95[1])}]`), ` from ${int(m.n)} reports`,
      ...(m.truth !== null && m.truth !== undefined ? ["; true mean ", el("span", { class: "num-truth" }, f2(m.truth))] : []),
    ] : ["no estimate yet"]));
  }
}

function renderPrivacy(p) {
  setK("over_budget", int(p.over_budget));
  const ks = p.keys_shredded || {};
  setK("keys_shredded", int(Object.values(ks).reduce((a, b) => a + b, 0)));
  $("#shred-split").textContent = `retention ${int(ks.retention || 0)} · erasure ${int(ks.erasure || 0)}`;
  setK("shred_due", int(p.shred_due));
  setK("shred_overdue", f1(p.shred_overdue_seconds));
  const h = p.person_epsilon;
  const box = $("#hist");
  if (!h) {
    const noEpoch = int(p.privatizers) > 0;
    $("#hist-note").textContent = noEpoch ? "(published once per finished epoch, noised)" : "(no privatizer snapshot yet)";
    box.replaceChildren(el("p", { class: "muted", id: "hist-empty" }, noEpoch ? "no finished epoch yet" : "no data yet"));
  } else {
    $("#hist-note").textContent = `(${int(h.people)} people charged by the privatizer in epoch ${h.epoch}; cap ${h.cap})`;
    const W = 640, H = 200, L = 44, B = 30, T = 10;
    const max = Math.max(1, ...h.counts);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img" });
    const bw = (W - L - 8) / h.counts.length;
    h.counts.forEach((c, i) => {
      const hh = ((H - B - T) * c) / max;
      const g = svg("g", { "data-bin": i });
      g.append(svg("rect", { x: L + i * bw + 2, y: H - B - hh, width: bw - 4, height: hh, class: i === h.counts.length - 1 ? "bar cap" : "bar" }));
      g.append(svg("text", { x: L + i * bw + bw / 2, y: H - B - hh - 3, "text-anchor": "middle", class: "tick count" }, c));
      const lo = i * h.bin_width;
      g.append(svg("text", { x: L + i * bw + bw / 2, y: H - 12, "text-anchor": "middle", class: "tick" },
        i === h.counts.length - 1 ? `${h.cap} (cap)` : `${+lo.toFixed(2)}`));
      root.append(g);
    });
    root.append(svg("text", { x: 4, y: T + 8, class: "tick" }, "people"));
    box.replaceChildren(root);
  }
  fill($("#ldp tbody"), Object.entries(p.ldp).map(([a, r]) => el("tr", { "data-attr": a },
    el("td", {}, a), el("td", {}, int(r.reports)), el("td", {}, f2(r.epsilon_spent)), el("td", {}, int(r.suppressed)))));
  fill($("#receipts tbody"), p.receipts.map((r) => el("tr", { "data-request": r.request_id || "" },
    el("td", {}, time(r.at)), el("td", {}, r.kind), el("td", { class: "status" }, r.status || "-"),
    el("td", { class: "keys" }, int(r.keys_shredded)), el("td", {}, r.request_id || "-"),
    el("td", { class: "mono" }, r.receipt_id || "-"), el("td", { class: "sig" }, sig(r.verified)))));
  const unsigned = Object.entries(p.unsigned || {}).map(([k, v]) => `${int(v)} ${k}`).join(", ");
  $("#audit-counts").textContent = "audit records: " + (p.audit.map((a) => `${a.kind}/${a.reason} ${int(a.count)}`).join(", ") || "none") +
    (unsigned ? ` · unsigned by design (not receipts): ${unsigned}` : "") +
    (p.unverified ? ` · ${p.unverified} UNVERIFIED` : "");
}

function renderModel(m) {
  const marks = m.drifts.map((d) => d.ts).filter((x) => x);
  lineChart($("#auc-chart"), m.models.map((s, i) => ({ cls: `s-m${i % 4}`, points: s.series.filter((p) => p.roc_auc !== null).map((p) => [p.ts, p.roc_auc]) })),
    { marks, yfmt: f2, yrange: [0, 1] });
  lineChart($("#loss-chart"), m.models.map((s, i) => ({ cls: `s-m${i % 4}`, points: s.series.filter((p) => p.log_loss !== null).map((p) => [p.ts, p.log_loss]) })),
    { marks, yfmt: f3, y0: 0 });
  fill($("#snapshots tbody"), m.models.flatMap((s) => s.versions.map((v) => el("tr", { "data-model": s.name },
    el("td", {}, s.name), el("td", {}, time(v.created_at)), el("td", { class: "examples" }, int(v.examples_seen)),
    el("td", { class: "auc" }, f3(v.roc_auc)), el("td", { class: "loss" }, f3(v.log_loss)), el("td", { class: "mono" }, v.key_id || "-"),
    el("td", { class: "sig" }, sig(v.verified))))));
  fill($("#drifts tbody"), m.drifts.length ? m.drifts.map((d) => el("tr", {}, el("td", {}, time(d.at)), el("td", {}, d.model),
    el("td", {}, d.metric), el("td", {}, int(d.examples_seen)), el("td", {}, sig(d.verified, d.signed))))
    : [el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no drift detected"))]);
}

function render() {
  if (!state) return;
  const rd = state.reading || {};
  $("#reading").textContent = (rd.topics || []).join(", ") + (rd.missing && rd.missing.length ? ` (not there yet: ${rd.missing.join(", ")})` : "");
  const n = Object.values(state.records || {}).reduce((a, b) => a + b, 0);
  $("#status").textContent = `${int(n)} records read · updated ${new Date(state.now * 1000).toISOString().slice(11, 19)} UTC` +
    (rd.error ? ` · broker: ${rd.error}` : "");
  document.body.dataset.version = state.version;
  renderPipeline(state.pipeline);
  renderEstimates(state.estimates);
  renderPrivacy(state.privacy);
  renderModel(state.model);
}

// ---------------------------------------------------------------- wiring
function show(view) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.view === view);
  for (const s of document.querySelectorAll("section.view")) s.classList.toggle("on", s.id === view);
  if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
  render(); // charts take the width of the view now shown
}

function connect() {
  const es = new EventSource("/api/events");
  es.onmessage = (ev) => { state = JSON.parse(ev.data); render(); };
  es.onerror = () => {
    $("#status").textContent = "connection lost: retrying ...";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.view));
  $("#attr").addEventListener("change", (e) => { ui.attr = e.target.value; ui.window = "merged"; render(); });
  $("#window").addEventListener("change", (e) => { ui.window = e.target.value; render(); });
  const initial = location.hash.slice(1);
  if (["pipeline", "estimates", "privacy", "model"].includes(initial)) show(initial);
  connect();
});
