// NEAR push notifications in the browser: subscribe a NEAR account to a push gateway.
//
// Reusable as an ES module by any frontend:
//   import { subscribe, unsubscribe, setMuted, setQuietHours, inbox, markRead, status, renew }
//     from "https://<gateway>/main.js";   (or from the "near-push-client" package: see README.md here)
//   await subscribe("bob.near", { serviceWorker: "/sw.js" });   // call from a click handler
//   renew({ serviceWorker: "/sw.js" });                         // call on every page load
// The service worker must be served by the frontend's own origin: copy the gateway's /sw.js and
// /signing.js, or importScripts the gateway's sw.js into your own worker (webclient/README.md).
// When this file is the gateway's own page (index.html), it also wires the page's controls.

import "./signing.js"; // sets globalThis.NearPushSigning (shared with the service worker)

const GATEWAY_URL = new URL(".", import.meta.url).href.replace(/\/$/, "");
const STATE_CACHE = "near-push";
const STATE_KEY = "/__near-push/state";

export const NOTIFICATION_TYPES = [
  ["like", "Likes"], ["comment", "Comments"], ["mention", "Mentions"], ["follow", "New followers"],
  ["repost", "Reposts"], ["poke", "Pokes"], ["star", "Stars"], ["custom", "App messages"],
  // account activity on chain (the neardata watcher)
  ["near_transfer", "NEAR received"], ["ft_transfer", "Tokens received"], ["nft_transfer", "NFTs received"],
  ["add_key", "Keys added"], ["delete_key", "Keys deleted"], ["receipt_failed", "Failed transactions"],
];

/** Does this browser support Web Push at all? */
export function supported() {
  return typeof window !== "undefined" && "serviceWorker" in navigator && "PushManager" in window &&
    "Notification" in window;
}

function keyBytes(base64url) {
  const b64 = base64url.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (base64url.length % 4)) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

// Whether `sub` was made with the applicationServerKey `key` (bytes). A browser that does not say
// (no `options.applicationServerKey`) is taken at its word: nothing to compare.
function boundTo(sub, key) {
  const own = sub.options && sub.options.applicationServerKey;
  if (!own) return true;
  const bytes = new Uint8Array(own);
  return bytes.length === key.length && bytes.every((b, i) => b === key[i]);
}

// status() and renew() ask the gateway the same things at each page load: one request each, not
// one per caller (each counts against the gateway's per-IP limit). Forgotten after a second, and
// when the subscription is replaced.
const asked = new Map();
function askOnce(key, ask) {
  const hit = asked.get(key);
  if (hit && hit.until > Date.now()) return hit.answer;
  const answer = ask();
  asked.set(key, { answer, until: Date.now() + 1000 });
  return answer;
}

function serverKey(server) {
  return askOnce(`key ${server}`, async () => keyBytes((await (await fetch(`${server}/vapid-public-key`)).json()).publicKey));
}

// The browser's subscription for the gateway's current VAPID key. One bound to another key (the key
// file lost or rotated, or a frontend moving from another server) would be refused by its push
// service (401) for every push: it is unsubscribed and replaced. `replaced`: the old endpoint, if any.
async function currentSubscription(reg, key, { refused = false } = {}) {
  let sub = await reg.pushManager.getSubscription();
  let replaced = null;
  if (sub && (refused || !boundTo(sub, key))) {
    asked.clear(); // what was asked of the old subscription
    replaced = sub.endpoint;
    await sub.unsubscribe().catch(() => {});
    sub = null;
  }
  sub = sub || (await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }));
  return { sub, replaced };
}

// Whether the gateway saw this browser's push service refuse its pushes as not its own (401/403,
// reported by GET /v1/streams until the stream is registered again): a subscription to replace even
// when the browser does not say which key it is bound to.
function refusedByPushService(serviceWorker) {
  return askOnce("refused", async () => {
    const { streams } = await signedFetch("GET", "/v1/streams", undefined, { serviceWorker })
      .catch(() => ({ streams: [] }));
    return streams.some((s) => s.needsRenewal);
  });
}

