// dedicate's console: every change goes through the public REST API, as any client's would.
// The key stays in an HttpOnly cookie; each call carries the page's CSRF token, which the server
// pairs with the cookie (src/dedicate/web/session.py). No framework, no build step.
"use strict";

const csrf = () => (document.querySelector('meta[name="dedicate-csrf"]') || {}).content || "";

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `the server answered ${status}`);
    this.status = status;
    this.code = e.code || null;
  }
}

async function api(method, path, body) {
  const headers = { "x-dedicate-csrf": csrf(), accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) { location.assign("/signin"); throw new ApiError(401, null); }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// PATCH /v1/endpoints/{id}: every change the console makes to an endpoint (stop, start, cancel, edit).
function patchEndpoint(id, body) {
  return api("PATCH", `/v1/endpoints/${encodeURIComponent(id)}`, body);
}

function toast(message) {
  const t = document.getElementById("toast");
  if (!t) return;
  t.textContent = message;
  t.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("shown"), 6000);
}

function confirmed(text, okLabel) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// The endpoints table: live rows, and the actions of each row's menu -------------------------------

async function refreshRows() {
  const table = document.querySelector("table[data-poll]");
  if (!table) return;
  const busy = document.querySelector("dialog[open]") || table.querySelector("details[open]");
  if (busy) return;
  const res = await fetch(table.dataset.poll, { credentials: "same-origin", headers: { accept: "text/html" } });
  if (res.status === 401) { location.assign("/signin"); return; }
  if (!res.ok) return;
  const html = await res.text();
  const body = table.querySelector("tbody");
  if (document.querySelector("dialog[open]") || table.querySelector("details[open]")) return;
  const focused = document.activeElement;
  const key = focused && body.contains(focused) && focused.dataset
    ? [focused.dataset.action, focused.dataset.id, focused.tagName] : null;
  if (body.innerHTML.trim() === html.trim()) return;
  body.innerHTML = html;
  if (key) {  // keyboard users keep their place across a refresh
    const again = body.querySelector(`[data-action="${key[0]}"][data-id="${key[1]}"]`);
    if (again) again.focus();
  }
}

function startPolling() {
  if (!document.querySelector("table[data-poll]")) return;
  setInterval(() => { refreshRows().catch(() => {}); }, 2000);
}

async function editBounds(button) {
  const dialog = document.getElementById("edit-dialog");
  const form = document.getElementById("edit-form");
  const err = document.getElementById("edit-error");
  document.getElementById("edit-title").textContent = `Edit ${button.dataset.name}`;
  form.min_replicas.value = button.dataset.min;
  form.max_replicas.value = button.dataset.max;
  const timeout = form.inactive_timeout;
  if (![...timeout.options].some((o) => o.value === button.dataset.timeout)) {
    timeout.add(new Option(`after ${button.dataset.timeout} min idle`, button.dataset.timeout));
  }
  timeout.value = button.dataset.timeout;
  err.textContent = "";
  dialog.returnValue = "";
  dialog.showModal();
  const save = async (event) => {
    if (event.submitter && event.submitter.value !== "ok") return;  // Cancel closes as usual
    event.preventDefault();
    try {
      await patchEndpoint(button.dataset.id, {
        autoscaling: { min_replicas: Number(form.min_replicas.value), max_replicas: Number(form.max_replicas.value) },
        inactive_timeout: Number(timeout.value),
      });
      form.removeEventListener("submit", save);
      dialog.close("ok");
      toast(`${button.dataset.name}: saved`);
      refreshRows();
    } catch (e) {
      err.textContent = e.message;
    }
  };
  form.addEventListener("submit", save);
  dialog.addEventListener("close", () => form.removeEventListener("submit", save), { once: true });
}

