// The pages: Explore, Compare, Timeline, Runs, Fleet and Config. Each reads its state from the
// URL and writes it back, so a link reproduces the view. Entry point of the UI.

import {
  $, q, setQ, api, post, apiFetch, token, registry, status, who, loadRegistry, profilerNames,
  fmtValue, pct, esc, fmtTime, RANGES, rangeParams,
} from "./app.js";
import { Tree, FlameView } from "./flame.js";
import { TimelineView } from "./timeline.js";

const LABELS = ["service", "comm", "pid", "exe", "cgroup", "run", "host", "namespace", "pod"];
const debug = (window.__baton = { timings: {} });

// ---- Shared pieces ---------------------------------------------------------------------------

// The selection's totals per value of a label (any: a thread's, a pod's, a Stack Schema tag);
// a click on a value adds it as a filter.
async function byTable(box, params, label) {
  if (!box) return;
  if (!label) { box.innerHTML = ""; return; }
  const p = new URLSearchParams(params);
  p.set("limit", "20");
  let v;
  try { v = await api("/api/v1/labels/" + encodeURIComponent(label), p); } catch (e) { box.innerHTML = `<tr><td>${esc(e.message)}</td></tr>`; return; }
  const total = v.values.reduce((a, x) => a + x.total, 0);
  box.innerHTML = `<thead><tr><th>${esc(label)}</th><th class="num">Share</th></tr></thead><tbody>${v.values.map((x) =>
    `<tr data-by-value="${esc(x.value)}"><td><a href="#">${esc(x.value)}</a></td><td class="num">${pct(x.total, total)}</td></tr>`).join("") || `<tr><td colspan="2">no samples carry ${esc(label)}</td></tr>`}</tbody>`;
  box.querySelectorAll("tr[data-by-value] a").forEach((a) => a.onclick = (e) => {
    e.preventDefault();
    const u = q();
    setQ({ filter: [...u.getAll("filter"), `${label}=${a.closest("tr").dataset.byValue}`] });
    explore();
  });
}

// The trace IDs the selection's samples carry (published by the threads: see docs/labels.md),
// most weighted first, each with its heaviest span, linked to the trace UI through the config's
// `[ui] trace_url`, or without one to Explore filtered by the trace.
async function traceLinks(box, params, limit = 5) {
  if (!box) return;
  const p = new URLSearchParams(params);
  p.set("limit", String(limit));
  let v;
  try { v = await api("/api/v1/labels/trace_id", p); } catch (e) { box.innerHTML = ""; return; }
  if (!v.values.length) { box.innerHTML = ""; return; }
  const total = v.values.reduce((a, t) => a + t.total, 0);
  const rows = [];
  for (const t of v.values) {
    const sp = new URLSearchParams(params);
    sp.append("filter", "trace_id=" + t.value);
    sp.set("limit", "1");
    let span = "";
    try { const s = await api("/api/v1/labels/span_id", sp); span = s.values.length ? s.values[0].value : ""; } catch (e) { /* the trace alone */ }
    rows.push([t, span]);
  }
  const tpl = status.trace_url;
  const href = (t, s) => {
    if (tpl) return tpl.replaceAll("{trace_id}", encodeURIComponent(t)).replaceAll("{span_id}", encodeURIComponent(s));
    const e = new URLSearchParams(params);
    e.delete("limit");
    e.append("filter", "trace_id=" + t);
    return "/explore?" + e.toString();
  };
  box.innerHTML = `<table class="traces"><thead><tr><th>Trace</th><th>Span</th><th class="num">Share</th></tr></thead><tbody>${rows.map(([t, s]) =>
    `<tr><td><a class="trace" data-trace="${esc(t.value)}" href="${esc(href(t.value, s))}"${tpl ? ' target="_blank" rel="noopener"' : ""}>${esc(t.value.slice(0, 16))}…</a></td><td>${esc(s)}</td><td class="num">${pct(t.total, total)}</td></tr>`).join("")}</tbody></table>`;
}

function profilerSelect(u) {
  const cur = u.get("profiler") || "cpu";
  return `<label>profiler <select id="profiler">${profilerNames().map((n) => `<option value="${esc(n)}"${n === cur ? " selected" : ""}>${esc(n)}</option>`).join("")}</select></label>
    <label>value <select id="value">${valueOptions(cur, u.get("value"))}</select></label>`;
}

function valueOptions(profiler, cur) {
  const p = registry[profiler];
  return (p ? p.values : []).map((v) => `<option value="${esc(v.kind)}"${v.kind === cur ? " selected" : ""} title="${esc(v.help)} (${esc(v.unit)})">${esc(v.kind)}</option>`).join("");
}

function rangeSelect(u, id = "since") {
  const cur = u.get("since") || "1h";
  return `<label>range <select id="${id}">${RANGES.map(([v, t]) => `<option value="${v}"${v === cur ? " selected" : ""}>${t}</option>`).join("")}</select></label>`;
}

function labelInputs(u, prefix = "") {
  return LABELS.map((l) => `<label>${l} <input class="filter" id="${prefix}f-${l}" list="l-${l}" placeholder="any" value="${esc(u.get(prefix + l) || "")}"></label>`).join("") +
    `<label>filter <input id="${prefix}f-extra" placeholder="state=sleeping" title="more label=value filters, space-separated (!= and ~regex too)" value="${esc(u.getAll(prefix + "filter").join(" "))}"></label>` +
    LABELS.map((l) => `<datalist id="l-${l}"></datalist>`).join("");
}

function readLabelInputs(prefix = "") {
  const patch = {};
  for (const l of LABELS) patch[prefix + l] = $(prefix + "f-" + l).value.trim();
  patch[prefix + "filter"] = $(prefix + "f-extra").value.trim().split(/\s+/).filter(Boolean);
  return patch;
}

// Query parameters of one selection for the API: profiler, value, range and filters.
function selection(u, prefix = "") {
  const p = rangeParams(u, prefix);
  p.set("profiler", u.get("profiler") || "cpu");
  if (u.get("value")) p.set("value", u.get("value"));
  for (const l of LABELS) {
    const v = u.get(prefix + l) || (prefix && u.get(l));
    if (v) p.append("filter", `${l}=${v}`);
  }
  for (const f of u.getAll("filter")) p.append("filter", f);
  if (prefix) for (const f of u.getAll(prefix + "filter")) p.append("filter", f);
  return p;
}

async function fillSuggestions(u) {
  for (const l of LABELS) {
    const p = rangeParams(u);
    p.set("profiler", u.get("profiler") || "cpu");
    p.set("limit", "50");
    api("/api/v1/labels/" + l, p).then((v) => {
      const dl = $("l-" + l);
      if (dl) dl.innerHTML = v.values.map((x) => `<option value="${esc(x.value)}">`).join("");
    }).catch(() => {});
  }
}

