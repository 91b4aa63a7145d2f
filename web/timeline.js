// The timeline: one lane per thread of a process, with CPU samples as ticks coloured by their
// leaf function, off-CPU intervals as bars and requests (the `latency` profiler's slow ones)
// as a band under them; under the threads, one lane per GPU gauge of the process (the `nvml`
// profiler's readings) as a step line. Click a mark for its stack; drag across lanes to narrow
// the window.

import { colour, showTip, fmtTime, fmtValue, sizeCanvas } from "./app.js";

const LANE = 40, HEAD = 22, LEFT = 150, GAUGE = 34;

export class TimelineView {
  constructor(canvas, data, { onPick = null, onRange = null, gauges = [] } = {}) {
    this.canvas = canvas;
    this.data = data;
    // [{ title, unit, max, points: [{ ts_ms, value }] }]
    this.gauges = gauges;
    this.onPick = onPick;
    this.onRange = onRange;
    this.from = data.from_ms * 1000;
    this.to = data.to_ms * 1000;
    // Lanes by thread id, in order of first appearance on the process.
    const lanes = new Map();
    for (const s of data.spans) {
      let l = lanes.get(s.tid);
      if (!l) { l = { tid: s.tid, comm: s.comm || "", cpu: 0, offcpu: 0, offcpuUs: 0, requests: 0, spans: [] }; lanes.set(s.tid, l); }
      if (!l.comm && s.comm) l.comm = s.comm;
      l.spans.push(s);
      if (s.kind === "cpu") l.cpu++;
      else if (s.kind === "offcpu") { l.offcpu++; l.offcpuUs += s.dur_us; }
      else l.requests++;
    }
    this.lanes = [...lanes.values()].sort((a, b) => a.tid - b.tid);
    canvas.addEventListener("mousemove", (e) => {
      const s = this.hit(e);
      showTip(s ? this.describe(s) : null, e);
    });
    canvas.addEventListener("mouseleave", () => showTip(null));
    let down = null;
    canvas.addEventListener("mousedown", (e) => { down = e.offsetX; });
    canvas.addEventListener("mouseup", (e) => {
      if (down !== null && Math.abs(e.offsetX - down) > 5 && this.onRange) {
        const a = this.timeAt(Math.min(down, e.offsetX)), b = this.timeAt(Math.max(down, e.offsetX));
        down = null;
        this.onRange(Math.floor(a / 1000), Math.ceil(b / 1000));
        return;
      }
      down = null;
      const s = this.hit(e);
      if (s && this.onPick) this.onPick(s);
    });
    addEventListener("resize", () => this.draw());
    this.draw();
  }

  describe(s) {
    const when = fmtTime(s.start_us / 1000) + "." + String(Math.floor((s.start_us / 1000) % 1000)).padStart(3, "0");
    const stack = s.stack && this.data.stacks[s.stack];
    const leaf = stack && stack.length ? stack[0] : "";
    if (s.kind === "cpu") return `CPU sample at ${when}\n${leaf}`;
    if (s.kind === "offcpu") return `off CPU (${s.label || "blocked"}) ${(s.dur_us / 1000).toFixed(1)} ms from ${when}\n${stack ? stack.find((f) => !/^(__|schedule|do_|hrtimer|common_|entry_|x64_|clock_nanosleep|nanosleep)/.test(f)) || leaf : ""}`;
    return `request ${s.label || ""} ${(s.dur_us / 1000).toFixed(1)} ms from ${when}`;
  }

  timeAt(x) {
    const W = this.canvas.clientWidth;
    return this.from + (x - LEFT) / (W - LEFT) * (this.to - this.from);
  }

  xOf(us) {
    const W = this.canvas.clientWidth;
    return LEFT + (us - this.from) / (this.to - this.from) * (W - LEFT);
  }

