// Drives the Baton UI in Debian's headless Chromium with playwright-core, for the Rust UI tests
// (crates/cli/tests/suite/ui.rs) and the UI benchmark (bench/ui.sh).
//
//   node drive.mjs SCENARIO BASE_URL OUT_DIR [ARGS as JSON]
//
// Each scenario checks what the page shows, saves a screenshot to OUT_DIR, prints one JSON line
// of what it measured and exits 0; any failed check prints the reason and exits 1.

import { chromium } from "playwright-core";
import { writeFileSync } from "node:fs";

const [scenario, base, out, rawArgs] = process.argv.slice(2);
const args = rawArgs ? JSON.parse(rawArgs) : {};

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function loaded(page) {
  await page.waitForFunction(() => document.body.dataset.loaded === "1", null, { timeout: 30000 });
}

// The colour drawn in a node, above its label, read back from the canvas.
async function pixelOf(page, canvasSel, rect) {
  return page.evaluate(([sel, r]) => {
    const c = document.querySelector(sel);
    const box = c.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const x = Math.round((r.x - box.left + Math.min(r.w / 2, 40)) * dpr), y = Math.round((r.y - box.top + 1.5) * dpr);
    const d = c.getContext("2d").getImageData(x, y, 1, 1).data;
    return [d[0], d[1], d[2]];
  }, [canvasSel, rect]);
}

