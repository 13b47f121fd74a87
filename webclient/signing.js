// Signing /v1 requests with the push subscription's auth secret (the gateway's README, "The /v1 API").
// A classic script and an ES module side effect at once: it sets globalThis.NearPushSigning, so the
// page's module imports it (`import "./signing.js"`) and the service worker loads it (importScripts).
(function (global) {
  "use strict";
  const SCHEME = "NPG1";
  const KEY_LABEL = "near-push-gateway/v1 request";
  const encoder = new TextEncoder();

  function base64url(bytes) {
    let text = "";
    for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function fromBase64url(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
    return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  }

  async function hmac(keyBytes, data) {
    const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return new Uint8Array(await crypto.subtle.sign("HMAC", key, data));
  }

  /** The string a request's signature covers (what the gateway's gateway/v1/signing.py rebuilds). */
  async function canonicalRequest(method, target, endpoint, time, nonce, body) {
    const bodyHash = base64url(await crypto.subtle.digest("SHA-256", encoder.encode(body)));
    return [SCHEME, method.toUpperCase(), target, endpoint, time, nonce, bodyHash].join("\n");
  }

  /**
   * Headers for one /v1 request: `auth` is the subscription's keys.auth (base64url), `target` the
   * path with its query string exactly as sent, `body` the exact text sent ("" for none).
   */
  async function signedHeaders({ auth, endpoint, method, target, body = "", now = Date.now(), nonce = null }) {
    const time = String(Math.floor(now / 1000));
    nonce = nonce || base64url(crypto.getRandomValues(new Uint8Array(16)));
    const key = await hmac(fromBase64url(auth), encoder.encode(KEY_LABEL));
    const canonical = await canonicalRequest(method, target, endpoint, time, nonce, body);
    const signature = base64url(await hmac(key, encoder.encode(canonical)));
    return { "X-Push-Endpoint": endpoint, "X-Push-Time": time, "X-Push-Nonce": nonce, "X-Push-Signature": signature };
  }

  /** What a push payload says, whatever its shape: the declarative members first, then ours. */
  function readPayload(data) {
    if (!data || typeof data !== "object") return null;
    const n = data.notification && typeof data.notification === "object" ? data.notification : {};
    return {
      title: typeof n.title === "string" ? n.title : data.title,
      body: typeof n.body === "string" ? n.body : data.body || "",
      url: n.navigate || data.url,
      tag: n.tag || data.tag,
      inboxId: Number.isInteger(data.inboxId) ? data.inboxId : null,
      badge: Number.isInteger(data.app_badge) ? data.app_badge : null,
      accountId: typeof data.receiver === "string" ? data.receiver : null,
    };
  }

  global.NearPushSigning = { signedHeaders, canonicalRequest, readPayload, base64url };
})(typeof globalThis !== "undefined" ? globalThis : self);