function searchRegex(s) {
  s = (s || "").trim();
  if (!s) return null;
  try { return new RegExp(s); } catch (e) { return new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")); }
}

function escRe(s) { return "^" + s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "$"; }

// A flame graph in the binary flat shape (see `flat_binary` in crates/server), timed: fetch
// (bytes as sent), decode, tree.
async function fetchTree(params) {
  const t0 = performance.now();
  const p = new URLSearchParams(params);
  p.set("shape", "flatbin");
  const url = "/api/v1/flamegraph?" + p.toString();
  const r = await apiFetch(url);
  if (!r.ok) {
    const j = await r.json().catch(() => ({}));
    throw new Error(j.error || r.statusText);
  }
  const buf = await r.arrayBuffer();
  const t1 = performance.now();
  const dv = new DataView(buf);
  const hl = dv.getUint32(0, true);
  const j = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, hl)));
  const N = j.nodes;
  let off = Math.ceil((4 + hl) / 8) * 8;
  const n = new Int32Array(buf, off, N);
  off = Math.ceil((off + 4 * N) / 8) * 8;
  const v = new Float64Array(buf, off, N);
  const d = new Uint16Array(new Uint8Array(buf, off + 8 * N, N));
  const tree = new Tree(j.names, n, d, v, j.unit);
  const t2 = performance.now();
  const entry = performance.getEntriesByName(new URL(url, location.href).href).pop();
  return { tree, json: j, fetchMs: t1 - t0, parseMs: t2 - t1, bytes: entry ? entry.transferSize || entry.encodedBodySize : buf.byteLength, rawBytes: buf.byteLength };
}

// Labels the series chart can split by (`group_by` of /api/v1/timeseries).
const SPLITS = ["", "service", "pid", "comm", "host"];
const LINE_COLOURS = ["#2f6fdf", "#e8862a", "#2e7d32", "#c62828", "#8e44ad", "#00838f", "#6d4c41", "#d81b60"];

// The split chart: one line per label value (the 8 largest), with a legend; each point's
// tooltip gives its value in the unit of the selected value type.
function splitLines(ts, X, h, unit) {
  const top = ts.series.slice(0, LINE_COLOURS.length);
  const max = Math.max(1e-9, ...top.flatMap((s) => s.points.map((p) => p.value)));
  const Y = (v) => (h - 2 - (h - 16) * v / max).toFixed(1);
  const half = ts.step_ms / 2;
  let svg = "";
  top.forEach((s, i) => {
    const c = LINE_COLOURS[i];
    const pts = s.points.map((p) => `${X(p.ts_ms + half).toFixed(1)},${Y(p.value)}`).join(" ");
    svg += `<polyline class="split" data-key="${esc(s.key)}" points="${pts}" fill="none" stroke="${c}" stroke-width="1.6"></polyline>`;
    for (const p of s.points) svg += `<circle cx="${X(p.ts_ms + half).toFixed(1)}" cy="${Y(p.value)}" r="2" fill="${c}"><title>${esc(ts.group_by)}=${esc(s.key || "none")} ${fmtTime(p.ts_ms)}: ${fmtValue(p.value, unit)}</title></circle>`;
  });
  const legend = top.map((s, i) => `<span><i style="background:${LINE_COLOURS[i]}"></i>${esc(ts.group_by)}=${esc(s.key || "none")}: ${fmtValue(Math.max(...s.points.map((p) => p.value)), unit)} peak</span>`).join("")
    + (ts.series.length > top.length ? `<span>+${ts.series.length - top.length} more</span>` : "");
  return { svg, legend };
}

// The weighted-samples chart: bars per step (or, split, a line per label value), drag to
// select (`onSelect(fromMs, toMs, shift)`), and shaded selections. A level (`live_bytes`) is
// what is held at each window's end, not summed over windows.
function drawSeries(box, ts, shades, onSelect) {
  box.classList.toggle("split", !!(ts.series && ts.series.length));
  const w = box.clientWidth || 800, h = box.clientHeight || 76;
  const pts = ts.points;
  if (!pts.length) { box.innerHTML = '<div style="padding:8px;color:#777">no samples in this range</div>'; return; }
  const step = ts.step_ms;
  const t0 = Math.min(ts.from_ms, pts[0].ts_ms), t1 = Math.max(ts.to_ms, pts[pts.length - 1].ts_ms + step);
  const X = (t) => (t - t0) / (t1 - t0) * w;
  const max = Math.max(1e-9, ...pts.map((p) => p.value));
  const bw = Math.max(1, w * step / Math.max(step, t1 - t0) - 1);
  let svg = "";
  for (const [a, b, col] of shades) if (a && b) svg += `<rect x="${X(a).toFixed(1)}" y="0" width="${Math.max(1, X(b) - X(a)).toFixed(1)}" height="${h}" fill="${col}" opacity="0.18"></rect>`;
  const q0 = q();
  const value = q0.get("value") || "";
  const info = (registry[q0.get("profiler") || "cpu"] || { values: [] }).values.find((v) => v.kind === value);
  const unit = info ? info.unit : "";
  let legend = "";
  if (ts.series && ts.series.length) {
    const lines = splitLines(ts, X, h, unit);
    svg += lines.svg;
    legend = lines.legend;
  } else {
    for (const p of pts) {
      const bh = (h - 14) * p.value / max;
      svg += `<rect x="${X(p.ts_ms).toFixed(1)}" y="${(h - bh).toFixed(1)}" width="${bw.toFixed(1)}" height="${bh.toFixed(1)}" fill="#f08030"><title>${fmtTime(p.ts_ms)}: ${unit ? fmtValue(p.value, unit) : p.value.toExponential(3)}</title></rect>`;
    }
  }
  const what = ts.level ? `${esc(value)} held at each window's end (a level, per process)` : "weighted samples";
  const split = ts.group_by ? ` by ${esc(ts.group_by)}` : "";
  box.innerHTML = `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">${svg}<text x="4" y="11" font-size="10" fill="#777">${what}${split} over time: drag to select${shades.length > 1 ? " A, shift-drag for B" : ""}</text></svg>`
    + (legend ? `<div class="legend series-legend">${legend}</div>` : "");
  const el = box.querySelector("svg");
  let start = null;
  el.onmousedown = (e) => { start = e.offsetX; };
  el.onmouseup = (e) => {
    if (start === null) return;
    const a = Math.min(start, e.offsetX), b = Math.max(start, e.offsetX);
    start = null;
    if (b - a < 4) return;
    onSelect(Math.floor(t0 + a / w * (t1 - t0)), Math.ceil(t0 + b / w * (t1 - t0)), e.shiftKey);
  };
}