// Register every stream of the browser for `sub`, with its mutes and quiet hours (the gateway keeps
// mutes for the account, but one made on a gateway that kept them per stream went with a stream
// pushed out; quiet hours go with a stream). Never throws; resolves to the accounts registered.
async function registerStreams(state, sub) {
  const server = state.server || GATEWAY_URL;
  const subscription = sub.toJSON();
  const registered = [];
  for (const { accountId, gateway } of state.streams) {
    try {
      await post(server, "/subscriptions/create", { accountId, gateway, subscription }, state.gatewayKey);
      registered.push(accountId);
    } catch (_) {
      /* quiet: the next page load tries again */
    }
  }
  for (const [key, muted] of Object.entries(state.muted || {})) {
    const [accountId, ...type] = key.split("/");
    if (!muted || !registered.includes(accountId)) continue;
    await post(server, "/preferences/set", { accountId, endpoint: sub.endpoint, dapp: type.join("/"), block: true },
      state.gatewayKey).catch(() => {});
  }
  for (const accountId of state.quiet ? registered : []) {
    await post(server, "/preferences/quiet", { accountId, endpoint: sub.endpoint, ...state.quiet }, state.gatewayKey)
      .catch(() => {});
  }
  return registered;
}

// After a replaced subscription: every stream goes to the new endpoint (registerStreams) and the old
// endpoint's streams are deleted. Resolves to the accounts registered again.
async function carryOver(state, sub, oldEndpoint) {
  const moved = await registerStreams(state, sub);
  if (oldEndpoint && oldEndpoint !== sub.endpoint) {
    await post(state.server || GATEWAY_URL, "/subscriptions/delete", { endpoint: oldEndpoint }, state.gatewayKey)
      .catch(() => {});
  }
  state.endpoint = sub.endpoint;
  await writeState(state);
  return moved;
}

async function post(server, path, body, gatewayKey = null) {
  const headers = { "Content-Type": "application/json" };
  if (gatewayKey) headers["X-Gateway-Key"] = gatewayKey;
  const r = await fetch(`${server}${path}`, { method: "POST", headers, body: JSON.stringify(body) });
  if (!r.ok) {
    const err = await r.json().catch(() => ({}));
    throw Object.assign(new Error(err.message || `HTTP ${r.status}`), { code: err.code });
  }
}

// What the service worker needs to re-register on pushsubscriptionchange, shared through Cache Storage.
export async function readState() {
  const hit = await (await caches.open(STATE_CACHE)).match(STATE_KEY);
  return hit ? hit.json() : { server: GATEWAY_URL, streams: [], muted: {} };
}

async function writeState(state) {
  const body = JSON.stringify(state);
  await (await caches.open(STATE_CACHE)).put(STATE_KEY, new Response(body, { headers: { "Content-Type": "application/json" } }));
}

async function registration(serviceWorker) {
  return navigator.serviceWorker.register(serviceWorker);
}

/**
 * "unsupported" | "blocked" | "subscribed" | "needs renewal" | "unsubscribed", with the accounts and
 * endpoint. "needs renewal": the subscription is bound to another VAPID key than the gateway's, or the
 * gateway saw its push service refuse pushes as not its own; `renew()` (every page load) replaces it.
 */
export async function status({ serviceWorker = `${GATEWAY_URL}/sw.js` } = {}) {
  if (!supported()) return { state: "unsupported", accounts: [] };
  if (Notification.permission === "denied") return { state: "blocked", accounts: [] };
  const reg = await registration(serviceWorker);
  const sub = await reg.pushManager.getSubscription();
  const state = await readState();
  if (!sub || !state.streams.length) return { state: "unsubscribed", accounts: [] };
  const accounts = state.streams.map((s) => s.accountId);
  const current = await serverKey(state.server || GATEWAY_URL).then((key) => boundTo(sub, key), () => true);
  const renewal = !current || (await refusedByPushService(serviceWorker));
  return { state: renewal ? "needs renewal" : "subscribed", accounts, endpoint: sub.endpoint };
}

/**
 * Ask permission (call this from a click handler), subscribe the browser and register the stream.
 * `gateway` is the frontend whose pages notifications open (default: this page's origin).
 */
// Proof of account ownership for gateways with [security] require_signed_subscriptions:
// `sign({message, recipient, nonce})` is the wallet's NEP-413 signMessage, answering {publicKey, signature}.
async function signedMessage(sign, { accountId, gateway, endpoint, recipient }) {
  const nonce = crypto.getRandomValues(new Uint8Array(32));
  const message = JSON.stringify({ action: "subscribe", accountId, gateway, endpoint, timestamp: Date.now() });
  const { publicKey, signature } = await sign({ message, recipient, nonce });
  return { publicKey, signature, nonce: btoa(String.fromCharCode(...nonce)), recipient, message };
}

