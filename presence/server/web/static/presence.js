// presence.js: the browser client of the presence server (an ES module, no
// dependencies, no build step).  See docs/browser.rst.
//
//   import { connect } from "/presence.js";
//   const p = connect("wss://example.org/ws", {userId: 4, friends: [3, 5], token});
//   p.on("online", ({userId, status, text}) => ...);
//   p.on("offline", ({userId, lastSeen}) => ...);
//   p.on("status", ({userId, status, text}) => ...);
//   p.on("error", ({code, message, fatal}) => ...);
//   p.on("close", ({willReconnect, error}) => ...);
//   p.setStatus("away", "lunch");
//
// The client keeps a view of the watched friends (p.friends) and rebuilds it
// from the server's snapshot after every reconnect, emitting only the real
// differences.  It answers the server's pings, reconnects with exponential
// backoff and full jitter, and stops for good on refusals (authentication,
// invalid login) and on error 17 (an operator disconnected the user).

export const STATUSES = Object.freeze(["online", "away", "busy", "invisible"]);

// Fatal errors after which reconnecting may succeed; every other fatal error
// (bad login, authentication, error 17 "Disconnected", ...) stops the client.
export const RETRYABLE = Object.freeze(new Set([1, 7, 14, 15, 16]));

// Errors that, after the login, leave the session open (PROTOCOL.md).
const NOT_FATAL_AFTER_LOGIN = new Set([5, 6, 11, 13]);

const MAX_ID = Number.MAX_SAFE_INTEGER; // ids above 2**53-1 do not survive JSON.parse

function checkId(id) {
  if (!Number.isSafeInteger(id) || id < 1 || id > MAX_ID) {
    throw new TypeError(`not a user id: ${id}`);
  }
  return id;
}

function checkIds(list) {
  if (!Array.isArray(list) && !(list instanceof Set)) {
    throw new TypeError("friends must be an array of user ids");
  }
  return [...new Set([...list].map(checkId))];
}

function sameFriend(a, b) {
  return a.online === b.online && a.status === b.status && a.text === b.text;
}

const OFFLINE = Object.freeze({ online: false, status: "offline", text: "", lastSeen: null });