function drawHists(box, hs) {
  box.innerHTML = "";
  for (const x of hs.histograms.slice(0, 12)) {
    const max = Math.max(1, ...x.buckets.map((b) => b.count));
    const div = document.createElement("div");
    div.className = "hist";
    const title = document.createElement("b");
    title.textContent = `${x.name} of ${x.key || "all"}: ${x.count} values, p50 ${x.p50}, p99 ${x.p99} ${x.unit}`;
    div.appendChild(title);
    for (const b of x.buckets) {
      const row = document.createElement("div");
      row.className = "hrow";
      const low = b.le <= 1 ? 0 : Math.floor(b.le / 2) + 1;
      row.textContent = `${low} – ${b.le}: ${b.count}`;
      row.style.background = `linear-gradient(to right, #f0a050 ${(100 * b.count / max).toFixed(1)}%, transparent 0)`;
      div.appendChild(row);
    }
    box.appendChild(div);
  }
}

function setStatus(text, err = false) {
  const s = $("status");
  if (!s) return;
  s.className = "status" + (err ? " err" : "");
  s.textContent = text;
}

// ---- Explore ---------------------------------------------------------------------------------

async function explore() {
  const u = q();
  const view = u.get("view") || "flame";
  $("page").innerHTML = `
  <div class="bar">${profilerSelect(u)}${rangeSelect(u)}${labelInputs(u)}</div>
  <div class="bar">
    <label>search <input id="search" placeholder="function regex  ( / )" value="${esc(u.get("search") || "")}"></label>
    <span class="tabs">${["flame", "icicle", "sandwich"].map((v) => `<button data-view="${v}" class="${v === view ? "on" : ""}">${v}</button>`).join("")}</span>
    <label title="one line per value of a label over time (live_bytes: the live heap per process or service)">split <select id="split">${SPLITS.map((l) => `<option value="${l}"${l === (u.get("split") || "") ? " selected" : ""}>${l || "none"}</option>`).join("")}</select></label>
    <button id="refresh">Refresh</button> <label><input type="checkbox" id="auto"${u.get("auto") ? " checked" : ""}> auto</label>
    <span>export: <a id="dl-pprof" href="#">pprof</a> · <a id="dl-collapsed" href="#">collapsed</a> · <a id="dl-speedscope" href="#">speedscope</a></span>
    <span class="keys">/ search · Esc reset · u up · i icicle</span>
    <span class="status" id="status"></span>
  </div>
  <div class="chart" id="series"></div>
  <div class="hists" id="hists"></div>
  <div class="cols">
    <div class="panel grow">
      <div class="crumbs" id="crumbs"></div>
      <div id="views"></div>
    </div>
    <div class="panel side"><table id="top"><thead><tr>
      <th class="num" data-k="self">Self %</th><th class="num" data-k="total">Total %</th><th data-k="function">Function</th><th></th>
    </tr></thead><tbody></tbody></table>
    <div class="by"><label title="totals per value of any label: a thread's (endpoint), a pod's, a Stack Schema tag">group by <input id="by" size="12" placeholder="endpoint" value="${esc(u.get("by") || "")}"></label><table id="by-table"></table></div>
    <div id="fdo"></div><div id="traces"></div></div>
  </div>`;
  const base = selection(u);
  for (const [id, fmt, name] of [["dl-pprof", "pprof", "baton.pb.gz"], ["dl-collapsed", "collapsed", "baton.folded"], ["dl-speedscope", "speedscope", "baton.speedscope.json"]]) {
    const p = new URLSearchParams(base);
    p.set("format", fmt);
    const a = $(id);
    a.href = "/api/v1/export?" + p.toString();
    a.download = name;
    if (token()) a.onclick = (e) => { e.preventDefault(); download(a.href, name); };
  }
  wireSelection(u, explore);
  document.querySelectorAll(".tabs button").forEach((b) => b.onclick = () => { setQ({ view: b.dataset.view }); explore(); });
  $("split").onchange = () => { setQ({ split: $("split").value || null }); explore(); };
  $("refresh").onclick = () => { setQ({ from: null, to: null }); explore(); };
  $("auto").onchange = () => setQ({ auto: $("auto").checked ? "1" : null });
  $("by").onchange = () => { setQ({ by: $("by").value.trim() || null }); explore(); };

  setStatus("loading…");
  const t0 = performance.now();
  // At the root, the first frame needs only the nodes one screen width can show (the view
  // skips those under 0.4 px): it loads those first, then everything, and swaps.
  const width = $("views").clientWidth || 1000;
  const progressive = view !== "sandwich" && !u.get("focus");
  const first = new URLSearchParams(base);
  if (progressive) first.set("min_share", String(0.3 / width));
  let got;
  try { got = await fetchTree(first); } catch (e) { setStatus("error: " + e.message, true); return; }
  // The store answers one query at a time: the rest is asked for once the first is in.
  const fullP = progressive ? fetchTree(base) : null;
  const seriesP = new URLSearchParams(base);
  if (u.get("split")) seriesP.set("group_by", u.get("split"));
  api("/api/v1/timeseries", seriesP)
    .then((ts) => drawSeries($("series"), ts, [[+u.get("from"), +u.get("to"), "#2f6fdf"]], (a, b) => { setQ({ from: a, to: b }, true); explore(); }))
    .catch((e) => setStatus("error: " + e.message, true));
  const d0 = performance.now();
  const fv = renderExploreView(got.tree, u, view);
  const d1 = performance.now();
  await new Promise((res) => requestAnimationFrame(() => {
    // The first frame is on screen once the browser paints after this task.
    const painted = performance.now();
    Object.assign(debug.timings, {
      firstNodes: got.tree.size, firstBytes: got.bytes, firstFetchMs: got.fetchMs,
      parseMs: got.parseMs, drawMs: d1 - d0, firstFrameMs: painted - t0, renderMs: painted - d0,
    });
    document.body.dataset.firstFrame = String(Math.round(painted - t0));
    res();
  }));
  // The filters' suggestions (a query per label) wait for the first frame: the store answers
  // one query at a time, and they had queued ahead of the flame graph.
  fillSuggestions(u);
  if (fullP) {
    try { got = await fullP; } catch (e) { setStatus("error: " + e.message, true); return; }
    if (fv) {
      fv.setTree(got.tree, got.tree.find(fv.tree.path(fv.focus)));
      crumbs(got.tree, fv);
      if ($("search").value) $("search").oninput();
    }
  }
  const tree = got.tree;
  renderTop(tree, u);
  if ((u.get("profiler") || "cpu") === "cpu") renderFdo(base);
  await byTable($("by-table"), base, u.get("by"));
  await traceLinks($("traces"), base);
  Object.assign(debug.timings, {
    stacks: got.json.stacks, nodes: tree.size, bytes: got.bytes, rawBytes: got.rawBytes,
    fetchMs: got.fetchMs, fullMs: performance.now() - t0,
  });
  setStatus(`${fmtValue(tree.total, tree.unit)} total · ${got.json.stacks.toLocaleString()} stacks · ${(got.bytes / 1024).toFixed(1)} KiB`);
  const p = registry[u.get("profiler") || "cpu"];
  if (p && p.histograms && p.histograms.length) {
    try { drawHists($("hists"), await api("/api/v1/histograms", base)); } catch (e) { /* histograms are extra */ }
  }
  debug.flame = fv;
  debug.tree = tree;
  document.body.dataset.loaded = "1";
  if (u.get("auto")) setTimeout(() => { if (q().get("auto") && location.pathname.match(/^\/(explore)?$/)) explore(); }, 10000);
}

