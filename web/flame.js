// Flame graphs on canvas: the tree model (pre-order arrays from `/api/v1/flamegraph?shape=flat`),
// the top table's sums, sandwich and diff trees, and the view that draws, zooms and searches.

import { colour, pct, fmtValue, showTip, sizeCanvas } from "./app.js";

// A flame tree in pre-order: node i has name names[n[i]], depth d[i] and total v[i]; its
// subtree is [i, end[i]). `va`/`vb` are set on diff trees: each side's share of its total.
export class Tree {
  constructor(names, n, d, v, unit) {
    this.names = names;
    this.n = n instanceof Int32Array ? n : Int32Array.from(n);
    this.d = d instanceof Uint16Array ? d : Uint16Array.from(d);
    this.v = v instanceof Float64Array ? v : Float64Array.from(v);
    this.unit = unit || "";
    this.index();
  }

  get size() { return this.n.length; }
  get total() { return this.size ? this.v[0] : 0; }

  // Parents, subtree ends, x offsets (in value units) and the deepest level.
  index() {
    const N = this.size, d = this.d, v = this.v;
    this.parent = new Int32Array(N);
    this.end = new Int32Array(N);
    this.x = new Float64Array(N);
    const last = new Int32Array(1025).fill(-1);
    const next = new Float64Array(1026);
    this.maxDepth = 0;
    const open = [];
    for (let i = 0; i < N; i++) {
      const di = d[i];
      while (open.length && d[open[open.length - 1]] >= di) this.end[open.pop()] = i;
      open.push(i);
      this.parent[i] = di > 0 ? last[di - 1] : -1;
      last[di] = i;
      this.x[i] = di > 0 ? next[di] : 0;
      next[di] = this.x[i] + v[i];
      next[di + 1] = this.x[i];
      if (di > this.maxDepth) this.maxDepth = di;
    }
    while (open.length) this.end[open.pop()] = N;
    // The deepest level in each subtree (a parent comes before its children).
    this.deep = Uint16Array.from(d);
    for (let i = N - 1; i > 0; i--) if (this.deep[i] > this.deep[this.parent[i]]) this.deep[this.parent[i]] = this.deep[i];
  }

  selfOf(i) {
    let s = this.v[i];
    for (let c = i + 1; c < this.end[i]; c = this.end[c]) s -= this.v[c];
    return s;
  }

  // Path of names from the root's child down to i, for the URL.
  path(i) {
    const out = [];
    for (let p = i; p > 0; p = this.parent[p]) out.push(this.names[this.n[p]]);
    return out.reverse();
  }

  // The node at a path of names, or the deepest one that matches.
  find(path) {
    let i = 0;
    for (const name of path) {
      let found = -1;
      for (let c = i + 1; c < this.end[i]; c = this.end[c]) {
        if (this.names[this.n[c]] === name) { found = c; break; }
      }
      if (found < 0) break;
      i = found;
    }
    return i;
  }

  // Self and total per function (a function counts once per stack, however often it recurses).
  top(vals = this.v) {
    const K = this.names.length, N = this.size;
    const self = new Float64Array(K), total = new Float64Array(K), onPath = new Int32Array(K);
    const open = [];
    for (let i = 1; i < N; i++) {
      while (open.length && this.end[open[open.length - 1]] <= i) onPath[this.n[open.pop()]]--;
      const k = this.n[i];
      if (onPath[k] === 0) total[k] += vals[i];
      onPath[k]++;
      open.push(i);
      let s = vals[i];
      for (let c = i + 1; c < this.end[i]; c = this.end[c]) s -= vals[c];
      self[k] += s;
    }
    return { self, total };
  }