const ACTIONS = {
  async stop(b) {
    if (!await confirmed(`Stop ${b.dataset.name}? Its replicas shut down and billing stops; start it again from this menu.`,
      "Stop endpoint")) return;
    await patchEndpoint(b.dataset.id, { state: "STOPPED" });
    toast(`${b.dataset.name}: stopping`);
  },
  async cancel(b) {
    await patchEndpoint(b.dataset.id, { state: "STOPPED" });
    toast(`${b.dataset.name}: deployment cancelled`);
  },
  async start(b) {
    await patchEndpoint(b.dataset.id, { state: "STARTED" });
    toast(`${b.dataset.name}: starting`);
  },
  async delete(b) {
    if (!await confirmed(`Delete ${b.dataset.name}? It stops and is gone from every list; its bill stays.`,
      "Delete")) return;
    await api("DELETE", `/v1/endpoints/${encodeURIComponent(b.dataset.id)}`);
    toast(`${b.dataset.name}: deleted`);
  },
  edit: editBounds,
  async revoke(b) {
    if (!await confirmed(`Revoke the key ${b.dataset.name}? Every client using it is refused at once.`, "Revoke")) return;
    await api("DELETE", `/v1/keys/${encodeURIComponent(b.dataset.id)}`);
    location.reload();
  },
};

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const action = ACTIONS[button.dataset.action];
  if (!action) return;
  const menu = button.closest("details");
  if (menu) menu.open = false;
  try {
    await action(button);
  } catch (e) {
    if (e.status !== 401) toast(e.message);
  }
  refreshRows().catch(() => {});
});

// Deploy: shapes that fit, the price as you type, progress to READY --------------------------------

function deployForm() {
  const form = document.getElementById("deploy-form");
  if (!form) return;
  const shapes = document.getElementById("shapes");
  const price = document.getElementById("price");
  const error = document.getElementById("deploy-error");
  const alternatives = document.getElementById("alternatives");
  let offered = [];
  let shownFor = null;

  const body = () => {
    const chosen = form.querySelector('input[name="hardware"]:checked');
    const auto = { min_replicas: Number(form.min_replicas.value), max_replicas: Number(form.max_replicas.value) };
    if (form.target_concurrency.value !== "") auto.target_concurrency = Number(form.target_concurrency.value);
    const b = { model: form.model.value.trim(), hardware: chosen ? chosen.value : "", autoscaling: auto,
      inactive_timeout: Number(form.inactive_timeout.value) };
    if (form.display_name.value.trim()) b.display_name = form.display_name.value.trim();
    return b;
  };

  const showAlternatives = (message) => {
    alternatives.replaceChildren();
    const current = body().hardware;
    const fewer = /min_replicas of (\d+) or less/.exec(message || "");
    if (fewer && Number(fewer[1]) > 0) {  // the most this installation can hold of the chosen shape
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `Use ${fewer[1]} minimum replica(s) on ${current}`;
      b.addEventListener("click", () => {
        form.min_replicas.value = fewer[1];
        if (Number(form.max_replicas.value) < Number(fewer[1])) form.max_replicas.value = fewer[1];
        form.min_replicas.focus();
        reprice();
      });
      alternatives.append(b);
    }
    for (const h of offered.filter((o) => o.availability && o.availability.status === "available" && o.id !== current)) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `Use ${h.id} (${h.pricing.cents_per_minute}¢/min)`;
      b.addEventListener("click", () => {
        const radio = form.querySelector(`input[name="hardware"][value="${h.id}"]`);
        if (radio) { radio.checked = true; radio.focus(); }
        reprice();
      });
      alternatives.append(b);
    }
  };

  const reprice = debounce(async () => {
    error.textContent = "";
    alternatives.replaceChildren();
    const b = body();
    if (!b.model || !b.hardware) { price.textContent = ""; return; }
    try {
      const ep = await api("POST", "/v1/endpoints?dry_run=true", b);
      const p = ep.pricing;
      price.textContent = `${p.cents_per_replica_minute}¢ per replica-minute: $${p.dollars_per_hour_at_min.toFixed(2)}/h at `
        + `${p.min_replicas} replica(s), $${p.dollars_per_hour_at_max.toFixed(2)}/h at ${p.max_replicas}.`;
    } catch (e) {
      price.textContent = "";
      error.textContent = e.message;
      if (e.code === "hardware_unavailable") showAlternatives(e.message);
    }
  }, 250);

  const loadShapes = debounce(async () => {
    const model = form.model.value.trim();
    if (!model || model === shownFor) { reprice(); return; }
    shownFor = model;
    let list = [];
    try {
      list = (await api("GET", `/v1/hardware?model=${encodeURIComponent(model)}`)).data;
    } catch (e) {
      error.textContent = e.message;
    }
    offered = list;
    shapes.querySelectorAll(".shape, #shapes-empty").forEach((n) => n.remove());
    if (!list.length) {
      const p = document.createElement("p");
      p.id = "shapes-empty"; p.className = "hint";
      p.textContent = model ? `No hardware here fits ${model}.` : "Pick a model to see the shapes that fit it.";
      shapes.append(p);
    }
    const wanted = shapes.dataset.chosen;
    const pick = list.find((h) => h.id === wanted) || list.find((h) => h.availability.status === "available") || list[0];
    for (const h of list) {
      const label = document.createElement("label");
      label.className = `shape ${h.availability.status}`;
      const radio = document.createElement("input");
      radio.type = "radio"; radio.name = "hardware"; radio.value = h.id; radio.checked = h === pick;
      radio.addEventListener("change", reprice);
      const text = document.createElement("span");
      const hour = (h.pricing.cents_per_minute * 60 / 100).toFixed(2);
      text.textContent = `${h.id}: ${h.availability.status}, ${h.pricing.cents_per_minute}¢/min ($${hour}/h) per replica`;
      label.append(radio, text);
      shapes.append(label);
    }
    reprice();
  }, 250);

  form.model.addEventListener("input", loadShapes);
  form.model.addEventListener("change", loadShapes);
  for (const name of ["min_replicas", "max_replicas", "inactive_timeout", "target_concurrency", "display_name"]) {
    form[name].addEventListener("input", reprice);
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      const ep = await api("POST", "/v1/endpoints", body());
      watch(ep);
    } catch (e) {
      error.textContent = e.message;
      if (e.code === "hardware_unavailable") showAlternatives(e.message);
    }
  });
  loadShapes();
}