function renderExploreView(tree, u, view) {
  const box = $("views");
  const search = $("search");
  if (view === "sandwich") {
    const name = u.get("fn") || topName(tree);
    const k = tree.names.indexOf(name);
    box.innerHTML = `<div class="sandwich"><h3>callers of <b>${esc(name)}</b></h3><canvas class="flame" id="callers"></canvas>
      <h3>callees of <b>${esc(name)}</b></h3><canvas class="flame" id="callees"></canvas></div>`;
    $("crumbs").innerHTML = `sandwich of <b>${esc(name)}</b> — pick another function in the table`;
    if (k < 0) return null;
    const { callers, callees } = tree.sandwich(k);
    const up = new FlameView($("callers"), { icicle: false });
    up.setTree(callers);
    const down = new FlameView($("callees"), { icicle: true });
    down.setTree(callees);
    const re = searchRegex(search.value);
    up.search(re); down.search(re);
    search.oninput = () => { setQ({ search: search.value }); const r = searchRegex(search.value); up.search(r); down.search(r); };
    keys(down);
    debug.sandwich = { up, down };
    return down;
  }
  box.innerHTML = `<canvas class="flame" id="flame"></canvas>`;
  const focusPath = (u.get("focus") || "").split(";").filter(Boolean);
  const fv = new FlameView($("flame"), {
    icicle: view === "icicle",
    onZoom: (i) => { setQ({ focus: fv.tree.path(i).join(";") || null }); crumbs(fv.tree, fv); },
  });
  fv.setTree(tree, tree.find(focusPath));
  crumbs(tree, fv);
  const applySearch = () => {
    const share = fv.search(searchRegex(search.value));
    setQ({ search: search.value || null });
    $("crumbs").querySelector(".sp").textContent = share === null ? "" : `search matched ${(share * 100).toFixed(2)}%`;
  };
  search.oninput = applySearch;
  if (search.value) applySearch();
  keys(fv);
  return fv;
}

function crumbs(tree, fv) {
  const c = $("crumbs");
  const keep = c.querySelector(".sp") ? c.querySelector(".sp").textContent : "";
  c.innerHTML = "";
  const chain = [];
  for (let i = fv.focus; i >= 0; i = tree.parent[i]) chain.unshift(i);
  chain.forEach((i, k) => {
    if (k) c.appendChild(document.createTextNode("›"));
    const a = document.createElement("a");
    a.textContent = tree.names[tree.n[i]];
    a.onclick = () => fv.zoom(i, true);
    c.appendChild(a);
  });
  const sp = document.createElement("span");
  sp.className = "sp";
  sp.id = "match";
  sp.textContent = keep;
  c.appendChild(sp);
}

let keyHandler = null;
function keys(fv) {
  if (keyHandler) removeEventListener("keydown", keyHandler);
  keyHandler = (e) => {
    const typing = /INPUT|SELECT|TEXTAREA/.test(document.activeElement.tagName);
    if (e.key === "/" && !typing) { e.preventDefault(); $("search").focus(); return; }
    if (e.key === "Escape") {
      if (typing) document.activeElement.blur();
      if ($("search").value) { $("search").value = ""; $("search").oninput(); } else fv.zoom(0, true);
      return;
    }
    if (typing) return;
    if (e.key === "u" || e.key === "Backspace") fv.up();
    if (e.key === "i") { const v = q().get("view") === "icicle" ? "flame" : "icicle"; setQ({ view: v }); route(); }
  };
  addEventListener("keydown", keyHandler);
}

function topName(tree) {
  const { self } = tree.top();
  let best = 0;
  for (let k = 1; k < self.length; k++) if (self[k] > self[best]) best = k;
  return tree.names[best];
}

function renderTop(tree, u) {
  const { self, total } = tree.top();
  const T = tree.total || 1;
  const rows = [];
  for (let k = 0; k < tree.names.length; k++) if (total[k] > 0 && tree.names[k] !== "all") rows.push({ k, name: tree.names[k], self: self[k], total: total[k] });
  const sort = u.get("sort") || "self";
  rows.sort((a, b) => sort === "function" ? a.name.localeCompare(b.name) : b[sort] - a[sort] || b.total - a.total);
  const tb = document.querySelector("#top tbody");
  tb.innerHTML = rows.slice(0, 300).map((r) => `<tr data-fn="${esc(r.name)}"><td class="num">${(100 * r.self / T).toFixed(2)}</td><td class="num">${(100 * r.total / T).toFixed(2)}</td><td class="fn">${esc(r.name)}</td><td><a href="#" class="sw" title="callers and callees">sandwich</a></td></tr>`).join("");
  tb.onclick = (e) => {
    const tr = e.target.closest("tr");
    if (!tr) return;
    e.preventDefault();
    if (e.target.classList.contains("sw")) { setQ({ view: "sandwich", fn: tr.dataset.fn }, true); explore(); return; }
    if (q().get("view") === "sandwich") { setQ({ fn: tr.dataset.fn }); explore(); return; }
    $("search").value = escRe(tr.dataset.fn);
    $("search").oninput();
  };
  document.querySelectorAll("#top th[data-k]").forEach((th) => th.onclick = () => { setQ({ sort: th.dataset.k }); renderTop(tree, q()); });
}

