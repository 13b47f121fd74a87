// A typed consumer of the web client package: `tsc --noEmit` proves main.d.ts describes what a
// frontend calls, and refuses misuse (the @ts-expect-error lines must stay errors).
import {
  inbox,
  markRead,
  renew,
  setMuted,
  setQuietHours,
  status,
  subscribe,
  supported,
  unreadCount,
  unsubscribe,
  type InboxPage,
} from "../../webclient/main.js";

export async function frontend(): Promise<number> {
  if (!supported()) return 0;
  await renew({ serviceWorker: "/sw.js" });
  const s = await status();
  if (s.state !== "subscribed") {
    const sub: PushSubscription = await subscribe("bob.near", { gateway: "https://near.social", serviceWorker: "/sw.js" });
    void sub.endpoint;
  }
  await setMuted("bob.near", "like", true);
  const quiet = await setQuietHours({ start: "22:00", end: "07:00" });
  void quiet?.timeZone;
  let page: InboxPage = await inbox("bob.near", { limit: 20 });
  while (page.next !== null) page = await inbox("bob.near", { cursor: page.next });
  const unread = page.items.filter((item) => !item.read).map((item) => item.id);
  await markRead("bob.near", { ids: unread });
  await markRead("bob.near", { all: true });
  // @ts-expect-error: an account id is a string
  await inbox(42);
  // @ts-expect-error: muted is a boolean
  await setMuted("bob.near", "like", "yes");
  await unsubscribe();
  return (await unreadCount("bob.near")).unread;
}