const scenarios = {
  // The workload's functions are drawn and listed; search finds leaf_hot; clicking zooms.
  async explore(page) {
    await page.goto(`${base}/explore?since=15m&pid=${args.pid}`);
    await loaded(page);
    const fns = await page.$$eval("#top td.fn", (tds) => tds.map((t) => t.textContent));
    for (const f of ["leaf_hot", "leaf_cold", "mid"]) check(fns.includes(f), `the top table lacks ${f}: ${fns.slice(0, 10)}`);
    const hot = await page.evaluate(() => window.__baton.flame.rectOf("leaf_hot"));
    check(hot && hot.w > 50, `leaf_hot was not drawn wide: ${JSON.stringify(hot)}`);
    // Search: highlight and share.
    await page.keyboard.press("/");
    await page.keyboard.type("leaf_hot");
    await page.waitForFunction(() => /search matched/.test(document.getElementById("match").textContent));
    const share = await page.$eval("#match", (e) => parseFloat(e.textContent.match(/([\d.]+)%/)[1]));
    check(share > 60 && share < 90, `search matched ${share}% for leaf_hot, not about 75%`);
    const px = await pixelOf(page, "#flame", await page.evaluate(() => window.__baton.flame.rectOf("leaf_hot")));
    check(px[0] > 200 && px[1] < 100 && px[2] > 200, `leaf_hot is not highlighted: rgb ${px}`);
    check(page.url().includes("search=leaf_hot"), `the search is not in the URL: ${page.url()}`);
    await page.screenshot({ path: `${out}/explore-search.png` });
    // Click to zoom on mid: it fills the width, and the URL keeps the focus.
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => document.getElementById("match").textContent === "");
    const mid = await page.evaluate(() => window.__baton.flame.rectOf("mid"));
    const before = mid.w;
    await page.mouse.click(mid.x + mid.w / 2, mid.y + mid.h / 2);
    await page.waitForTimeout(500);
    const after = await page.evaluate(() => window.__baton.flame.rectOf("mid"));
    const width = await page.$eval("#flame", (c) => c.clientWidth);
    check(after.w > width * 0.97 && after.w >= before, `mid did not fill the width after a click: ${before} -> ${after.w} of ${width}`);
    check(decodeURIComponent(page.url()).includes("mid"), `the zoom is not in the URL: ${page.url()}`);
    const crumbs = await page.$eval("#crumbs", (e) => e.textContent);
    check(crumbs.includes("mid"), `the breadcrumbs lack mid: ${crumbs}`);
    const frames = await page.evaluate(() => window.__baton.flame.frameTimes.length);
    check(frames > 3, `the zoom was not animated (${frames} frames)`);
    // The link reproduces the view.
    const link = page.url();
    await page.goto(link);
    await loaded(page);
    const again = await page.evaluate(() => window.__baton.flame.rectOf("mid"));
    check(again && again.w > width * 0.97, "a reload of the link lost the zoom");
    // Sandwich of leaf_hot: its caller mid is drawn.
    await page.goto(`${base}/explore?since=15m&pid=${args.pid}&view=sandwich&fn=leaf_hot`);
    await loaded(page);
    const caller = await page.evaluate(() => window.__baton.sandwich.up.rectOf("mid"));
    check(caller && caller.w > 100, "the sandwich of leaf_hot lacks its caller mid");
    await page.goto(link);
    await loaded(page);
    await page.screenshot({ path: `${out}/explore.png` });
    return { share, zoomFrames: frames, timings: await page.evaluate(() => window.__baton.timings) };
  },

  // A: a range where the workload ran 75/25; B: one where it ran 25/75.
  async compare(page) {
    const u = `${base}/compare?since=15m&pid=${args.pid}&a.from=${args.a[0]}&a.to=${args.a[1]}&b.from=${args.b[0]}&b.to=${args.b[1]}`;
    await page.goto(u);
    await loaded(page);
    const delta = await page.$$eval("#top tbody tr", (trs) => Object.fromEntries(trs.map((tr) => [tr.dataset.fn, { d: parseFloat(tr.querySelector("td.delta").textContent), cls: tr.querySelector("td.delta").className }])));
    check(delta.leaf_hot && delta.leaf_hot.d < -20 && /shrank/.test(delta.leaf_hot.cls), `leaf_hot's delta: ${JSON.stringify(delta.leaf_hot)}`);
    check(delta.leaf_cold && delta.leaf_cold.d > 20 && /grew/.test(delta.leaf_cold.cls), `leaf_cold's delta: ${JSON.stringify(delta.leaf_cold)}`);
    const hot = await pixelOf(page, "#flame", await page.evaluate(() => window.__baton.flame.rectOf("leaf_hot")));
    const cold = await pixelOf(page, "#flame", await page.evaluate(() => window.__baton.flame.rectOf("leaf_cold")));
    // Green: G well above R; red: R well above G.
    check(hot[1] > hot[0] + 40, `leaf_hot (less in B) is not green: rgb ${hot}`);
    check(cold[0] > cold[1] + 40, `leaf_cold (more in B) is not red: rgb ${cold}`);
    await page.screenshot({ path: `${out}/compare.png` });
    return { leaf_hot: { delta: delta.leaf_hot.d, rgb: hot }, leaf_cold: { delta: delta.leaf_cold.d, rgb: cold } };
  },

  // An on-demand run launched from the form reaches done and links to its profile.
  async runs(page) {
    await page.goto(`${base}/runs`);
    await loaded(page);
    await page.selectOption("#r-profiler", "cpu");
    await page.fill("#r-target", `pid:${args.pid}`);
    await page.fill("#r-duration", "3s");
    check(await page.$("#r-force"), "an admin does not see the force switch");
    await page.click("#r-go");
    await page.waitForSelector("#run-live");
    const states = new Set();
    const t0 = Date.now();
    while (Date.now() - t0 < 40000) {
      const s = await page.$eval("#run-live", (e) => e.dataset.state).catch(() => "");
      states.add(s);
      if (s === "done") break;
      check(!["failed", "cancelled"].includes(s), `the run ended ${s}`);
      await page.waitForTimeout(250);
    }
    check(states.has("done"), `the run never reached done: ${[...states]}`);
    await page.waitForSelector("#run-profile");
    await page.screenshot({ path: `${out}/runs.png` });
    await page.click("#run-profile");
    await loaded(page);
    check(/run=\d+/.test(page.url()), `the profile link does not select the run: ${page.url()}`);
    const fns = await page.$$eval("#top td.fn", (tds) => tds.map((t) => t.textContent));
    check(fns.includes("leaf_hot"), `the run's profile lacks leaf_hot: ${fns.slice(0, 8)}`);
    await page.screenshot({ path: `${out}/runs-profile.png` });
    return { states: [...states] };
  },

  // A viewer gets no force switch and no run button.
  async viewer(page) {
    await page.goto(`${base}/runs`);
    await loaded(page);
    check(!(await page.$("#r-force")), "a viewer sees the force switch");
    check(await page.$eval("#r-go", (b) => b.disabled), "a viewer may press Run");
    return {};
  },

  // The sleeping thread's off-CPU interval is drawn, and clicking it shows its stack.
  async timeline(page) {
    await page.goto(`${base}/timeline?pid=${args.pid}&since=1m`);
    await loaded(page);
    const lanes = await page.$$eval("#tl-lanes tbody tr", (trs) => trs.map((t) => t.textContent));
    check(lanes.length >= 1, "no lane");
    const r = await page.evaluate(() => window.__baton.timeline.rectOfSpan((s) => s.kind === "offcpu" && s.dur_us > 150000));
    check(r && r.w >= 1, `no off-CPU interval of the sleeper drawn: ${JSON.stringify(r)}`);
    await page.mouse.click(r.x + r.w / 2, r.y + r.h / 2);
    await page.waitForFunction(() => document.getElementById("tl-detail").dataset.kind === "offcpu");
    const text = await page.$eval("#tl-detail", (e) => e.textContent);
    check(/off CPU \(sleeping\) for (1\d\d|2\d\d)\.\d ms/.test(text), `the interval's detail: ${text.slice(0, 80)}`);
    check(text.includes("wait_here"), `the interval's stack lacks wait_here:\n${text}`);
    let cpu = null;
    if (args.cpu_pid) {
      await page.goto(`${base}/timeline?pid=${args.cpu_pid}&since=1m`);
      await loaded(page);
      cpu = await page.evaluate(() => window.__baton.timeline.lanes.reduce((n, l) => n + l.cpu, 0));
      check(cpu > 10, `the busy process has ${cpu} CPU ticks`);
      await page.goto(`${base}/timeline?pid=${args.pid}&since=1m`);
      await loaded(page);
      const r2 = await page.evaluate(() => window.__baton.timeline.rectOfSpan((s) => s.kind === "offcpu" && s.dur_us > 150000));
      await page.mouse.click(r2.x + r2.w / 2, r2.y + r2.h / 2);
    }
    await page.screenshot({ path: `${out}/timeline.png` });
    return { lanes, cpuTicks: cpu, detail: text.split("\n")[0] };
  },

  // The timeline of a process on a fleet host (spans shipped by its agent, kept by ClickHouse):
  // CPU ticks in its lane, and a tick's stack through one of split's leaves.
  async fleettimeline(page) {
    await page.goto(`${base}/timeline?pid=${args.pid}&host=${args.host}&since=5m`);
    await loaded(page);
    const cpu = await page.evaluate(() => window.__baton.timeline.lanes.reduce((n, l) => n + l.cpu, 0));
    check(cpu >= 20, `the fleet host's process has ${cpu} CPU ticks`);
    // One of the run's 99 Hz ticks (10 ms wide): whole-host profiling's 19 Hz ticks of the same
    // process begin at its exec, before it reaches its loop.
    const r = await page.evaluate(() => window.__baton.timeline.rectOfSpan((s) => s.kind === "cpu" && s.dur_us < 20000));
    check(r, "no tick of the 99 Hz run is drawn");
    await page.mouse.click(r.x + r.w / 2, r.y + r.h / 2);
    await page.waitForFunction(() => document.getElementById("tl-detail").dataset.kind === "cpu");
    const text = await page.$eval("#tl-detail", (e) => e.textContent);
    check(/leaf_hot|leaf_cold/.test(text), `the tick's stack lacks split's leaves:\n${text}`);
    await page.screenshot({ path: `${out}/timeline-fleet.png` });
    return { cpuTicks: cpu };
  },

  async fleet(page) {
    await page.goto(`${base}/fleet`);
    await loaded(page);
    const rows = await page.$$eval("#fleet-table tbody tr", (trs) => trs.map((t) => t.textContent));
    check(rows.length >= (args.hosts || 1), `fleet rows: ${rows}`);
    for (const h of args.names || []) check(rows.some((r) => r.includes(h)), `no row for ${h}: ${rows}`);
    if (args.names) check(rows.every((r) => /% of/.test(r)), `an agent has no overhead figure: ${rows}`);
    await page.screenshot({ path: `${out}/fleet.png` });
    return { rows };
  },

  async config(page) {
    await page.goto(`${base}/config`);
    await loaded(page);
    const v = await page.$eval("#config-version", (e) => e.textContent);
    const errors = await page.$eval("#config-errors", (e) => e.textContent);
    if (args.error) check(errors.includes(args.error), `the rejected tree's errors: ${errors}`);
    await page.screenshot({ path: `${out}/config.png` });
    return { version: v, errors };
  },

  // First frame and zoom rate on a large profile (bench/ui.sh).
  async perf(page) {
    const results = [];
    for (let k = 0; k < (args.repeat || 5); k++) {
      await page.goto(`${base}/explore?${args.query}`);
      await loaded(page);
      await page.waitForFunction(() => window.__baton.timings.firstFrameMs > 0);
      const t = await page.evaluate(() => window.__baton.timings);
      // Zoom: into the widest child of the root, then back out, 6 times; frames per second
      // within the animations (the gaps between one animation's frames: the pause between two
      // zooms is not a frame), and draw times.
      const fps = await page.evaluate(async () => {
        const fv = window.__baton.flame, tr = window.__baton.tree;
        let best = 1;
        for (let c = 2; c < tr.end[1]; c = tr.end[c]) if (tr.v[c] > tr.v[best]) best = c;
        const gaps = [], all = [];
        const t0 = performance.now();
        for (let r = 0; r < 6; r++) {
          fv.frameTimes = [];
          fv.zoom(r % 2 ? 0 : best, true);
          await new Promise((res) => setTimeout(res, 400));
          const f = fv.frameTimes;
          for (let k = 1; k < f.length; k++) gaps.push(f[k].at - f[k - 1].at);
          all.push(...f);
        }
        const draws = all.map((x) => x.draw).sort((a, b) => a - b);
        const slow = gaps.filter((g) => g > 20).length;
        return { frames: all.length, seconds: (performance.now() - t0) / 1000, meanGapMs: gaps.reduce((a, b) => a + b, 0) / gaps.length, maxGapMs: Math.max(...gaps), slowFrames: slow, p95DrawMs: draws[Math.floor(draws.length * 0.95)], medianDrawMs: draws[Math.floor(draws.length / 2)] };
      });
      // Reference in the same page: how often this browser runs animation frames with nothing
      // to draw.
      const idleFps = await page.evaluate(() => new Promise((res) => {
        let n = 0; const t0 = performance.now();
        const f = (now) => { n++; if (now - t0 < 1500) requestAnimationFrame(f); else res(n / ((now - t0) / 1000)); };
        requestAnimationFrame(f);
      }));
      results.push({ ...t, zoom: { ...fps, idleFps } });
    }
    await page.screenshot({ path: `${out}/perf.png` });
    return { runs: results };
  },
};

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let code = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 950 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // A server with tokens: the token goes in through the URL fragment, as a user would paste it.
  if (args.token) {
    await page.goto(`${base}/config#token=${args.token}`);
    await page.waitForFunction(() => localStorage.getItem("baton-token"));
  }
  const result = await scenarios[scenario](page);
  check(errors.length === 0, `the page threw: ${errors.join("; ")}`);
  const line = JSON.stringify({ scenario, ok: true, ...result });
  writeFileSync(`${out}/${scenario}.json`, line + "\n");
  console.log(line);
} catch (e) {
  console.log(JSON.stringify({ scenario, ok: false, error: String(e.message || e) }));
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
