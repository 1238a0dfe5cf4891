// Quartet Mail's web inbox: a client of the JSON API (/api/v1/...), nothing more.
"use strict";

const state = {
  open: false,        // development: no login, every mailbox
  account: null,
  csrf: null,
  page: 1,
  perPage: 50,
  query: "",
  selected: null,     // the message shown
  remote: false,      // remote content allowed for the shown message
};

const $ = (selector) => document.querySelector(selector);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

async function api(method, path, body) {
  // X-Quartet-Inbox: a 401 without a Basic challenge (the page has its own login form).
  const headers = { "X-Quartet-Inbox": "1" };
  if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    showLogin();
    throw new Error("not logged in");
  }
  return response;
}

function formatDate(seconds) {
  if (!seconds) return "";
  const date = new Date(seconds * 1000);
  const today = new Date();
  if (date.toDateString() === today.toDateString()) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return date.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" });
}

function formatSize(bytes) {
  if (bytes < 1024) return bytes + " B";
  if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KiB";
  return (bytes / 1024 / 1024).toFixed(1) + " MiB";
}

// ---- login ----

function showLogin() {
  $("#login").hidden = false;
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
}

async function startSession() {
  const response = await fetch("/api/v1/session", {
    credentials: "same-origin",
    headers: { "X-Quartet-Inbox": "1" },
  });
  if (response.status === 401) {
    showLogin();
    return;
  }
  const session = await response.json();
  enter(session);
}

function enter(session) {
  state.open = session.open;
  state.account = session.account;
  state.csrf = session.csrf;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = state.open;
  $("#who").textContent = state.open ? "development: every mailbox" : state.account;
  $("#mailbox-column").textContent = state.open ? "Mailbox" : "Folder";
  loadMessages();
  listen();
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#login-error").textContent = "";
  const response = await fetch("/api/v1/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Quartet-Inbox": "1" },
    body: JSON.stringify({
      address: $("#login-address").value,
      password: $("#login-password").value,
    }),
  });
  const body = await response.json();
  if (!response.ok) {
    $("#login-error").textContent = body.error || "Login failed";
    return;
  }
  $("#login-password").value = "";
  enter(body);
});

$("#logout").addEventListener("click", async () => {
  await api("POST", "/api/v1/logout");
  state.csrf = null;
  if (events) events.close();
  showLogin();
});

// ---- the message list ----

async function loadMessages() {
  const params = new URLSearchParams({
    query: state.query,
    page: String(state.page),
    per_page: String(state.perPage),
  });
  const response = await api("GET", "/api/v1/messages?" + params);
  if (!response.ok) {
    $("#list-status").textContent = "The list could not be loaded.";
    return;
  }
  const body = await response.json();
  const rows = $("#messages tbody");
  rows.replaceChildren();
  for (const message of body.messages) {
    const row = element("tr", null, "message" + (message.seen ? "" : " unread"));
    row.dataset.id = message.id;
    if (state.selected === message.id) row.classList.add("selected");
    row.append(
      element("td", message.seen ? "" : "●", "dot"),
      element("td", message.from || message.envelope_from || "(unknown)", "from"),
    );
    const subject = element("td", null, "subject");
    subject.append(element("span", message.subject || "(no subject)"));
    if (message.has_attachments) subject.append(element("span", " 📎", "clip"));
    row.append(
      subject,
      element("td", state.open ? message.account + " / " + message.mailbox : message.mailbox, "mailbox"),
      element("td", formatDate(message.received), "date"),
    );
    row.addEventListener("click", () => openMessage(message.id));
    rows.append(row);
  }
  const pages = Math.max(1, Math.ceil(body.total / body.per_page));
  $("#list-status").textContent = body.total === 1 ? "1 message" : body.total + " messages";
  $("#page").textContent = "page " + body.page + " of " + pages;
  $("#previous").disabled = body.page <= 1;
  $("#next").disabled = body.page >= pages;
}

$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.query = $("#search").value.trim();
  state.page = 1;
  loadMessages();
});
$("#previous").addEventListener("click", () => { state.page -= 1; loadMessages(); });
$("#next").addEventListener("click", () => { state.page += 1; loadMessages(); });

// Live updates: the server says when any mailbox changed.
let events = null;
function listen() {
  if (events) events.close();
  events = new EventSource("/api/v1/events");
  events.addEventListener("change", () => {
    loadMessages();
    if (!$("#queue-pane").hidden) loadQueue();
  });
}

// ---- one message ----