  // Callers and callees of function `k`, each as a tree rooted at it.
  sandwich(k) {
    const callees = new Builder(this.names), callers = new Builder(this.names);
    const N = this.size;
    for (let i = 1; i < N; i++) {
      if (this.n[i] !== k) continue;
      // Outermost occurrences only: an inner one is inside an outer one's subtree already.
      let inner = false;
      for (let p = this.parent[i]; p > 0; p = this.parent[p]) if (this.n[p] === k) { inner = true; break; }
      if (inner) continue;
      const map = new Map([[i, 0]]);
      callees.add(0, -1, this.v[i]);
      for (let j = i + 1; j < this.end[i]; j++) {
        const id = callees.add(map.get(this.parent[j]), this.n[j], this.v[j]);
        map.set(j, id);
      }
      let at = 0;
      callers.add(0, -1, this.v[i]);
      for (let p = this.parent[i]; p > 0; p = this.parent[p]) at = callers.add(at, this.n[p], this.v[i]);
    }
    return { callers: callers.tree(k, this.unit), callees: callees.tree(k, this.unit) };
  }

  // A tree of both sides: widths are the sum of each side's share, `va`/`vb` the shares.
  static diff(a, b) {
    const names = [], ids = new Map();
    const nameId = (s) => { let i = ids.get(s); if (i === undefined) { i = names.length; names.push(s); ids.set(s, i); } return i; };
    const build = new Builder(names, 2);
    for (const [t, side] of [[a, 0], [b, 1]]) {
      const tot = t.total || 1;
      const map = new Int32Array(t.size);
      for (let i = 0; i < t.size; i++) {
        map[i] = i === 0 ? build.add(0, -1, t.v[0] / tot, side) : build.add(map[t.parent[i]], nameId(t.names[t.n[i]]), t.v[i] / tot, side);
      }
    }
    const tree = build.tree(nameId("all"), "share");
    tree.isDiff = true;
    tree.totalA = a.total;
    tree.totalB = b.total;
    return tree;
  }
}

// Builds a tree node by node (children found by name), then lays it out in pre-order.
class Builder {
  constructor(names, sides = 1) {
    this.names = names;
    this.sides = sides;
    this.kids = [new Map()];
    this.name = [-1];
    this.val = [[0, 0]];
  }
  add(parent, name, value, side = 0) {
    let id;
    if (name === -1) id = parent;
    else {
      id = this.kids[parent].get(name);
      if (id === undefined) {
        id = this.name.length;
        this.kids[parent].set(name, id);
        this.kids.push(new Map());
        this.name.push(name);
        this.val.push([0, 0]);
      }
    }
    this.val[id][side] += value;
    return id;
  }
  tree(rootName, unit) {
    const n = [], d = [], v = [], va = [], vb = [];
    const stack = [[0, 0]];
    while (stack.length) {
      const [id, depth] = stack.pop();
      n.push(id === 0 ? rootName : this.name[id]);
      d.push(depth);
      const [x, y] = this.val[id];
      v.push(x + y);
      va.push(x);
      vb.push(y);
      const kids = [...this.kids[id].entries()].sort((p, q2) => (this.names[q2[0]] < this.names[p[0]] ? -1 : 1));
      for (const [, c] of kids) stack.push([c, depth + 1]);
    }
    const t = new Tree(this.names, n, d, v, unit);
    if (this.sides === 2) { t.va = Float64Array.from(va); t.vb = Float64Array.from(vb); }
    return t;
  }
}

// Colour of a diff node from its two shares: red where B grew, green where it shrank.
export function diffColour(a, b) {
  const m = Math.max(a, b);
  const r = m > 0 ? (b - a) / m : 0;
  const s = Math.min(1, Math.abs(r));
  if (Math.abs(r) < 0.05) return "rgb(200,200,200)";
  const light = Math.round(215 - 110 * s);
  return r > 0 ? `rgb(235,${light},${light})` : `rgb(${light},225,${light})`;
}

const ROW = 18;

// Draws a Tree on a canvas: flame (root at the bottom) or icicle (root on top), zoomed on a
// node, with search matches highlighted. Zooming animates; every frame's time is kept in
// `frameTimes` so the zoom rate can be measured.
export class FlameView {
  constructor(canvas, { icicle = false, onZoom = null, onSelect = null } = {}) {
    this.canvas = canvas;
    this.icicle = icicle;
    this.onZoom = onZoom;
    this.onSelect = onSelect;
    this.tree = null;
    this.focus = 0;
    this.view = [0, 1];
    this.match = null;
    this.frameTimes = [];
    canvas.addEventListener("mousemove", (e) => this.hover(e));
    canvas.addEventListener("mouseleave", () => showTip(null));
    canvas.addEventListener("click", (e) => {
      const i = this.hit(e);
      if (i >= 0) this.zoom(i, true);
    });
    this.resize = () => this.draw();
    addEventListener("resize", this.resize);
  }