// The binaries of the selection's CPU samples, each with its FDO profiles to download.
async function renderFdo(base) {
  let bins;
  try { bins = await api("/api/v1/fdo/binaries", base); } catch (e) { return; }
  if (!bins.length) return;
  const link = (b, fmt, text, ext) => {
    const p = new URLSearchParams(base);
    p.set("build_id", b.build_id);
    p.set("format", fmt);
    const name = `${b.module.split("/").pop()}.${ext}`;
    return `<a class="fdo" href="/api/v1/fdo?${esc(p.toString())}" download="${esc(name)}">${text}</a>`;
  };
  $("fdo").innerHTML = `<h4 title="for clang -fprofile-sample-use and llvm-bolt; see docs/fdo.md">FDO profiles</h4>` +
    bins.map((b) => `<div class="bin" data-build-id="${esc(b.build_id)}" title="build ID ${esc(b.build_id)}">${esc(b.module.split("/").pop())} ${(100 * b.share).toFixed(1)}%: ${link(b, "llvm", "sample profile", "afdo.txt")} · ${link(b, "bolt", "BOLT", "fdata")}</div>`).join("");
  if (token()) for (const a of document.querySelectorAll("#fdo a.fdo")) a.onclick = (e) => { e.preventDefault(); download(a.href, a.download); };
}

function wireSelection(u, again, prefix = "") {
  $("profiler").onchange = () => { setQ({ profiler: $("profiler").value, value: null, focus: null, fn: null }); again(); };
  $("value").onchange = () => { setQ({ value: $("value").value, focus: null }); again(); };
  if ($("since")) $("since").onchange = () => { setQ({ since: $("since").value, from: null, to: null }); again(); };
  for (const l of LABELS) $(prefix + "f-" + l).onchange = () => { setQ(readLabelInputs(prefix)); again(); };
  $(prefix + "f-extra").onchange = () => { setQ(readLabelInputs(prefix)); again(); };
}

async function download(url, name) {
  const r = await apiFetch(url);
  if (!r.ok) { setStatus("export failed: " + r.status, true); return; }
  const blob = await r.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
}

// ---- Compare ---------------------------------------------------------------------------------

async function compare() {
  const u = q();
  const sel = (s) => `<div class="bar"><b style="color:var(--${s})">${s.toUpperCase()}</b>
      <label>from <input id="${s}-from" size="14" value="${esc(u.get(s + ".from") || "")}" placeholder="ms or empty"></label>
      <label>to <input id="${s}-to" size="14" value="${esc(u.get(s + ".to") || "")}"></label>
      <label>filters <input id="${s}-filters" size="36" placeholder="comm=api pid=12" value="${esc(u.getAll(s + ".filter").join(" "))}"></label>
      <span id="${s}-sum" class="keys"></span></div>`;
  $("page").innerHTML = `
  <div class="bar">${profilerSelect(u)}${rangeSelect(u)}${labelInputs(u)}</div>
  ${sel("a")}${sel("b")}
  <div class="bar"><label>search <input id="search" value="${esc(u.get("search") || "")}" placeholder="function regex"></label>
    <span class="legend"><span><i style="background:rgb(235,105,105)"></i>more in B</span><span><i style="background:rgb(105,225,105)"></i>less in B</span></span>
    <button id="go">Compare</button><span class="status" id="status"></span></div>
  <div class="chart" id="series"></div>
  <div class="cols">
    <div class="panel grow"><div class="crumbs" id="crumbs"></div><canvas class="flame" id="flame"></canvas></div>
    <div class="panel side"><table id="top"><thead><tr>
      <th data-k="function">Function</th><th class="num" data-k="a">A self</th><th class="num" data-k="b">B self</th><th class="num" data-k="delta">Δ self</th><th class="num" data-k="dt">Δ total</th>
    </tr></thead><tbody></tbody></table></div>
  </div>`;
  wireSelection(u, compare);
  const readSides = () => {
    const patch = {};
    for (const s of ["a", "b"]) {
      patch[s + ".from"] = $(s + "-from").value.trim();
      patch[s + ".to"] = $(s + "-to").value.trim();
      patch[s + ".filter"] = $(s + "-filters").value.trim().split(/\s+/).filter(Boolean);
    }
    setQ(patch);
  };
  $("go").onclick = () => { readSides(); compare(); };
  fillSuggestions(u);
  const all = selection(u);
  try {
    const ts = await api("/api/v1/timeseries", all);
    drawSeries($("series"), ts, [[+u.get("a.from"), +u.get("a.to"), "#2f6fdf"], [+u.get("b.from"), +u.get("b.to"), "#e8862a"]], (a, b, shift) => {
      const s = shift ? "b" : "a";
      setQ({ [s + ".from"]: a, [s + ".to"]: b }, true);
      compare();
    });
  } catch (e) { setStatus("error: " + e.message, true); return; }
  const side = (s) => {
    const p = new URLSearchParams(all);
    if (u.get(s + ".from") && u.get(s + ".to")) { p.delete("since"); p.set("from", u.get(s + ".from")); p.set("to", u.get(s + ".to")); }
    for (const f of u.getAll(s + ".filter")) p.append("filter", f);
    return p;
  };
  if (!(u.get("a.from") || u.getAll("a.filter").length) || !(u.get("b.from") || u.getAll("b.filter").length)) {
    setStatus("choose A (drag on the chart, or filters) and B (shift-drag, or filters)");
    return;
  }
  setStatus("loading…");
  let A, B;
  try { [A, B] = await Promise.all([fetchTree(side("a")), fetchTree(side("b"))]); } catch (e) { setStatus("error: " + e.message, true); return; }
  $("a-sum").textContent = `${fmtValue(A.tree.total, A.tree.unit)} in ${A.json.stacks} stacks`;
  $("b-sum").textContent = `${fmtValue(B.tree.total, B.tree.unit)} in ${B.json.stacks} stacks`;
  const diff = Tree.diff(A.tree, B.tree);
  const fv = new FlameView($("flame"), { onZoom: () => crumbs(diff, fv) });
  fv.setTree(diff, diff.find((u.get("focus") || "").split(";").filter(Boolean)));
  crumbs(diff, fv);
  fv.onZoom = (i) => { setQ({ focus: diff.path(i).join(";") || null }); crumbs(diff, fv); };
  const search = $("search");
  search.oninput = () => { setQ({ search: search.value || null }); const share = fv.search(searchRegex(search.value)); $("match").textContent = share === null ? "" : `search matched ${(share * 50).toFixed(2)}% of A+B`; };
  if (search.value) search.oninput();
  keys(fv);
  // The top table with deltas, per function, in points of each side's total.
  const ta = diff.top(diff.va), tb = diff.top(diff.vb);
  const rows = [];
  for (let k = 0; k < diff.names.length; k++) {
    if (diff.names[k] === "all" || (ta.total[k] === 0 && tb.total[k] === 0)) continue;
    rows.push({ name: diff.names[k], a: ta.self[k] * 100, b: tb.self[k] * 100, delta: (tb.self[k] - ta.self[k]) * 100, dt: (tb.total[k] - ta.total[k]) * 100 });
  }
  const sort = u.get("sort") || "delta";
  const order = { function: (x, y) => x.name.localeCompare(y.name), a: (x, y) => y.a - x.a, b: (x, y) => y.b - x.b, delta: (x, y) => Math.abs(y.delta) - Math.abs(x.delta), dt: (x, y) => Math.abs(y.dt) - Math.abs(x.dt) }[sort] || ((x, y) => Math.abs(y.delta) - Math.abs(x.delta));
  rows.sort(order);
  const cls = (v) => (v > 0.5 ? "grew" : v < -0.5 ? "shrank" : "");
  document.querySelector("#top tbody").innerHTML = rows.slice(0, 300).map((r) => `<tr data-fn="${esc(r.name)}"><td class="fn">${esc(r.name)}</td><td class="num">${r.a.toFixed(2)}</td><td class="num">${r.b.toFixed(2)}</td><td class="num delta ${cls(r.delta)}">${r.delta > 0 ? "+" : ""}${r.delta.toFixed(2)}</td><td class="num ${cls(r.dt)}">${r.dt > 0 ? "+" : ""}${r.dt.toFixed(2)}</td></tr>`).join("");
  document.querySelectorAll("#top th[data-k]").forEach((th) => th.onclick = () => { setQ({ sort: th.dataset.k }); compare(); });
  document.querySelector("#top tbody").onclick = (e) => { const tr = e.target.closest("tr"); if (tr) { search.value = escRe(tr.dataset.fn); search.oninput(); } };
  setStatus(`A ${fmtValue(A.tree.total, A.tree.unit)} · B ${fmtValue(B.tree.total, B.tree.unit)}`);
  debug.flame = fv;
  debug.tree = diff;
  document.body.dataset.loaded = "1";
}

