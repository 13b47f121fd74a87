// Subscribe this browser to the gateway's push notifications for one NEAR account.
// Reusable as an ES module: import { subscribe, unsubscribe } from "<gateway>/main.js".

const gatewayUrl = new URL(".", import.meta.url).href.replace(/\/$/, "");

export function supported() {
  return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
}

function keyBytes(base64url) {
  const b64 = base64url.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (base64url.length % 4)) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

async function post(path, body) {
  const r = await fetch(`${gatewayUrl}${path}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).message || `HTTP ${r.status}`);
}

export async function subscribe(accountId) {
  const registration = await navigator.serviceWorker.register(`${gatewayUrl}/sw.js`);
  if ((await Notification.requestPermission()) !== "granted") throw new Error("blocked");
  const { publicKey } = await (await fetch(`${gatewayUrl}/vapid-public-key`)).json();
  const subscription = await registration.pushManager.subscribe({
    userVisibleOnly: true, applicationServerKey: keyBytes(publicKey),
  });
  await post("/subscriptions/create", { accountId, gateway: location.origin, subscription: subscription.toJSON() });
  localStorage.setItem("near-push-account", accountId);
  return subscription;
}

export async function unsubscribe() {
  const registration = await navigator.serviceWorker.getRegistration(`${gatewayUrl}/sw.js`);
  const subscription = registration && (await registration.pushManager.getSubscription());
  if (!subscription) return;
  await post("/subscriptions/delete", { endpoint: subscription.endpoint }).catch(() => {});
  await subscription.unsubscribe();
  localStorage.removeItem("near-push-account");
}

function show(text) {
  const el = document.getElementById("state");
  if (el) el.textContent = text;
}

if (typeof document !== "undefined" && document.getElementById("subscribe-form")) {
  const form = document.getElementById("subscribe-form");
  const off = document.getElementById("unsubscribe");
  if (!supported()) {
    show("This browser does not support push notifications.");
    form.querySelector("button").disabled = true;
  } else if (Notification.permission === "denied") {
    show("Notifications are blocked for this site in the browser settings.");
  } else {
    const account = localStorage.getItem("near-push-account");
    show(account ? `Subscribed as ${account}.` : "Not subscribed.");
    off.hidden = !account;
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    show("Subscribing…");
    try {
      await subscribe(form.account.value.trim());
      show(`Subscribed as ${form.account.value.trim()}.`);
      off.hidden = false;
    } catch (err) {
      show(err.message === "blocked" ? "Notifications are blocked." : `Could not subscribe: ${err.message}`);
    }
  });
  off.addEventListener("click", async () => {
    await unsubscribe();
    off.hidden = true;
    show("Not subscribed.");
  });
}