export class PresenceClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.userId = checkId(options.userId);
    this._friends = new Set(checkIds(options.friends ?? []));
    this._token = options.token ?? null;
    this._status = options.status ?? null;
    this._text = options.text ?? null;
    if (this._status !== null && !STATUSES.includes(this._status)) {
      throw new TypeError(`not a status: ${this._status}`);
    }
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._reconnect = options.reconnect ?? true;
    this._minDelay = options.minDelay ?? 500;
    this._maxDelay = options.maxDelay ?? 30000;
    this._random = options.random ?? Math.random;
    this._setTimeout = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    // The view: every watched friend, offline until the server says otherwise.
    this._view = new Map();
    for (const id of this._friends) this._view.set(id, OFFLINE);
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._watchdog = null;
    this._timeout = null;
    this._stopped = false;
    this._stopError = null;
    this._pending = null; // the view being rebuilt from a snapshot
    this._barriers = 0; // pongs still expected for our own pings
    this.state = "connecting";
    this._open();
  }

  /** Subscribe to an event; the listener gets the event's detail.  Returns an unsubscribe function. */
  on(type, listener) {
    const wrapped = (event) => listener(event.detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /** A copy of the view: Map of user id to {online, status, text, lastSeen}. */
  get friends() {
    return new Map(this._view);
  }

  /** Share a status (online, away, busy, invisible) and an optional text. */
  setStatus(status, text = "") {
    if (!STATUSES.includes(status)) throw new TypeError(`not a status: ${status}`);
    text = String(text ?? "");
    this._status = status;
    this._text = text;
    this._send({ type: "status", status, text });
  }

  /** Replace the watch list. */
  setFriends(list) {
    const ids = checkIds(list);
    const next = new Set(ids);
    this._retarget(next);
    this._send({ type: "friends", friends: ids });
  }

  addFriends(list) {
    const ids = checkIds(list).filter((id) => !this._friends.has(id));
    if (!ids.length) return;
    this._retarget(new Set([...this._friends, ...ids]));
    this._send({ type: "friends", add: ids });
  }

  removeFriends(list) {
    const ids = checkIds(list).filter((id) => this._friends.has(id));
    if (!ids.length) return;
    const next = new Set(this._friends);
    for (const id of ids) next.delete(id);
    this._retarget(next);
    this._send({ type: "friends", remove: ids });
  }

  /** Say goodbye and stop for good. */
  close() {
    if (this._stopped) return;
    this._send({ type: "bye" });
    this._stop(null);
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000);
    this._emitClose(1000, "closed by the client");
  }

  // -- internals ---------------------------------------------------------

  _retarget(next) {
    // Unwatched friends leave the view silently (the server says nothing more
    // about them); newly watched ones start offline until the server's
    // snapshot events for them arrive.
    for (const id of this._friends) {
      if (!next.has(id)) {
        this._view.delete(id);
        if (this._pending) this._pending.delete(id);
      }
    }
    for (const id of next) {
      if (!this._view.has(id)) this._view.set(id, OFFLINE);
      if (this._pending && !this._pending.has(id)) this._pending.set(id, OFFLINE);
    }
    this._friends = next;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _emitClose(code, reason) {
    this._emit("close", {
      code,
      reason,
      willReconnect: !this._stopped && this._reconnect,
      error: this._stopError,
    });
  }

  _send(message) {
    const ws = this._ws;
    if (ws && ws.readyState === 1 && this.state === "open") {
      ws.send(JSON.stringify(message));
    }
  }

  async _open() {
    this._timer = null;
    let token = this._token;
    if (typeof token === "function") {
      try {
        token = await token();
      } catch (err) {
        this._emit("error", { code: 10, message: `token: ${err}`, fatal: false });
        this._schedule();
        return;
      }
    }
    if (this._stopped) return;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (err) {
      this._emit("error", { code: 8, message: `Server Connection Error: ${err}`, fatal: false });
      this._schedule();
      return;
    }
    this._ws = ws;
    this.state = "connecting";
    ws.onopen = () => {
      if (ws !== this._ws) return;
      const login = { type: "login", user_id: this.userId, friends: [...this._friends] };
      if (token !== null && token !== undefined) login.token = token;
      if (this._status !== null) login.status = this._status;
      if (this._text !== null) login.text = this._text;
      ws.send(JSON.stringify(login));
      // Everything the server sends before its answer to this ping is the
      // snapshot (and changes during it): the pong closes the snapshot.
      ws.send('{"type":"ping"}');
      this._barriers = 1;
      this._pending = new Map();
      for (const id of this._friends) this._pending.set(id, OFFLINE);
    };
    ws.onmessage = (event) => {
      if (ws !== this._ws) return;
      this._kick();
      if (typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message === "object") this._handle(message);
    };
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._clearWatchdog();
      this._pending = null;
      this.state = this._stopped ? "closed" : "connecting";
      this._emitClose(event.code, event.reason);
      if (!this._stopped) this._schedule();
    };
    ws.onerror = () => {
      // A close event follows; nothing to do here.
    };
  }

  _handle(message) {
    switch (message.type) {
      case "welcome":
        this.state = "open";
        this._attempt = 0;
        this._timeout = message.heartbeat === "tcp" ? null : Number(message.timeout) || null;
        this._kick();
        this._emit("open", { userId: message.user_id, timeout: message.timeout });
        break;
      case "ping":
        this._ws.send('{"type":"pong"}');
        break;
      case "pong":
        if (this._barriers > 0 && --this._barriers === 0 && this._pending) {
          const pending = this._pending;
          this._pending = null;
          this._settle(pending);
        }
        break;
      case "presence":
        this._presence(message);
        break;
      case "error":
        this._error(message);
        break;
      default:
        break;
    }
  }

  _presence(message) {
    const id = message.user_id;
    if (!this._friends.has(id)) return;
    const state = message.online
      ? {
          online: true,
          status: String(message.status ?? "online"),
          text: String(message.text ?? ""),
          lastSeen: null,
        }
      : {
          online: false,
          status: "offline",
          text: "",
          lastSeen: typeof message.last_seen === "number" ? message.last_seen : null,
        };
    if (this._pending) {
      this._pending.set(id, state);
    } else {
      this._apply(id, state);
    }
  }

  _apply(id, state) {
    const old = this._view.get(id) ?? OFFLINE;
    if (sameFriend(old, state)) return;
    this._view.set(id, state);
    if (state.online && !old.online) {
      this._emit("online", { userId: id, status: state.status, text: state.text });
    } else if (!state.online) {
      this._emit("offline", { userId: id, lastSeen: state.lastSeen });
    } else {
      this._emit("status", { userId: id, status: state.status, text: state.text });
    }
  }

  _settle(pending) {
    // The snapshot is complete: emit only the differences with the old view.
    for (const [id, state] of pending) {
      if (this._friends.has(id)) this._apply(id, state);
    }
  }

  _error(message) {
    const code = Number(message.error);
    const fatal = this.state !== "open" || !NOT_FATAL_AFTER_LOGIN.has(code);
    if (fatal && !RETRYABLE.has(code)) this._stop(code);
    this._emit("error", { code, message: String(message.msg ?? ""), fatal });
  }

  _stop(error) {
    this._stopped = true;
    this._stopError = error;
    this.state = "closed";
    this._clearWatchdog();
    if (this._timer !== null) {
      this._clearTimeout(this._timer);
      this._timer = null;
    }
  }

  _schedule() {
    if (this._stopped || !this._reconnect) {
      this._stopped = true;
      this.state = "closed";
      return;
    }
    const ceiling = Math.min(this._maxDelay, this._minDelay * 2 ** this._attempt);
    this._attempt += 1;
    // "Full jitter": clients cut off together do not all come back together.
    const delay = ceiling / 2 + this._random() * (ceiling / 2);
    this._timer = this._setTimeout(() => this._open(), delay);
  }

  _kick() {
    // A server that says nothing for 1.5 timeouts is gone (it pings after
    // timeout/2 of our silence, and we answer): reconnect.
    this._clearWatchdog();
    if (this._timeout && this._ws) {
      const ws = this._ws;
      this._watchdog = this._setTimeout(() => {
        if (ws === this._ws) ws.close(4000, "server silent");
      }, this._timeout * 1500);
    }
  }

  _clearWatchdog() {
    if (this._watchdog !== null) {
      this._clearTimeout(this._watchdog);
      this._watchdog = null;
    }
  }
}

/** Connect to a presence server's WebSocket URL (ws:// or wss://, path /ws). */
export function connect(url, options) {
  return new PresenceClient(url, options);
}

/** The WebSocket URL of the server that served this page. */
export function defaultUrl(location = globalThis.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}