  setTree(tree, focus = 0) {
    this.tree = tree;
    this.focus = focus;
    this.view = tree && tree.size ? [tree.x[focus], tree.x[focus] + tree.v[focus]] : [0, 1];
    this.draw();
  }

  // Search: a RegExp or null. Returns the share of the total the matches stand for.
  search(re) {
    const t = this.tree;
    if (!t || !re) { this.match = null; this.draw(); return null; }
    const hit = new Uint8Array(t.names.length);
    t.names.forEach((s, k) => { hit[k] = re.test(s) ? 1 : 0; });
    this.match = hit;
    let sum = 0;
    for (let i = 1; i < t.size;) {
      if (hit[t.n[i]]) { sum += t.v[i]; i = t.end[i]; } else i++;
    }
    this.draw();
    return t.total ? sum / t.total : 0;
  }

  zoom(i, animate) {
    const t = this.tree;
    if (!t) return;
    this.focus = i;
    const to = [t.x[i], t.x[i] + t.v[i]];
    // The URL and the breadcrumbs change once the animation ends: a DOM change while it runs
    // relays the page out in its first frame.
    if (!animate) { this.view = to; this.draw(); if (this.onZoom) this.onZoom(i); return; }
    const from = this.view.slice(), t0 = performance.now(), D = 220;
    const step = (now) => {
      const k = Math.min(1, (now - t0) / D), e = 1 - Math.pow(1 - k, 3);
      this.view = [from[0] + (to[0] - from[0]) * e, from[1] + (to[1] - from[1]) * e];
      const a = performance.now();
      this.animating = k < 1;
      this.draw();
      this.animating = false;
      this.frameTimes.push({ at: now, draw: performance.now() - a });
      if (k < 1) requestAnimationFrame(step);
      else if (this.onZoom && this.focus === i) this.onZoom(i);
    };
    requestAnimationFrame(step);
  }

  up() {
    if (this.tree && this.focus > 0) this.zoom(Math.max(0, this.tree.parent[this.focus]), true);
  }

