// Node peer: web-push's sendNotification with bounded concurrency, the way most gateways use it.
// Reads a JSON job on stdin: {subscriptions: [...], payload, vapid: {subject, publicKey, privateKey},
// count, concurrency, ttl}; prints {sent, wall, cpu} as JSON.
import webpush from "web-push";

const job = JSON.parse(await new Promise((resolve) => {
  let data = "";
  process.stdin.on("data", (c) => (data += c));
  process.stdin.on("end", () => resolve(data));
}));
webpush.setVapidDetails(job.vapid.subject, job.vapid.publicKey, job.vapid.privateKey);

let next = 0;
let sent = 0;
const failures = [];
const cpu0 = process.cpuUsage();
const t0 = performance.now();
async function worker() {
  while (next < job.count) {
    const i = next++;
    const sub = job.subscriptions[i % job.subscriptions.length];
    try {
      await webpush.sendNotification(sub, job.payload, { TTL: job.ttl, urgency: "normal" });
      sent++;
    } catch (err) {
      failures.push(String(err.statusCode || err.message));
    }
  }
}
await Promise.all(Array.from({ length: job.concurrency }, worker));
const wall = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
console.log(JSON.stringify({ sent, wall, cpu: (cpu.user + cpu.system) / 1e6, failures: failures.slice(0, 5) }));
