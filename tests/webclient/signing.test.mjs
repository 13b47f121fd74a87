// Node's test runner on the web client's pure parts: request signing and payload reading.
import assert from "node:assert/strict";
import { test } from "node:test";
import "../../webclient/signing.js";

const { signedHeaders, canonicalRequest, readPayload } = globalThis.NearPushSigning;

test("the headers name the endpoint, the time in seconds, a fresh nonce and the signature", async () => {
  const args = { auth: "_WaWEIbW1xnIE4LSaho9uw", endpoint: "https://e.example/x", method: "GET", target: "/v1/streams" };
  const a = await signedHeaders({ ...args, now: 1800000000999 });
  const b = await signedHeaders({ ...args, now: 1800000000999 });
  assert.equal(a["X-Push-Time"], "1800000000");
  assert.equal(a["X-Push-Endpoint"], "https://e.example/x");
  assert.match(a["X-Push-Nonce"], /^[A-Za-z0-9_-]{22}$/);
  assert.notEqual(a["X-Push-Nonce"], b["X-Push-Nonce"]);
  assert.notEqual(a["X-Push-Signature"], b["X-Push-Signature"]);
  assert.match(a["X-Push-Signature"], /^[A-Za-z0-9_-]{43}$/);
});

test("the signature covers the method, target, body and secret", async () => {
  const base = { auth: "_WaWEIbW1xnIE4LSaho9uw", endpoint: "https://e/x", method: "POST", target: "/v1/inbox/read",
    body: '{"all":true}', now: 1800000000000, nonce: "n".repeat(16) };
  const sig = async (over) => (await signedHeaders({ ...base, ...over }))["X-Push-Signature"];
  const original = await sig({});
  for (const over of [{ method: "PUT" }, { target: "/v1/streams" }, { body: "{}" }, { auth: "AAAAAAAAAAAAAAAAAAAAAA" },
    { endpoint: "https://e/y" }]) {
    assert.notEqual(await sig(over), original, JSON.stringify(over));
  }
  assert.equal(await sig({}), original);
  assert.equal(await canonicalRequest("get", "/v1/x", "https://e/x", "1", "nonce", ""),
    "NPG1\nGET\n/v1/x\nhttps://e/x\n1\nnonce\n47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
});

test("a payload is read from its declarative members first, whatever else it has", () => {
  const declarative = { web_push: 8030, notification: { title: "T", body: "B", navigate: "https://n", tag: "g" },
    title: "old", url: "https://old", inboxId: 7, app_badge: 3, receiver: "bob.near" };
  assert.deepEqual(readPayload(declarative),
    { title: "T", body: "B", url: "https://n", tag: "g", inboxId: 7, badge: 3, accountId: "bob.near" });
  const ours = { title: "New like", body: "x", url: "https://u", tag: "t", receiver: "bob.near" };
  assert.deepEqual(readPayload(ours),
    { title: "New like", body: "x", url: "https://u", tag: "t", inboxId: null, badge: null, accountId: "bob.near" });
  assert.equal(readPayload("text"), null);
  assert.equal(readPayload(null), null);
  assert.equal(readPayload({ inboxId: "7", app_badge: 1.5 }).inboxId, null);
});
