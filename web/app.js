// Shared core of the UI: the API client (with bearer tokens), the URL as the view's state, the
// profiler registry, number formats and the function colours.

export const $ = (id) => document.getElementById(id);

// ---- URL state -------------------------------------------------------------------------------
// Every view keeps what it shows in the query string, so a link reproduces it. `q()` reads it;
// `setQ()` writes a patch (null deletes) with replaceState, or pushState when `push` is set.

export function q() {
  return new URLSearchParams(location.search);
}

export function setQ(patch, push = false) {
  const u = q();
  for (const [k, v] of Object.entries(patch)) {
    u.delete(k);
    if (v === null || v === undefined || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => u.append(k, x));
    else u.set(k, v);
  }
  const url = location.pathname + (u.toString() ? "?" + u.toString() : "");
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

// ---- API -------------------------------------------------------------------------------------
// A server with tokens (`baton server --auth`) needs `Authorization: Bearer TOKEN` on every API
// call. The token comes from the page's #token=… fragment or a prompt after a 401, and is kept
// in this browser's localStorage; `baton up` on loopback needs none.

export function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    localStorage.setItem("baton-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return localStorage.getItem("baton-token");
}

export async function apiFetch(url, init = {}) {
  const t = token();
  const headers = Object.assign({}, init.headers || {}, t ? { Authorization: "Bearer " + t } : {});
  const r = await fetch(url, Object.assign({}, init, { headers }));
  if (r.status === 401) askToken();
  return r;
}

export async function api(path, params) {
  const qs = params ? (typeof params === "string" ? params : params.toString()) : "";
  const r = await apiFetch(path + (qs ? "?" + qs : ""));
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

export async function post(path, body) {
  const r = await apiFetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const out = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(out.error || r.statusText);
  return out;
}

// After a 401: a field in the page for the token; using it reloads the page.
export function askToken() {
  if ($("token-form")) return;
  const f = document.createElement("form");
  f.id = "token-form";
  f.className = "bar";
  f.innerHTML = '<label>API token <input id="token-input" type="password" size="24"></label> <button>Use</button>';
  f.onsubmit = (e) => {
    e.preventDefault();
    localStorage.setItem("baton-token", $("token-input").value.trim());
    location.reload();
  };
  document.body.insertBefore(f, $("page"));
}

// ---- Registry and identity -------------------------------------------------------------------

export const registry = {};
export let status = {};
export let who = { role: "viewer", can_run: false, can_force: false, fleet: false };

export async function loadRegistry() {
  try {
    status = await api("/api/v1/status");
    for (const p of status.profilers || []) registry[p.name] = p;
  } catch (e) {
    /* the page says what failed when it loads its data */
  }
  try {
    who = await api("/api/v1/whoami");
    $("who").textContent = `${who.name} · ${who.role}`;
  } catch (e) {
    /* an older server: no whoami */
  }
}

export function profilerNames() {
  const names = Object.keys(registry);
  return names.length ? names : ["cpu", "offcpu"];
}

// ---- Formats ---------------------------------------------------------------------------------

export function fmtValue(v, unit) {
  if (unit === "nanoseconds") {
    const s = v / 1e9;
    if (s >= 1) return s.toFixed(2) + " s";
    if (s >= 1e-3) return (s * 1e3).toFixed(1) + " ms";
    return (s * 1e6).toFixed(0) + " µs";
  }
  if (unit === "bytes") {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return v.toFixed(i ? 1 : 0) + " " + u[i];
  }
  return Math.round(v).toLocaleString() + (unit && unit !== "count" ? " " + unit : "");
}

export function pct(v, total) {
  return total > 0 ? (100 * v / total).toFixed(2) + "%" : "0%";
}

export function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}

export function fmtTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

// ---- Colours ---------------------------------------------------------------------------------
// Warm hues for user code, orange-brown for the kernel, grey for what has no name; stable per
// name, so a function has one colour in every view.

const colourCache = new Map();
export function colour(name) {
  let c = colourCache.get(name);
  if (c) return c;
  if (name.startsWith("[unknown]") || name.startsWith("[no stack]")) c = "#c8c8c8";
  else {
    let h = 0;
    for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    const kernelish = /^(__|do_|sys_|x64_|entry_|ksys_|vfs_|asm_|schedule|hrtimer_|common_)/.test(name);
    const hue = kernelish ? 28 + (h % 18) : 2 + (h % 50);
    c = `hsl(${hue}, ${kernelish ? 62 : 82}%, ${60 + (h % 14)}%)`;
  }
  colourCache.set(name, c);
  return c;
}

// ---- Canvas --------------------------------------------------------------------------------

// Sizes a canvas to W×H CSS pixels at the device's pixel ratio (only when that changes) and
// returns its context, cleared, drawing in CSS pixels.
export function sizeCanvas(c, W, H) {
  const dpr = window.devicePixelRatio || 1;
  if (c.width !== Math.round(W * dpr) || c.height !== Math.round(H * dpr)) {
    c.width = Math.round(W * dpr);
    c.height = Math.round(H * dpr);
    c.style.height = H + "px";
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, W, H);
  return g;
}

// ---- Tooltip ---------------------------------------------------------------------------------

export function showTip(text, e) {
  const tip = $("tip");
  if (!text) { tip.style.display = "none"; return; }
  tip.textContent = text;
  tip.style.display = "block";
  tip.style.left = Math.min(e.clientX + 12, innerWidth - 420) + "px";
  tip.style.top = e.clientY + 14 + "px";
}

// ---- Time ranges -----------------------------------------------------------------------------

export const RANGES = [["5m", "5 min"], ["15m", "15 min"], ["1h", "1 hour"], ["6h", "6 hours"], ["24h", "24 hours"], ["7d", "7 days"]];

// The range of a selection in the URL: `from`/`to` (ms) win over `since`.
export function rangeParams(u, prefix = "") {
  const p = new URLSearchParams();
  const from = u.get(prefix + "from"), to = u.get(prefix + "to");
  if (from && to) { p.set("from", from); p.set("to", to); }
  else p.set("since", u.get(prefix + "since") || u.get("since") || "1h");
  return p;
}