  draw() {
    const c = this.canvas, W = c.clientWidth || 900;
    const threadsH = HEAD + Math.max(1, this.lanes.length) * LANE;
    const H = threadsH + this.gauges.length * GAUGE + 4;
    const g = sizeCanvas(c, W, H);
    g.font = "11px ui-monospace, monospace";
    g.textBaseline = "middle";
    // Time axis.
    g.fillStyle = "#777";
    const span = this.to - this.from;
    const ticks = 8;
    for (let k = 0; k < ticks; k++) {
      const t = this.from + span * k / ticks, x = this.xOf(t);
      g.fillRect(x, HEAD - 4, 1, 4);
      const ms = t / 1000;
      g.fillText(fmtTime(ms) + "." + String(Math.floor(ms % 1000)).padStart(3, "0"), Math.min(x + 2, W - 90), 8);
    }
    this.marks = [];
    this.lanes.forEach((l, li) => {
      const y = HEAD + li * LANE;
      g.fillStyle = li % 2 ? "#fafafa" : "#f2f4f8";
      g.fillRect(0, y, W, LANE - 2);
      g.fillStyle = "#333";
      g.fillText(`${l.tid} ${l.comm}`.slice(0, 20), 4, y + 12);
      g.fillStyle = "#888";
      g.fillText(`${l.cpu} cpu · ${l.offcpu} off`, 4, y + 27);
      for (const s of l.spans) {
        let x = this.xOf(s.start_us), w = Math.max(1.5, s.dur_us / span * (W - LEFT));
        if (x + w < LEFT || x > W) continue;
        if (x < LEFT) { w -= LEFT - x; x = LEFT; }
        let top, h, fill;
        if (s.kind === "cpu") {
          const stack = s.stack && this.data.stacks[s.stack];
          top = y + 2; h = 14; w = Math.max(w, 2);
          fill = colour(stack && stack.length ? stack[0] : "[no stack]");
        } else if (s.kind === "offcpu") {
          top = y + 17; h = 12;
          fill = s.label === "uninterruptible" ? "#c0504d" : "#7a9cc6";
        } else {
          top = y + 31; h = 6;
          fill = "#8e44ad";
        }
        g.fillStyle = fill;
        g.fillRect(x, top, w, h);
        this.marks.push([s, x, top, w, h]);
      }
    });
    if (!this.lanes.length) {
      g.fillStyle = "#777";
      g.fillText("No spans for this process in the window.", LEFT, HEAD + 14);
    }
    this.gauges.forEach((ga, gi) => this.drawGauge(g, ga, threadsH + gi * GAUGE, W));
  }

  // One gauge lane: its title and mean on the left, its readings as a step line scaled to
  // `max` (or its largest reading).
  drawGauge(g, ga, y, W) {
    g.fillStyle = "#eef5ee";
    g.fillRect(0, y, W, GAUGE - 2);
    g.fillStyle = "#333";
    g.fillText(ga.title.slice(0, 22), 4, y + 10);
    const vals = ga.points.map((p) => p.value);
    const mean = vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : 0;
    g.fillStyle = "#888";
    g.fillText("mean " + fmtValue(mean, ga.unit), 4, y + 24);
    const top = Math.max(ga.max || 0, ...vals, 1);
    g.strokeStyle = "#2e8b57";
    g.lineWidth = 1.5;
    g.beginPath();
    let last = null;
    for (const p of ga.points) {
      const x = Math.max(LEFT, this.xOf(p.ts_ms * 1000));
      const yy = y + GAUGE - 4 - (GAUGE - 8) * p.value / top;
      if (last === null) g.moveTo(x, yy);
      else { g.lineTo(x, last); g.lineTo(x, yy); }
      last = yy;
    }
    if (last !== null) g.lineTo(W, last);
    g.stroke();
  }

  hit(e) {
    const r = this.canvas.getBoundingClientRect();
    const x = e.clientX - r.left, y = e.clientY - r.top;
    let best = null, bestD = 4;
    for (const [s, mx, my, w, h] of this.marks || []) {
      if (y < my - 1 || y > my + h + 1) continue;
      const d = x < mx ? mx - x : x > mx + w ? x - mx - w : 0;
      if (d < bestD) { best = s; bestD = d; }
    }
    return best;
  }

  // Where a span was drawn, in page coordinates: for tests.
  rectOfSpan(pred) {
    const r = this.canvas.getBoundingClientRect();
    for (const [s, x, y, w, h] of this.marks || []) if (pred(s)) return { x: r.left + x, y: r.top + y, w, h };
    return null;
  }
}
