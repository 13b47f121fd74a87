// Service worker for NEAR push notifications: show every push, open its page on click, report what
// was shown and clicked, set the app badge, and keep the gateway's copy of the subscription current.
// A frontend serves a copy of this file from its own origin, or imports it into its own worker:
//   self.NEAR_PUSH_GATEWAY = "https://<gateway>/";  importScripts("https://<gateway>/sw.js");
try {
  importScripts(new URL("signing.js", self.NEAR_PUSH_GATEWAY || self.location).href);
} catch (_) {
  // A copy of this file served without signing.js beside it still shows every push; only the
  // receipts (which need signing) are left out.
}

const STATE_CACHE = "near-push";
const STATE_KEY = "/__near-push/state";
const FALLBACK_URL = "https://near.org/notifications";

// For payloads that are a bare NEAR row (the reference server's format) or anything else.
const TEXTS = {
  like: ["New like", "liked your post"], comment: ["New comment", "commented on your post"],
  mention: ["New mention", "mentioned you"], follow: ["New follower", "followed you"],
  unfollow: ["Follower lost", "unfollowed you"], poke: ["Poke", "poked you"],
  repost: ["New repost", "reposted your post"], star: ["New star", "starred your component"],
};

function legacyUrl(row) {
  if (String(row.valueType || "").startsWith("devgovgigs") && row.devhubPostId != null) {
    return `https://near.org/devhub.near/widget/app?page=post&id=${encodeURIComponent(row.devhubPostId)}`;
  }
  if (row.receiver && row.actionAtBlockHeight != null) {
    return `https://near.org/s/p?a=${encodeURIComponent(row.receiver)}&b=${encodeURIComponent(row.actionAtBlockHeight)}`;
  }
  return FALLBACK_URL;
}

// "Mute <type>" on a notification: what the type is called there.
const MUTE_LABELS = {
  like: "likes", comment: "comments", mention: "mentions", follow: "new followers", unfollow: "unfollows",
  poke: "pokes", repost: "reposts", star: "stars", custom: "app messages", near_transfer: "NEAR received",
  ft_transfer: "tokens received", nft_transfer: "NFTs received", add_key: "keys added", delete_key: "keys deleted",
  receipt_failed: "failed transactions",
};

/** What to show for a push payload, whatever it is. Never throws. */
function describe(data) {
  const declared = data && typeof data === "object" && data.notification;
  if (declared && typeof declared === "object" && typeof declared.title === "string") {
    // A declarative push message (W3C Push API): what a browser without us would show.
    return { title: declared.title, body: declared.body || "", url: declared.navigate || data.url || legacyUrl(data),
      tag: declared.tag || data.tag };
  }
  if (data && typeof data === "object" && typeof data.title === "string") {
    return { title: data.title, body: data.body || "", url: data.url || legacyUrl(data), tag: data.tag };
  }
  if (data && typeof data === "object" && data.valueType) {
    const who = data.initiatedBy || "Someone";
    const [title, verb] = TEXTS[data.valueType] || ["New notification", `sent you a ${data.valueType} notification`];
    const body = data.valueType === "custom" && data.message ? String(data.message) : `${who} ${verb}`;
    return { title, body, url: legacyUrl(data), tag: undefined };
  }
  return { title: "New notification", body: typeof data === "string" ? data.slice(0, 200) : "", url: FALLBACK_URL };
}

function parse(event) {
  if (!event.data) return null;
  try {
    return event.data.json();
  } catch (_) {
    try {
      return event.data.text();
    } catch (_) {
      return null;
    }
  }
}

function keep(event, promise) {
  // waitUntil keeps the worker alive for real events; a script-dispatched event cannot extend it.
  try {
    event.waitUntil(promise);
  } catch (_) {
    /* untrusted event: the promise still runs */
  }
  return promise;
}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => keep(event, self.clients.claim()));

/** The "Mute <type>" action of a notification about one account's type, if it has one. */
function muteOf(data) {
  if (!data || typeof data !== "object" || !data.receiver || !data.valueType) return null;
  const type = String(data.valueType);
  return { accountId: String(data.receiver), type, title: `Mute ${MUTE_LABELS[type] || type}` };
}

// A receipt to the gateway (POST /v1/receipts), signed with the subscription's secret; never throws.
async function report(stage, data) {
  try {
    if (typeof NearPushSigning === "undefined") return;
    const read = NearPushSigning.readPayload(data);
    if (!read || read.inboxId === null || !read.accountId) return;
    const state = (await readState()) || {};
    const server = state.server || new URL(".", self.location).href.replace(/\/$/, "");
    const live = await self.registration.pushManager.getSubscription();
    const sub = live && live.toJSON();
    if (!sub || !sub.keys) return;
    const body = JSON.stringify({ accountId: read.accountId, inboxId: read.inboxId, stage });
    const headers = await NearPushSigning.signedHeaders({
      auth: sub.keys.auth, endpoint: sub.endpoint, method: "POST", target: "/v1/receipts", body,
    });
    // keepalive: the request outlives the worker being stopped right after the event.
    await fetch(`${server}/v1/receipts`, {
      method: "POST", body, keepalive: true, headers: { ...headers, "Content-Type": "application/json" },
    });
  } catch (_) {
    /* a receipt is best effort: the notification itself is what matters */
  }
}

const BADGE_KEY = "/__near-push/badge";