function watch(ep) {
  const box = document.getElementById("progress");
  const state = document.getElementById("progress-state");
  const message = document.getElementById("progress-message");
  const cancel = document.getElementById("progress-cancel");
  document.getElementById("progress-link").href = `/endpoints/${encodeURIComponent(ep.id)}`;
  box.hidden = false;
  cancel.hidden = false;
  cancel.onclick = async () => {
    try { await patchEndpoint(ep.id, { state: "STOPPED" }); }
    catch (e) { toast(e.message); }
  };
  const show = (e) => {
    state.textContent = e.state === "STARTED" ? "READY" : e.state;
    state.className = `badge ${e.state === "STARTED" ? "ok" : e.state === "ERROR" ? "bad" : e.state === "STOPPED" ? "off" : "busy"}`;
    message.textContent = e.status_message || "";
    return ["STARTED", "STOPPED", "ERROR"].includes(e.state);
  };
  show(ep);
  box.scrollIntoView({ block: "nearest" });
  const timer = setInterval(async () => {
    try {
      if (show(await api("GET", `/v1/endpoints/${encodeURIComponent(ep.id)}`))) { clearInterval(timer); cancel.hidden = true; }
    } catch (e) { clearInterval(timer); toast(e.message); }
  }, 1000);
}

// Try it: a streamed chat answer through the gateway ----------------------------------------------

function tryIt() {
  const form = document.getElementById("try-form");
  if (!form) return;
  const out = document.getElementById("try-answer");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    out.textContent = "";
    const res = await fetch("/v1/chat/completions", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-dedicate-csrf": csrf() },
      body: JSON.stringify({ model: form.dataset.model, stream: true, max_tokens: 64,
        messages: [{ role: "user", content: document.getElementById("try-prompt").value }] }),
    });
    if (!res.ok) {
      let msg = `the gateway answered ${res.status}`;
      try { msg = (await res.json()).error.message; } catch (_) { /* keep the status */ }
      out.textContent = msg;
      return;
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        try {
          const delta = JSON.parse(data).choices[0].delta;
          if (delta && delta.content) out.textContent += delta.content;
        } catch (_) { /* a line that is not a chunk */ }
      }
    }
    out.dataset.done = "1";
  });
}

// Keys: made here, shown once ----------------------------------------------------------------------

function keyForm() {
  const form = document.getElementById("key-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    document.getElementById("key-error").textContent = "";
    try {
      const name = form.key_name.value.trim();
      const body = { scope: form.key_scope.value };
      if (name) body.name = name;
      const made = await api("POST", "/v1/keys", body);
      const box = document.getElementById("key-made");
      box.hidden = false;
      const secret = document.getElementById("key-secret");
      secret.value = made.key;
      secret.focus();
      secret.select();
    } catch (e) {
      document.getElementById("key-error").textContent = e.message;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  startPolling();
  deployForm();
  tryIt();
  keyForm();
});