export async function subscribe(accountId, { gateway = location.origin, server = GATEWAY_URL,
  serviceWorker = `${GATEWAY_URL}/sw.js`, gatewayKey = null, sign = null, recipient = "near-push-gateway" } = {}) {
  if (!supported()) throw Object.assign(new Error("Push notifications are not supported here"), { code: "unsupported" });
  const permission = await Notification.requestPermission();
  if (permission !== "granted") throw Object.assign(new Error("Notifications are blocked"), { code: "blocked" });
  const reg = await registration(serviceWorker);
  await navigator.serviceWorker.ready;
  const { sub, replaced } = await currentSubscription(reg, await serverKey(server));
  if (replaced) await carryOver({ ...(await readState()), server, gatewayKey }, sub, replaced);
  const body = { accountId, gateway, subscription: sub.toJSON() };
  if (sign) body.signed = await signedMessage(sign, { accountId, gateway, endpoint: sub.endpoint, recipient });
  await post(server, "/subscriptions/create", body, gatewayKey);
  const state = await readState();
  state.server = server;
  state.gatewayKey = gatewayKey;
  state.endpoint = sub.endpoint; // for the service worker's Mute action
  state.streams = [...state.streams.filter((s) => s.accountId !== accountId), { accountId, gateway }];
  await writeState(state);
  if (state.quiet) { // this browser's quiet hours hold for every account it gets notifications for
    await post(server, "/preferences/quiet", { accountId, endpoint: sub.endpoint, ...state.quiet }, gatewayKey)
      .catch(() => {});
  }
  return sub;
}

/** Stop notifications: remove the streams from the gateway, then the browser's subscription. */
export async function unsubscribe({ serviceWorker = `${GATEWAY_URL}/sw.js` } = {}) {
  const reg = await registration(serviceWorker);
  const sub = await reg.pushManager.getSubscription();
  const state = await readState();
  if (sub) {
    await post(state.server || GATEWAY_URL, "/subscriptions/delete", { endpoint: sub.endpoint }, state.gatewayKey).catch(() => {});
    await sub.unsubscribe();
  }
  await writeState({ server: state.server || GATEWAY_URL, streams: [], muted: {} });
}

/** Mute or unmute one notification type for an account, on all its browsers (the NEAR server's mutes). */
export async function setMuted(accountId, type, muted, { serviceWorker = `${GATEWAY_URL}/sw.js` } = {}) {
  const reg = await registration(serviceWorker);
  const sub = await reg.pushManager.getSubscription();
  if (!sub) throw Object.assign(new Error("Not subscribed"), { code: "unsubscribed" });
  const state = await readState();
  await post(state.server || GATEWAY_URL, "/preferences/set", { accountId, endpoint: sub.endpoint, dapp: type, block: muted },
    state.gatewayKey);
  state.muted = { ...state.muted, [`${accountId}/${type}`]: muted };
  await writeState(state);
}

/** A /v1 request signed with this browser's subscription secret; the answer's JSON (null for 204). */
async function signedFetch(method, target, body, { serviceWorker = `${GATEWAY_URL}/sw.js` } = {}) {
  const reg = await registration(serviceWorker);
  const sub = await reg.pushManager.getSubscription();
  if (!sub) throw Object.assign(new Error("Not subscribed"), { code: "unsubscribed" });
  const state = await readState();
  const json = sub.toJSON();
  const text = body === undefined ? "" : JSON.stringify(body);
  const headers = await globalThis.NearPushSigning.signedHeaders({
    auth: json.keys.auth, endpoint: json.endpoint, method, target, body: text,
  });
  if (text) headers["Content-Type"] = "application/json";
  const r = await fetch(`${state.server || GATEWAY_URL}${target}`, { method, headers, body: text || undefined });
  if (!r.ok) {
    const err = await r.json().catch(() => ({}));
    throw Object.assign(new Error(err.message || `HTTP ${r.status}`), { code: err.code, status: r.status });
  }
  return r.status === 204 ? null : r.json();
}

/**
 * The account's notifications for this browser, newest first: `{items: [{id, type, title, body, url,
 * createdAt, read, row}], next}`; pass `next` as `cursor` for the page after.
 */