// ---- Timeline --------------------------------------------------------------------------------

async function timeline() {
  const u = q();
  const since = u.get("since") || "1m";
  $("page").innerHTML = `
  <div class="bar">
    <label>pid <input id="tl-pid" list="l-pid" size="8" value="${esc(u.get("pid") || "")}"></label><datalist id="l-pid"></datalist>
    <label>host <input id="tl-host" size="10" value="${esc(u.get("host") || "")}" placeholder="this host"></label>
    <label>window <select id="tl-since">${[["30s", "30 s"], ["1m", "1 min"], ["5m", "5 min"], ["15m", "15 min"], ["1h", "1 hour"]].map(([v, t]) => `<option value="${v}"${v === since ? " selected" : ""}>${t}</option>`).join("")}</select></label>
    <button id="tl-go">Show</button>
    <span class="legend"><span><i style="background:#f0a050"></i>CPU sample (colour: leaf function)</span><span><i style="background:#7a9cc6"></i>off CPU, sleeping</span><span><i style="background:#c0504d"></i>off CPU, uninterruptible</span><span><i style="background:#8e44ad"></i>request</span></span>
    <span class="keys">drag to narrow · click for the stack</span>
    <span class="status" id="status"></span>
  </div>
  <div class="cols">
    <div class="panel grow"><canvas class="flame" id="tl"></canvas></div>
    <div class="panel side"><div class="crumbs">selected</div><div id="tl-detail" class="stack">Click a mark.</div><div id="tl-span-traces"></div>
      <table id="tl-lanes" class="lanes"><thead><tr><th>tid</th><th>comm</th><th class="num">cpu</th><th class="num">off-CPU</th><th class="num">requests</th></tr></thead><tbody></tbody></table><div id="tl-traces"></div></div>
  </div>`;
  const go = () => {
    setQ({ pid: $("tl-pid").value.trim(), host: $("tl-host").value.trim(), since: $("tl-since").value, from: null, to: null });
    timeline();
  };
  $("tl-go").onclick = go;
  $("tl-since").onchange = go;
  $("tl-pid").onchange = go;
  // Processes seen lately, for the pid box.
  api("/api/v1/labels/pid", "profiler=cpu&since=15m&limit=50").then((v) => { $("l-pid").innerHTML = v.values.map((x) => `<option value="${esc(x.value)}">`).join(""); }).catch(() => {});
  if (!u.get("pid")) { setStatus("choose a process (pid)"); return; }
  const p = rangeParams(u);
  if (!u.get("from")) p.set("since", since);
  p.append("filter", "pid=" + u.get("pid"));
  if (u.get("host")) p.append("filter", "host=" + u.get("host"));
  setStatus("loading…");
  let data;
  try { data = await api("/api/v1/timeline", p); } catch (e) { setStatus("error: " + e.message, true); return; }
  const gauges = await gpuGauges(u, data);
  const view = new TimelineView($("tl"), data, {
    onPick: (s) => showSpan(s, data),
    onRange: (a, b) => { setQ({ from: a, to: b }, true); timeline(); },
    gauges,
  });
  $("tl-lanes").querySelector("tbody").innerHTML = view.lanes.map((l) => `<tr data-tid="${l.tid}"><td>${l.tid}</td><td>${esc(l.comm)}</td><td class="num">${l.cpu}</td><td class="num">${l.offcpu} · ${(l.offcpuUs / 1000).toFixed(0)} ms</td><td class="num">${l.requests}</td></tr>`).join("")
    + gauges.map((ga) => `<tr class="gauge" data-gauge="${esc(ga.value)}" data-gpu="${esc(ga.gpu)}"><td colspan="2">${esc(ga.title)}</td><td class="num" colspan="3">mean ${fmtValue(ga.points.reduce((a, p) => a + p.value, 0) / Math.max(1, ga.points.length), ga.unit)} · ${ga.points.length} readings</td></tr>`).join("");
  setStatus(`${data.spans.length.toLocaleString()} spans${data.truncated ? " (truncated: narrow the window)" : ""} · ${fmtTime(data.from_ms)} – ${fmtTime(data.to_ms)}`);
  debug.timeline = view;
  const tp = new URLSearchParams(p);
  tp.set("profiler", "cpu");
  await traceLinks($("tl-traces"), tp);
  document.body.dataset.loaded = "1";
}

// The GPU gauges the `nvml` profiler read for this process in the window, as timeline lanes:
// the process's own (SM utilisation, memory held) on each GPU it used, then those GPUs' device
// readings (busy, memory used, power). None when nvml did not run.
const GPU_PROCESS = [["gpu_proc_util", "SM util", "percent", 100], ["gpu_proc_mem_used", "memory", "bytes", 0]];
const GPU_DEVICE = [["gpu_util", "busy", "percent", 100], ["gpu_mem_used", "memory used", "bytes", 0], ["gpu_power", "power", "milliwatts", 0]];
async function gpuGauges(u, data) {
  const series = async (value, filters) => {
    const p = new URLSearchParams({ profiler: "nvml", value, from: data.from_ms, to: data.to_ms, step: "1s", group_by: "gpu" });
    for (const f of filters) p.append("filter", f);
    if (u.get("host")) p.append("filter", "host=" + u.get("host"));
    try { return (await api("/api/v1/timeseries", p)).series || []; } catch (e) { return []; }
  };
  const out = [];
  const gpus = new Set();
  for (const [value, what, unit, max] of GPU_PROCESS) {
    for (const s of await series(value, ["pid=" + u.get("pid")])) {
      gpus.add(s.key);
      out.push({ value, gpu: s.key, title: `gpu${s.key} ${what} (pid)`, unit, max, points: s.points });
    }
  }
  if (!gpus.size) return out;
  for (const [value, what, unit, max] of GPU_DEVICE) {
    for (const s of await series(value, [])) {
      if (gpus.has(s.key)) out.push({ value, gpu: s.key, title: `gpu${s.key} ${what}`, unit, max, points: s.points });
    }
  }
  return out;
}