async function openMessage(id) {
  const response = await api("GET", "/api/v1/messages/" + id);
  if (!response.ok) return;
  const body = await response.json();
  const message = body.message;
  state.selected = id;
  state.remote = false;
  for (const row of document.querySelectorAll("#messages tr.message")) {
    row.classList.toggle("selected", Number(row.dataset.id) === id);
  }
  $("#view").hidden = false;
  $("#view-subject").textContent = message.subject || "(no subject)";
  const meta = $("#view-meta");
  meta.replaceChildren();
  const fields = [
    ["From", message.from || message.envelope_from],
    ["To", message.to],
    ["Cc", body.cc],
    ["Date", message.date ? new Date(message.date * 1000).toLocaleString() : ""],
    ["Mailbox", message.account + " / " + message.mailbox],
    ["Size", formatSize(message.size)],
  ];
  for (const [name, value] of fields) {
    if (!value) continue;
    meta.append(element("dt", name), element("dd", value));
  }
  const attachments = $("#attachments");
  attachments.replaceChildren();
  for (const attachment of body.attachments) {
    const item = element("li");
    const link = element("a", attachment.filename);
    link.href = "/api/v1/messages/" + id + "/parts/" + attachment.part;
    link.setAttribute("download", attachment.filename);
    item.append(link, element("span", " " + attachment.content_type + ", " + formatSize(attachment.size), "muted"));
    attachments.append(item);
  }
  $("#view-text").textContent = body.text || "";
  const headers = $("#view-headers");
  headers.replaceChildren();
  for (const [name, value] of body.headers) {
    const row = element("tr");
    row.append(element("th", name), element("td", value));
    headers.append(row);
  }
  $("#view-raw").textContent = "";
  $("#view").dataset.html = body.html ? "yes" : "no";
  showView(body.html ? "html" : "text");
  $("#toggle-read").dataset.seen = "true";
  $("#toggle-read").textContent = "Mark unread";
  if (!message.seen) {
    await api("PATCH", "/api/v1/messages/" + id, { seen: true });
  }
}

function showView(which) {
  const id = state.selected;
  for (const button of document.querySelectorAll(".view-tabs button")) {
    button.classList.toggle("active", button.dataset.view === which);
    button.disabled = button.dataset.view === "html" && $("#view").dataset.html !== "yes";
  }
  $("#view-html").hidden = which !== "html";
  $("#remote-banner").hidden = which !== "html" || state.remote;
  $("#view-text").hidden = which !== "text";
  $("#view-headers").hidden = which !== "headers";
  $("#view-raw").hidden = which !== "raw";
  if (which === "html") {
    $("#view-html").src = "/api/v1/messages/" + id + "/html" + (state.remote ? "?remote=1" : "");
  }
  if (which === "raw" && !$("#view-raw").textContent) {
    api("GET", "/api/v1/messages/" + id + "/raw")
      .then((response) => response.text())
      .then((text) => { $("#view-raw").textContent = text; });
  }
}

for (const button of document.querySelectorAll(".view-tabs button")) {
  button.addEventListener("click", () => showView(button.dataset.view));
}
$("#show-remote").addEventListener("click", () => {
  state.remote = true;
  showView("html");
});

$("#toggle-read").addEventListener("click", async () => {
  const seen = $("#toggle-read").dataset.seen !== "true";
  await api("PATCH", "/api/v1/messages/" + state.selected, { seen });
  $("#toggle-read").dataset.seen = String(seen);
  $("#toggle-read").textContent = seen ? "Mark unread" : "Mark read";
});

$("#delete").addEventListener("click", async () => {
  if (!confirm("Delete this message for good?")) return;
  const response = await api("DELETE", "/api/v1/messages/" + state.selected);
  if (response.ok) {
    state.selected = null;
    $("#view").hidden = true;
    loadMessages();
  }
});

// ---- the outbound queue ----

async function loadQueue() {
  const response = await api("GET", "/api/v1/queue");
  if (!response.ok) return;
  const body = await response.json();
  const rows = $("#queue tbody");
  rows.replaceChildren();
  for (const entry of body.queue) {
    const row = element("tr");
    const actions = element("td");
    const retry = element("button", "Retry");
    retry.type = "button";
    retry.disabled = entry.status !== "pending";
    retry.addEventListener("click", async () => {
      await api("POST", "/api/v1/queue/" + entry.queue_id + "/retry");
      loadQueue();
    });
    const drop = element("button", "Delete", "danger");
    drop.type = "button";
    drop.addEventListener("click", async () => {
      if (!confirm("Drop this message from the queue? It will be neither delivered nor bounced.")) return;
      await api("DELETE", "/api/v1/queue/" + entry.queue_id);
      loadQueue();
    });
    actions.append(retry, drop);
    row.append(
      element("td", entry.sender || "<>"),
      element("td", entry.recipient),
      element("td", entry.status),
      element("td", String(entry.attempts)),
      element("td", entry.last_error || ""),
      actions,
    );
    rows.append(row);
  }
  $("#queue-status").textContent = body.queue.length ? "" : "The queue is empty.";
}

function showTab(which) {
  $("#tab-messages").classList.toggle("active", which === "messages");
  $("#tab-queue").classList.toggle("active", which === "queue");
  $("#list-pane").hidden = which !== "messages";
  $("#view").hidden = which !== "messages" || state.selected === null;
  $("#queue-pane").hidden = which !== "queue";
  $("#search-form").hidden = which !== "messages";
  if (which === "queue") loadQueue();
}
$("#tab-messages").addEventListener("click", () => showTab("messages"));
$("#tab-queue").addEventListener("click", () => showTab("queue"));

startSession();