  draw() {
    const t = this.tree, c = this.canvas;
    const W = c.clientWidth || c.parentElement.clientWidth || 800;
    const rows = t ? Math.min(t.maxDepth + 1, 160) : 1;
    const H = rows * ROW + 2;
    const g = sizeCanvas(c, W, H);
    this.rects = [];
    if (!t || !t.size || t.total <= 0) return;
    const [x0, x1] = this.view, scale = W / (x1 - x0 || 1);
    const focusDepth = t.d[this.focus], fx = t.x[this.focus];
    const names = t.names, N = t.size, tn = t.n, td = t.d, tx = t.x, tv = t.v, tend = t.end;
    // Fill colour per name, once per tree (and per search).
    const fills = this.fills(t);
    // Rectangles snap to whole pixels, and each row's pixels are filled once: the right edge
    // painted so far per depth. A zoom into a wide subtree can show ~1,000 nodes per row, about
    // one per pixel; fractional edges made every one of them an anti-aliased fill. Fills are
    // drawn grouped by colour, then the labels, so the context changes state a few hundred
    // times a frame, not once per node.
    const painted = new Float64Array(rows).fill(-1);
    // While a zoom animates, a subtree under 1.5 px is one column in its root's colour, as
    // deep as the subtree: the same outline, without a rectangle per sliver. The last frame
    // draws every node.
    const lod = this.animating ? 1.5 : 0;
    const deep = t.deep;
    const byFill = new Map();
    const labels = [];
    const rects = this.rects;
    for (let i = 0; i < N;) {
      const left = (tx[i] - x0) * scale, w = tv[i] * scale;
      const right = left + w;
      const depth = td[i];
      // Off screen, too thin to see, or beside the focus's ancestry: skip the whole subtree.
      if (w < 0.4 || right < 0 || left > W || depth >= rows) { i = tend[i]; continue; }
      if (depth < focusDepth && !(tx[i] <= fx && fx < tx[i] + tv[i] + 1e-9)) { i = tend[i]; continue; }
      const y = this.icicle ? depth * ROW : H - (depth + 1) * ROW;
      const L = left < 0 ? 0 : left, R = right > W ? W : right;
      let a = Math.round(L);
      const b = Math.round(R);
      if (a < painted[depth]) a = painted[depth];
      const column = w < lod;
      const last = column ? Math.min(deep[i], rows - 1) : depth;
      if (b > a) {
        const fill = t.isDiff && !(this.match && this.match[tn[i]]) ? diffColour(t.va[i], t.vb[i]) : fills[tn[i]];
        let list = byFill.get(fill);
        if (!list) byFill.set(fill, (list = []));
        // A pixel's gap between neighbours wide enough to spare it.
        const top = this.icicle ? y : H - (last + 1) * ROW;
        list.push(a, top, b - a > 3 ? b - a - 1 : b - a, (last - depth + 1) * ROW - 1);
        for (let k = depth; k <= last; k++) if (painted[k] < b) painted[k] = b;
        rects.push(i, L, y, R - L);
      }
      if (column) { i = tend[i]; continue; }
      if (R - L > 28) labels.push(i, L, y, R - L);
      i++;
    }
    for (const [fill, list] of byFill) {
      g.fillStyle = fill;
      for (let k = 0; k < list.length; k += 4) g.fillRect(list[k], list[k + 1], list[k + 2], list[k + 3]);
    }
    g.font = "11px ui-monospace, monospace";
    g.textBaseline = "middle";
    g.fillStyle = "#111";
    for (let k = 0; k < labels.length; k += 4) {
      const name = names[tn[labels[k]]];
      const chars = Math.floor((labels[k + 3] - 6) / 6.6);
      const label = name.length > chars ? name.slice(0, Math.max(chars - 1, 1)) + "…" : name;
      g.fillText(label, labels[k + 1] + 3, labels[k + 2] + ROW / 2);
    }
  }

  // Fill colour of each name index: the function's colour, or the search's highlight (others
  // grey; a diff tree keeps its own colours for non-matches, chosen per node in `draw`).
  fills(t) {
    if (this.fillCache && this.fillCache.tree === t && this.fillCache.match === this.match) return this.fillCache.fills;
    const fills = t.names.map((name, k) => {
      if (this.match) return this.match[k] ? "#e040fb" : "#e4e4e4";
      return colour(name);
    });
    this.fillCache = { tree: t, match: this.match, fills };
    return fills;
  }

  // The node under the mouse, or -1.
  hit(e) {
    const r = this.canvas.getBoundingClientRect();
    const x = e.clientX - r.left, y = e.clientY - r.top, R = this.rects || [];
    for (let k = 0; k < R.length; k += 4) {
      if (x >= R[k + 1] && x < R[k + 1] + R[k + 3] && y >= R[k + 2] && y < R[k + 2] + ROW) return R[k];
    }
    return -1;
  }

  // Where node `name` (the widest of that name) was drawn, in page coordinates: for tests.
  rectOf(name) {
    const t = this.tree, R = this.rects || [], box = this.canvas.getBoundingClientRect();
    let best = null;
    for (let k = 0; k < R.length; k += 4) {
      if (t.names[t.n[R[k]]] === name && (!best || R[k + 3] > best.w)) best = { x: box.left + R[k + 1], y: box.top + R[k + 2], w: R[k + 3], h: ROW - 1 };
    }
    return best;
  }

  hover(e) {
    const i = this.hit(e), t = this.tree;
    if (i < 0) { showTip(null); return; }
    const name = t.names[t.n[i]];
    if (t.isDiff) {
      const a = t.va[i] * 100, b = t.vb[i] * 100;
      showTip(`${name}\nA ${a.toFixed(2)}%  B ${b.toFixed(2)}%  (${b >= a ? "+" : ""}${(b - a).toFixed(2)} points)`, e);
    } else {
      showTip(`${name}\n${fmtValue(t.v[i], t.unit)} · ${pct(t.v[i], t.total)} total · ${pct(t.selfOf(i), t.total)} self`, e);
    }
    if (this.onSelect) this.onSelect(i, false);
  }
}