export async function inbox(accountId, { cursor = null, limit = 50, serviceWorker } = {}) {
  const query = new URLSearchParams({ account: accountId, limit: String(limit) });
  if (cursor) query.set("cursor", cursor);
  return signedFetch("GET", `/v1/inbox?${query}`, undefined, { serviceWorker });
}

/** The app badge after reading: this browser's unread count (Badging API, where there is one). */
async function showUnread(accountId, { serviceWorker } = {}) {
  if (typeof navigator === "undefined" || !("setAppBadge" in navigator)) return;
  const { unread } = await unreadCount(accountId, { serviceWorker });
  if (unread > 0) await navigator.setAppBadge(unread);
  else await navigator.clearAppBadge();
}

/** How many of the account's notifications this browser has not read: `{unread, capped}`. */
export async function unreadCount(accountId, { serviceWorker } = {}) {
  return signedFetch("GET", `/v1/inbox/unread?${new URLSearchParams({ account: accountId })}`, undefined,
    { serviceWorker });
}

/** Mark notifications read for this browser: `{ids: [...]}`, `{upTo: id}` or `{all: true}`. */
export async function markRead(accountId, { ids = [], upTo = null, all = false, serviceWorker } = {}) {
  const body = { accountId, ids, all };
  if (upTo !== null) body.upTo = upTo;
  await signedFetch("POST", "/v1/inbox/read", body, { serviceWorker });
  await showUnread(accountId, { serviceWorker }).catch(() => {});
}

/**
 * Quiet hours for this browser: `{start: "22:00", end: "07:00"}` in the browser's own time zone (from
 * `Intl`), for every subscribed account; `null` clears them. Pushes inside the window, except urgent
 * ones (security alerts), are held and come as one digest when it ends.
 */
export async function setQuietHours(window, { serviceWorker = `${GATEWAY_URL}/sw.js` } = {}) {
  const reg = await registration(serviceWorker);
  const sub = await reg.pushManager.getSubscription();
  const state = await readState();
  if (!sub || !state.streams.length) throw Object.assign(new Error("Not subscribed"), { code: "unsubscribed" });
  const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const hours = window ? { start: window.start, end: window.end } : { start: null, end: null };
  for (const { accountId } of state.streams) {
    await post(state.server || GATEWAY_URL, "/preferences/quiet", { accountId, endpoint: sub.endpoint, timeZone, ...hours },
      state.gatewayKey);
  }
  state.quiet = window ? { ...hours, timeZone } : null;
  await writeState(state);
  return state.quiet;
}

/**
 * Register this browser's streams again, quietly (call it on every page load; the gateway's own page
 * does), with their mutes and quiet hours. Anyone may register streams for any account, and at `max_streams_per_account` the gateway
 * drops the account's least recently refreshed ones: renewing keeps this browser the most recent, and
 * brings its streams (and mutes) back if junk ones pushed them out. Never asks anything, never throws;
 * resolves to the accounts renewed. Unsigned: a gateway requiring signed subscriptions refuses it.
 */
export async function renew({ serviceWorker = `${GATEWAY_URL}/sw.js` } = {}) {
  try {
    if (!supported() || Notification.permission !== "granted") return [];
    const reg = await registration(serviceWorker);
    const state = await readState();
    if (!(await reg.pushManager.getSubscription()) || !state.streams.length) return [];
    const server = state.server || GATEWAY_URL;
    // bound to another key, or refused by its push service: replaced, everything carried over
    const refused = await refusedByPushService(serviceWorker);
    const { sub, replaced } = await currentSubscription(reg, await serverKey(server), { refused });
    if (replaced) return await carryOver(state, sub, replaced);
    return await registerStreams(state, sub);
  } catch (_) {
    return [];
  }
}

// --- the gateway's own page ------------------------------------------------------------

const MESSAGES = {
  unsupported: "This browser cannot receive push notifications.",
  blocked: "Notifications are blocked for this site. Allow them in the browser's site settings, then reload.",
  unsubscribed: "Not subscribed.",
  "needs renewal": "This browser's subscription is for an old key of the gateway: renewing it…",
};