function showSpan(s, data) {
  const d = $("tl-detail");
  const stack = s.stack ? data.stacks[s.stack] || [] : [];
  const head = s.kind === "cpu" ? "CPU sample" : s.kind === "offcpu" ? `off CPU (${s.label || "blocked"}) for ${(s.dur_us / 1000).toFixed(1)} ms` : `request ${s.label || ""}`;
  d.textContent = `${head}\nthread ${s.tid}, at ${new Date(s.start_us / 1000).toISOString()}\n\n${stack.length ? stack.join("\n") : "(no stack recorded)"}`;
  d.dataset.kind = s.kind;
  if (s.kind === "request" && s.label) {
    const a = document.createElement("a");
    a.href = `/explore?profiler=latency&since=1h&filter=${encodeURIComponent("request=" + s.label)}`;
    a.textContent = "\n\nthis request's CPU stacks in Explore";
    d.appendChild(a);
  }
  // The traces this thread's samples carried in the windows around the mark (samples are
  // stored per window, so this is the thread's work then, not this one sample's alone).
  const p = new URLSearchParams();
  const ms = Math.floor(s.start_us / 1000);
  p.set("profiler", s.kind === "offcpu" ? "offcpu" : "cpu");
  p.set("from", String(ms - 10000));
  p.set("to", String(ms + 10000));
  p.append("filter", "pid=" + s.pid);
  p.append("filter", "tid=" + s.tid);
  traceLinks($("tl-span-traces"), p);
}

// ---- Runs ------------------------------------------------------------------------------------

let runsTimer = null;
async function runs() {
  const u = q();
  let hosts = [];
  if (who.fleet) {
    try { hosts = (await api("/api/v1/hosts")).hosts.filter((h) => h.state === "up").map((h) => h.host); } catch (e) { /* shown below */ }
  }
  $("page").innerHTML = `
  <div class="card"><h2>Launch an on-demand run</h2>
    <form id="run-form" class="bar" style="border:0;padding:0">
      <label>profiler <select id="r-profiler">${profilerNames().map((n) => `<option${n === (u.get("profiler") || "cpu") ? " selected" : ""}>${esc(n)}</option>`).join("")}</select></label>
      <label>target <input id="r-target" size="18" placeholder="pid:1234, comm:nginx" value="${esc(u.get("target") || "")}" required></label>
      <label>duration <input id="r-duration" size="5" value="${esc(u.get("duration") || "10s")}"></label>
      <label>priority <input id="r-priority" type="number" style="width:60px" value="0"></label>
      ${hosts.length ? `<label>host <select id="r-host">${hosts.map((h) => `<option>${esc(h)}</option>`).join("")}</select></label>` : ""}
      ${who.can_force ? `<label title="runs even where a concurrency rule or budget would hold it; audited"><input type="checkbox" id="r-force"> force</label>` : ""}
      <button id="r-go"${who.can_run ? "" : " disabled title=\"needs the operator role\""}>Run</button>
    </form>
    <div id="r-live"></div>
  </div>
  <div class="card"><h2>Queue and history</h2><table id="runs-table"><thead><tr><th>id</th><th>profiler</th><th>target</th><th>host</th><th>mode</th><th>state</th><th>reason</th><th>queued</th><th class="num">samples</th><th></th></tr></thead><tbody></tbody></table></div>`;
  $("run-form").onsubmit = async (e) => {
    e.preventDefault();
    const body = { profiler: $("r-profiler").value, target: $("r-target").value.trim(), duration: $("r-duration").value.trim(), priority: +$("r-priority").value || 0 };
    if ($("r-force") && $("r-force").checked) body.force = true;
    if ($("r-host")) body.host = $("r-host").value;
    try {
      const r = await post("/api/v1/runs", body);
      setQ({ run: r.id });
      follow(r.id);
    } catch (err) {
      $("r-live").innerHTML = `<p class="err"></p>`;
      $("r-live").firstChild.textContent = "refused: " + err.message;
    }
  };
  if (u.get("run")) follow(+u.get("run"));
  const refresh = async () => {
    if (!location.pathname.startsWith("/runs")) { clearInterval(runsTimer); return; }
    try {
      const list = (await api("/api/v1/runs")).runs || [];
      list.sort((a, b) => b.id - a.id);
      document.querySelector("#runs-table tbody").innerHTML = list.slice(0, 200).map((r) => `<tr data-id="${r.id}"><td>${r.id}</td><td>${esc(r.profiler)}</td><td>${esc(r.target)}</td><td>${esc(r.host || "")}</td><td>${esc(r.mode || "")}</td><td><span class="state ${esc(r.state)}">${esc(r.state)}</span></td><td>${esc(r.reason || "")}</td><td>${r.queued_at_ms ? fmtTime(r.queued_at_ms) : ""}</td><td class="num">${r.samples ?? ""}</td><td>${r.state === "done" ? `<a href="${profileLink(r)}">profile</a>` : ""}</td></tr>`).join("");
      document.body.dataset.loaded = "1";
    } catch (e) { setStatusCard(e); }
  };
  clearInterval(runsTimer);
  runsTimer = setInterval(refresh, 2000);
  refresh();
}

function setStatusCard(e) {
  const t = document.querySelector("#runs-table tbody");
  if (t) t.innerHTML = `<tr><td colspan="10" class="err">${esc(e.message)}</td></tr>`;
}

function profileLink(r) {
  const p = new URLSearchParams({ profiler: r.profiler, run: String(r.id) });
  if (r.started_at_ms) { p.set("from", String(r.started_at_ms - 2000)); p.set("to", String((r.ended_at_ms || Date.now()) + 5000)); } else p.set("since", "1h");
  return "/explore?" + p.toString();
}

