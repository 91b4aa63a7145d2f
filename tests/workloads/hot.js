// Known JIT workload for Node: nearly all CPU time in hotLoop. Run with --perf-basic-prof.
function hotLoop(n) {
  let x = 0;
  for (let i = 0; i < n; i++) x = (x * 31 + i) % 1000003;
  return x;
}
const end = Date.now() + 1000 * Number(process.argv[2] || 3);
let s = 0;
while (Date.now() < end) s += hotLoop(100000);
console.log(s > 0 ? "done" : "zero");