function wirePage() {
  const $ = (id) => document.getElementById(id);
  const form = $("subscribe-form");
  const show = (state, text) => {
    $("state").dataset.state = state;
    $("state").textContent = text || MESSAGES[state] || state;
    $("subscribe").disabled = state === "unsupported" || state === "blocked";
    $("unsubscribe").hidden = state !== "subscribed";
    $("mute").hidden = state !== "subscribed";
    $("quiet").hidden = state !== "subscribed";
    $("inbox").hidden = state !== "subscribed";
  };
  const account = () => form.account.value.trim();

  const list = $("types");
  for (const [type, label] of NOTIFICATION_TYPES) {
    const item = document.createElement("label");
    item.innerHTML = `<input type="checkbox" name="mute" value="${type}"> ${label}`;
    list.appendChild(item);
  }

  async function refresh() {
    const s = await status();
    if (s.state === "subscribed") {
      form.account.value = form.account.value || s.accounts[0];
      const state = await readState();
      for (const box of list.querySelectorAll("input")) box.checked = !!state.muted[`${account()}/${box.value}`];
      if (state.quiet) [$("quiet-start").value, $("quiet-end").value] = [state.quiet.start, state.quiet.end];
      show("subscribed", `Subscribed as ${s.accounts.join(", ")}.`);
    } else {
      show(s.state);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    show("working", "Subscribing…");
    try {
      await subscribe(account(), { gateway: form.opens.value });
      await refresh();
      await showInbox();
    } catch (err) {
      if (err.code === "blocked") show("blocked");
      else show("error", `Could not subscribe: ${err.message}`);
    }
  });
  $("unsubscribe").addEventListener("click", async () => {
    await unsubscribe();
    await refresh();
  });
  list.addEventListener("change", async (event) => {
    const box = event.target;
    try {
      await setMuted(account(), box.value, box.checked);
      $("mute-state").textContent = `${box.checked ? "Muted" : "Unmuted"} ${box.parentElement.textContent.trim()}.`;
    } catch (err) {
      box.checked = !box.checked;
      $("mute-state").textContent = `Could not change it: ${err.message}`;
    }
  });
  const quietState = (text) => { $("quiet-state").textContent = text; };
  $("quiet-save").addEventListener("click", async () => {
    try {
      const quiet = await setQuietHours({ start: $("quiet-start").value, end: $("quiet-end").value });
      quietState(`Quiet from ${quiet.start} to ${quiet.end} (${quiet.timeZone}).`);
    } catch (err) {
      quietState(`Could not set quiet hours: ${err.message}`);
    }
  });
  $("quiet-clear").addEventListener("click", async () => {
    try {
      await setQuietHours(null);
      quietState("No quiet hours.");
    } catch (err) {
      quietState(`Could not clear quiet hours: ${err.message}`);
    }
  });
  let inboxAsked = 0; // the latest showInbox(): an earlier one answered later must not overwrite it
  async function showInbox() {
    const asked = ++inboxAsked;
    const list = $("inbox-items");
    const state = await readState();
    const items = [];
    for (const { accountId } of state.streams) {
      const page = await inbox(accountId).catch(() => ({ items: [] }));
      items.push(...page.items);
    }
    if (asked !== inboxAsked) return;
    items.sort((a, b) => Number(a.read) - Number(b.read) || b.createdAt - a.createdAt); // unread first
    list.replaceChildren(...items.map((item) => {
      const li = document.createElement("li");
      li.dataset.id = item.id;
      li.dataset.read = String(item.read);
      const link = document.createElement("a");
      link.href = item.url;
      link.textContent = `${item.title}: ${item.body}`;
      link.addEventListener("click", () => {
        markRead(item.row.receiver, { ids: [item.id] }).catch(() => {});
      });
      li.append(link);
      return li;
    }));
    $("inbox-state").textContent = items.length ? `${items.filter((i) => !i.read).length} unread` : "Nothing yet.";
  }
  window.nearPushShowInbox = showInbox; // for the page's own refresh (and tests)
  $("mark-all-read").addEventListener("click", async () => {
    const state = await readState();
    for (const { accountId } of state.streams) await markRead(accountId, { all: true }).catch(() => {});
    await showInbox();
  });
  refresh().then(() => ($("inbox").hidden ? null : showInbox())).catch((err) => show("error", err.message));
  renew().then(async (accounts) => {
    // a subscription replaced for the gateway's current key: shown as subscribed again
    if ($("state").dataset.state === "needs renewal") await refresh().catch(() => {});
    document.body.dataset.renewed = accounts.join(",");
  });
}

if (typeof document !== "undefined" && document.getElementById("subscribe-form")) wirePage();
