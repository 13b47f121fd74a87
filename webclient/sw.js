// Service worker: show every push, open its page on click.

const FALLBACK_URL = "https://near.org/notifications";

function describe(data) {
  if (data && data.title) return data;
  // A bare NEAR row (the reference server's payload) or anything else: still show something.
  const who = (data && data.initiatedBy) || "Someone";
  const type = (data && data.valueType) || "activity";
  return { title: "NEAR", body: `${who}: new ${type}`, url: FALLBACK_URL, tag: undefined };
}

self.addEventListener("push", (event) => {
  let data = null;
  try {
    data = event.data ? event.data.json() : null;
  } catch (_) {
    data = null;
  }
  const n = describe(data);
  event.waitUntil(
    self.registration.showNotification(n.title, {
      body: n.body, tag: n.tag, data: { url: n.url || FALLBACK_URL, row: data },
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = (event.notification.data && event.notification.data.url) || FALLBACK_URL;
  event.waitUntil((async () => {
    const tabs = await clients.matchAll({ type: "window", includeUncontrolled: true });
    const open = tabs.find((t) => t.url === url);
    return open ? open.focus() : clients.openWindow(url);
  })());
});
