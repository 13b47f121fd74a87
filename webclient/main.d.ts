// Types of the web client's exports (main.js). No build step: main.js is plain ES2020.

export interface Stream {
  accountId: string;
  gateway: string;
}

export interface Status {
  /** "needs renewal": bound to another VAPID key than the gateway's (renew() replaces it). */
  state: "unsupported" | "blocked" | "subscribed" | "needs renewal" | "unsubscribed";
  accounts: string[];
  endpoint?: string;
}

export interface SubscribeOptions {
  /** The frontend whose pages notifications open (default: this page's origin). */
  gateway?: string;
  /** The gateway's URL (default: where main.js was loaded from). */
  server?: string;
  /** The service worker's URL, served by the frontend's own origin. */
  serviceWorker?: string;
  /** The frontend's X-Gateway-Key, when the gateway gave it one. */
  gatewayKey?: string | null;
  /** A wallet's NEP-413 signMessage, when the gateway requires (or the frontend wants) proof of the account. */
  sign?: ((request: { message: string; recipient: string; nonce: Uint8Array }) => Promise<{
    publicKey: string;
    signature: string;
  }>) | null;
  recipient?: string;
}

export interface WorkerOption {
  serviceWorker?: string;
}

export interface InboxItem {
  id: number;
  type: string;
  title: string;
  body: string;
  /** Where the notification opens, on this browser's frontend. */
  url: string;
  createdAt: number;
  read: boolean;
  /** The NEAR notification row. */
  row: Record<string, unknown>;
}

export interface InboxPage {
  accountId: string;
  items: InboxItem[];
  /** Pass as `cursor` for the next (older) page; null on the last. */
  next: string | null;
}

export interface QuietHours {
  start: string;
  end: string;
  timeZone?: string;
}

export const NOTIFICATION_TYPES: ReadonlyArray<readonly [string, string]>;

export function supported(): boolean;
export function status(options?: WorkerOption): Promise<Status>;
export function subscribe(accountId: string, options?: SubscribeOptions): Promise<PushSubscription>;
export function unsubscribe(options?: WorkerOption): Promise<void>;
export function setMuted(accountId: string, type: string, muted: boolean, options?: WorkerOption): Promise<void>;
export function setQuietHours(window: { start: string; end: string } | null, options?: WorkerOption): Promise<QuietHours | null>;
export function renew(options?: WorkerOption): Promise<string[]>;
export function inbox(accountId: string, options?: WorkerOption & { cursor?: string | null; limit?: number }): Promise<InboxPage>;
export function unreadCount(accountId: string, options?: WorkerOption): Promise<{ accountId: string; unread: number; capped: boolean }>;
export function markRead(
  accountId: string,
  options?: WorkerOption & { ids?: number[]; upTo?: number | null; all?: boolean },
): Promise<void>;
export function readState(): Promise<{ server: string; streams: Stream[]; muted: Record<string, boolean> }>;
