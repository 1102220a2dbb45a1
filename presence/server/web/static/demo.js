// The demo page's logic (index.html).  Every text from the network or the
// query string goes into the page through textContent or attributes, never
// innerHTML.
import { connect, defaultUrl } from "./presence.js";

const $ = (id) => document.getElementById(id);
let client = null;

function log(text) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(item);
  while ($("log").children.length > 200) $("log").lastChild.remove();
}

function setState(state, text) {
  $("state").dataset.state = state;
  $("state").textContent = text;
}

function parseIds(text) {
  return String(text ?? "")
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((s) => {
      if (!/^[0-9]+$/.test(s)) throw new TypeError(`not a user id: ${s}`);
      return Number(s);
    });
}

function friendItem(id) {
  let item = $("friends").querySelector(`li[data-user-id="${id}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.userId = String(id);
    item.dataset.online = "false";
    item.dataset.status = "offline";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = `user ${id}`;
    const status = document.createElement("span");
    status.className = "status";
    const text = document.createElement("span");
    text.className = "text";
    item.append(name, " ", status, text);
    $("friends").append(item);
  }
  return item;
}

function render(id, state) {
  const item = friendItem(id);
  item.dataset.online = state.online ? "true" : "false";
  item.dataset.status = state.status;
  item.querySelector(".status").textContent = state.status;
  item.querySelector(".text").textContent = state.text ?? "";
}

function login(userId, friends, token) {
  if (client) client.close();
  $("friends").replaceChildren();
  const options = { userId, friends };
  if (token) options.token = token;
  client = connect(defaultUrl(), options);
  window.presenceClient = client; // for the console and tests
  for (const [id, state] of client.friends) render(id, state);
  setState("connecting", `Connecting as user ${userId}…`);
  client.on("open", () => {
    setState("open", `Connected as user ${userId}.`);
    $("me").hidden = false;
  });
  client.on("online", ({ userId: id, status, text }) => {
    render(id, { online: true, status, text });
    log(`user ${id} is online (${status})`);
  });
  client.on("status", ({ userId: id, status, text }) => {
    render(id, { online: true, status, text });
    log(`user ${id} is ${status}${text ? `: ${text}` : ""}`);
  });
  client.on("offline", ({ userId: id }) => {
    render(id, { online: false, status: "offline", text: "" });
    log(`user ${id} is offline`);
  });
  client.on("error", ({ code, message }) => log(`error ${code}: ${message}`));
  client.on("close", ({ willReconnect }) => {
    if (willReconnect) {
      setState("connecting", "Disconnected; reconnecting…");
    } else {
      setState("closed", "Disconnected.");
      $("me").hidden = true;
    }
  });
}

function start(form) {
  try {
    const userId = parseIds(form.user_id)[0];
    if (userId === undefined) throw new TypeError("a user id is needed");
    login(userId, parseIds(form.friends), form.token);
  } catch (err) {
    setState("closed", String(err.message ?? err));
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  start({ user_id: $("user_id").value, friends: $("friends-input").value, token: $("token").value });
});

$("set-status").addEventListener("click", () => {
  if (client) client.setStatus($("status").value, $("text").value);
});

$("logout").addEventListener("click", () => {
  if (client) client.close();
});

// /?user_id=4&friends=3,5&token=...: fill the form and log in at once.
const query = new URLSearchParams(location.search);
if (query.has("user_id")) {
  const form = {
    user_id: query.get("user_id"),
    friends: query.get("friends") ?? "",
    token: query.get("token") ?? "",
  };
  $("user_id").value = form.user_id;
  $("friends-input").value = form.friends;
  $("token").value = form.token;
  start(form);
}