// Live progress of one run: its state, time done against its duration, then the profile link.
async function follow(id) {
  const box = $("r-live");
  const tick = async () => {
    if (!location.pathname.startsWith("/runs") || !$("r-live")) return;
    let r;
    try { r = await api("/api/v1/runs/" + id); } catch (e) { box.innerHTML = `<p class="err">${esc(e.message)}</p>`; return; }
    const dur = (r.duration_s || r.duration_ms / 1000 || 1) * 1000;
    const done = r.started_at_ms ? Math.min(1, (Date.now() - r.started_at_ms) / dur) : 0;
    const end = ["done", "failed", "cancelled"].includes(r.state);
    box.innerHTML = `<p id="run-live" data-state="${esc(r.state)}">run <b>${id}</b> <span class="state ${esc(r.state)}">${esc(r.state)}</span>
      <progress max="1" value="${end ? 1 : done.toFixed(3)}"></progress> ${r.samples ?? 0} samples ${r.reason ? "· " + esc(r.reason) : ""}
      ${r.state === "done" ? `· <a id="run-profile" href="${profileLink(r)}">open its profile</a>` : ""}</p>`;
    if (!end) setTimeout(tick, 500);
  };
  tick();
}

// ---- Fleet -----------------------------------------------------------------------------------

async function fleet() {
  $("page").innerHTML = `<div class="card"><h2>Agents</h2><div id="fleet-body">loading…</div></div>`;
  const body = $("fleet-body");
  const budgets = (wb) => wb ? Object.entries(wb).map(([k, v]) => `${esc(k)}: ${esc(typeof v === "object" ? Object.entries(v).map(([a, b]) => `${a} ${typeof b === "number" ? +b.toFixed(2) : b}`).join(", ") : v)}`).join("<br>") : "";
  const overhead = (o) => o ? `${o.percent.toFixed(2)}% of ${o.budget_percent}%${o.frequency_cap_hz ? ` (capped at ${o.frequency_cap_hz} Hz)` : ""}${o.paused ? " · paused" : ""} <meter min="0" max="${o.budget_percent}" value="${Math.min(o.percent, o.budget_percent)}"></meter>` : "not measured yet";
  if (!who.fleet) {
    const st = await api("/api/v1/status").catch(() => status);
    body.innerHTML = `<p>This is <code>baton up</code>: one host, profiled by this process. Run <code>baton server</code> and <code>baton agent</code> for a fleet.</p>
      <table id="fleet-table"><thead><tr><th>host</th><th>health</th><th>profilers running</th><th>overhead / budget</th><th>write budgets</th><th>frequency</th></tr></thead>
      <tbody><tr><td>this host</td><td><span class="state done">up</span></td><td id="fleet-running"></td><td>${overhead(st.overhead)}</td><td>${budgets(st.write_budgets)}</td><td>${st.frequency_hz || ""} Hz</td></tr></tbody></table>`;
    api("/api/v1/runs").then((r) => { $("fleet-running").textContent = ["cpu (continuous)"].concat((r.runs || []).filter((x) => x.state === "running").map((x) => `${x.profiler} #${x.id}`)).join(", "); }).catch(() => {});
    document.body.dataset.loaded = "1";
    return;
  }
  try {
    const [h, r] = await Promise.all([api("/api/v1/hosts"), api("/api/v1/runs")]);
    const running = (host) => (r.runs || []).filter((x) => x.host === host && x.state === "running").map((x) => `${x.profiler} #${x.id}`).join(", ");
    body.innerHTML = `<table id="fleet-table"><thead><tr><th>host</th><th>health</th><th>last heartbeat</th><th>labels</th><th>services</th><th>profilers running</th><th>overhead / budget</th><th>write budgets</th><th>version</th></tr></thead><tbody>${
      h.hosts.map((x) => `<tr data-host="${esc(x.host)}"><td>${esc(x.host)}</td><td><span class="state ${x.state === "up" ? "done" : "failed"}">${esc(x.state)}</span></td><td>${((Date.now() - x.last_seen_ms) / 1000).toFixed(0)} s ago</td><td>${esc(Object.entries(x.labels || {}).map(([k, v]) => k + "=" + v).join(" "))}</td><td>${esc((x.services || []).join(", "))}</td><td>${esc(running(x.host))}</td><td>${overhead(x.health && x.health.overhead)}</td><td>${budgets(x.health && x.health.write_budgets)}</td><td>${esc(x.version || "")}</td></tr>`).join("")}</tbody></table>`;
    document.body.dataset.loaded = "1";
  } catch (e) { body.innerHTML = `<p class="err">${esc(e.message)}</p>`; }
}

// ---- Config ----------------------------------------------------------------------------------

async function config() {
  $("page").innerHTML = `<div class="card"><h2>Config in force</h2><div id="config-body">loading…</div></div>`;
  const body = $("config-body");
  try {
    const c = await api("/api/v1/config");
    const services = c.config && c.config.services ? Object.keys(c.config.services) : [];
    body.innerHTML = `<table><tbody>
      <tr><td>directory</td><td><code>${esc(c.dir)}</code></td></tr>
      <tr><td>version</td><td><code id="config-version">${esc(c.version || "none")}</code></td></tr>
      <tr><td>loaded</td><td>${c.loaded_at_ms ? new Date(c.loaded_at_ms).toLocaleString() : ""}</td></tr>
      <tr><td>reloads / rejected</td><td>${c.reloads} / ${c.rejected}</td></tr>
      <tr><td>services</td><td>${esc(services.join(", ") || "none")}</td></tr>
    </tbody></table>
    ${c.last_errors && c.last_errors.length ? `<h2>The last tree was rejected; the version above stays in force</h2><pre class="errors" id="config-errors">${esc(c.last_errors.join("\n"))}</pre>` : `<p id="config-errors">The newest edit loaded cleanly.</p>`}`;
    document.body.dataset.loaded = "1";
  } catch (e) {
    body.innerHTML = `<p class="err" id="config-errors">${esc(e.message)}</p><code id="config-version">none</code>`;
    document.body.dataset.loaded = "1";
  }
}

// ---- Router ----------------------------------------------------------------------------------

const PAGES = { explore, compare, timeline, runs, fleet, config };

function route() {
  const name = location.pathname.replace(/^\//, "").split("/")[0] || "explore";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.dataset.page === name));
  document.body.dataset.loaded = "";
  (PAGES[name] || explore)();
}

// Nav links keep the selection (profiler, range, filters) between pages.
document.querySelectorAll("nav a").forEach((a) => a.addEventListener("click", (e) => {
  e.preventDefault();
  const keep = new URLSearchParams();
  for (const k of ["profiler", "since", "from", "to", ...LABELS]) if (q().get(k)) keep.set(k, q().get(k));
  history.pushState(null, "", a.getAttribute("href") + (keep.toString() ? "?" + keep : ""));
  route();
}));
addEventListener("popstate", route);

token();
loadRegistry().then(route);