async function showBadge(count) {
  await (await caches.open(STATE_CACHE)).put(BADGE_KEY, new Response(String(count)));
  if (!("setAppBadge" in self.navigator)) return;
  try {
    if (count > 0) await self.navigator.setAppBadge(count);
    else await self.navigator.clearAppBadge();
  } catch (_) {
    /* no badge where the platform has none */
  }
}

// A click reads one notification: one fewer unread until the next push says the count again.
async function lowerBadge() {
  const hit = await (await caches.open(STATE_CACHE)).match(BADGE_KEY);
  const count = hit ? Number(await hit.text()) : 0;
  if (count > 0) await showBadge(count - 1);
}

async function setBadge(data) {
  if (typeof NearPushSigning === "undefined") return;
  const read = NearPushSigning.readPayload(data);
  if (read && read.badge !== null) await showBadge(read.badge);
}

self.addEventListener("push", (event) => {
  const data = parse(event);
  const n = describe(data);
  const mute = muteOf(data);
  keep(event, (async () => {
    await self.registration.showNotification(n.title, {
      body: n.body,
      tag: n.tag,
      renotify: Boolean(n.tag),
      lang: (data && data.notification && data.notification.lang) || undefined,
      actions: mute ? [{ action: "mute", title: mute.title }] : [],
      data: { url: n.url, payload: data, mute },
    });
    await Promise.all([setBadge(data), report("shown", data)]);
  })());
});

self.addEventListener("notificationclose", (event) => {
  keep(event, report("closed", (event.notification.data || {}).payload));
});

// "Mute <type>": the account-wide mute (/preferences/set), as the page's own checkbox sets it.
async function muteFromNotification(mute) {
  const state = (await readState()) || {};
  const server = state.server || new URL(".", self.location).href.replace(/\/$/, "");
  const sub = await self.registration.pushManager.getSubscription();
  const endpoint = (sub && sub.endpoint) || state.endpoint;
  if (!endpoint) return;
  const r = await post(server, "/preferences/set", { accountId: mute.accountId, endpoint, dapp: mute.type, block: true },
    state.gatewayKey);
  if (!r.ok) return;
  state.muted = { ...(state.muted || {}), [`${mute.accountId}/${mute.type}`]: true };
  await (await caches.open(STATE_CACHE)).put(STATE_KEY, new Response(JSON.stringify(state),
    { headers: { "Content-Type": "application/json" } }));
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  if (event.action === "mute" && data.mute) {
    keep(event, muteFromNotification(data.mute));
    return;
  }
  const url = data.url || FALLBACK_URL;
  // beside the opening: a window opens only while the click is fresh
  const receipt = Promise.all([report("clicked", data.payload), lowerBadge()]);
  keep(event, (async () => {
    const target = new URL(url, self.location).href;
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const open = windows.find((w) => w.url === target);
    if (open && "focus" in open) await open.focus();
    else await self.clients.openWindow(target);
    await receipt;
  })());
});

async function readState() {
  const hit = await (await caches.open(STATE_CACHE)).match(STATE_KEY);
  return hit ? hit.json() : null;
}

async function post(server, path, body, gatewayKey = null) {
  const headers = { "Content-Type": "application/json" };
  if (gatewayKey) headers["X-Gateway-Key"] = gatewayKey;
  return fetch(`${server}${path}`, { method: "POST", headers, body: JSON.stringify(body) });
}

// The browser replaced the subscription (expiry, key rotation): register the new one for every account.
self.addEventListener("pushsubscriptionchange", (event) => {
  keep(event, (async () => {
    const state = await readState();
    if (!state || !state.streams || !state.streams.length) return;
    const server = state.server || new URL(".", self.location).href.replace(/\/$/, "");
    const { publicKey } = await (await fetch(`${server}/vapid-public-key`)).json();
    const key = Uint8Array.from(atob(publicKey.replace(/-/g, "+").replace(/_/g, "/") +
      "=".repeat((4 - (publicKey.length % 4)) % 4)), (c) => c.charCodeAt(0));
    let sub = event.newSubscription;
    // The browser renews with the old options: bound to a key the gateway no longer signs with, every
    // push to it would be refused. Subscribe with the gateway's current key instead.
    const own = sub && sub.options && sub.options.applicationServerKey && new Uint8Array(sub.options.applicationServerKey);
    if (own && !(own.length === key.length && own.every((b, i) => b === key[i]))) {
      await sub.unsubscribe().catch(() => {});
      sub = null;
    }
    if (!sub) sub = await self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    const subscription = typeof sub.toJSON === "function" ? sub.toJSON() : sub;
    for (const { accountId, gateway } of state.streams) {
      // Unsigned: a gateway requiring signed subscriptions refuses it (a worker has no wallet); the
      // frontend subscribes again, signed, on the next visit.
      await post(server, "/subscriptions/create", { accountId, gateway, subscription }, state.gatewayKey);
    }
    // Mutes live with the endpoint on the gateway: carry them over to the new one.
    for (const [key, muted] of Object.entries(state.muted || {})) {
      const [accountId, ...type] = key.split("/");
      if (muted) await post(server, "/preferences/set", { accountId, endpoint: subscription.endpoint, dapp: type.join("/"), block: true }, state.gatewayKey);
    }
    // So do quiet hours (they go with the stream).
    for (const { accountId } of state.quiet ? state.streams : []) {
      await post(server, "/preferences/quiet", { accountId, endpoint: subscription.endpoint, ...state.quiet }, state.gatewayKey);
    }
    const old = event.oldSubscription && event.oldSubscription.endpoint;
    if (old && old !== subscription.endpoint) await post(server, "/subscriptions/delete", { endpoint: old }, state.gatewayKey);
  })());
});
