// Gate web UI: a few pages over the admin API (/admin/api/...). Plain JS, no build step.
// Every value from the server is inserted as text (never as HTML). Every change carries
// the X-Gate-CSRF header, which the server requires of cookie-authenticated changes.
"use strict";

const PAGES = ["status", "upstreams", "models", "tokens", "usage", "config"];
const BASE_URL_HINTS = {
  openai: "https://api.openai.com/v1",
  anthropic: "https://api.anthropic.com",
  custom: "required, e.g. http://127.0.0.1:11434/v1",
};
let editingUpstream = null;
let editingOriginal = null;

function $(sel) { return document.querySelector(sel); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v; // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { "X-Gate-CSRF": "1" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch("/admin/api/" + path, options);
  if (response.status === 401) {
    window.location.href = "/ui/";
    throw new Error("signed out");
  }
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    throw new Error((data && data.error) || ("HTTP " + response.status));
  }
  return data;
}

function showMessage(text, kind) {
  const box = $("#message");
  box.textContent = text;
  box.className = "banner " + (kind || "ok");
  box.hidden = !text;
}

function showReloadError(error) {
  const box = $("#reload-error");
  if (error && error.message) {
    box.textContent = "The last configuration change could not be applied, so the previous configuration is still in effect:\n" + error.message;
    box.hidden = false;
  } else {
    box.hidden = true;
  }
}

function layerBadge(origin) {
  if (!origin) return el("span", { class: "muted" }, "-");
  const text = String(origin);
  const layer = text.split(" ")[0];
  const known = ["defaults", "nix", "runtime", "env", "environment"].includes(layer) ? layer : "defaults";
  const name = known === "env" ? "environment" : known;
  const detail = text.slice(layer.length).trim();
  return el("span", {}, el("span", { class: "layer layer-" + name }, name),
    detail ? el("span", { class: "origin-detail" }, detail) : null);
}

function healthBadge(health) {
  const state = (health && health.state) || "unknown";
  const kind = state === "healthy" ? "good" : state === "circuit open" ? "bad" : "warn";
  let text = state;
  if (health && health.retry_in_secs !== undefined) text += " (retry in " + health.retry_in_secs + " s)";
  return el("span", { class: "badge " + kind }, text);
}

function keyText(u) {
  if (!u.api_key || !u.api_key.set) return el("span", { class: "muted" }, "not set");
  return el("span", {}, el("span", { class: "badge good" }, "set"), " ", layerBadge(u.api_key.origin));
}

function fillTable(selector, rows, emptySelector) {
  const body = $(selector + " tbody");
  body.replaceChildren(...rows);
  $(selector).hidden = rows.length === 0;
  if (emptySelector) $(emptySelector).hidden = rows.length !== 0;
}

function formatTime(unix) {
  if (!unix) return "never";
  return new Date(unix * 1000).toLocaleString();
}

// The relay card: the overall state, then per relay its address, state and transport, every
// public URL it granted (the node-id name and the custom name), and why a custom name was
// refused or the last error.
function relayLines(relay) {
  const lines = [el("div", {}, relay.state)];
  const links = relay.relays || [];
  for (const link of links) {
    const head = link.address + " — " + link.state + (link.transport ? " over " + link.transport.toUpperCase() : "");
    lines.push(el("div", { class: "mono" }, head));
    for (const url of link.public_urls || []) {
      lines.push(el("div", {}, el("a", { href: url, class: "mono public-url" }, url)));
    }
    if (link.custom_name_refusal) lines.push(el("div", { class: "badge warn" }, "custom name refused: " + link.custom_name_refusal));
    if (link.last_error) lines.push(el("div", { class: "muted" }, "last error: " + link.last_error));
  }
  if (links.length === 0) {
    for (const url of relay.public_urls || (relay.public_url ? [relay.public_url] : [])) {
      lines.push(el("div", {}, el("a", { href: url, class: "mono public-url" }, url)));
    }
  }
  return lines;
}

// ---- pages ----

async function loadStatus() {
  const s = await api("GET", "status");
  showReloadError(s.last_reload_error);
  // The address this page came from is the one that works for whoever is looking at it (the
  // relay's public name, a LAN address); the listen address is what local tools use.
  const here = window.location.origin;
  const info = [
    el("dt", {}, "Version"), el("dd", {}, s.version),
    el("dt", {}, "Runtime"), el("dd", {}, s.runtime),
    el("dt", {}, "Base URL"), el("dd", { class: "mono", id: "base-url" }, here + "/v1"),
  ];
  if (here !== s.listen) info.push(el("dt", {}, "On this machine"), el("dd", { class: "mono" }, s.listen + "/v1"));
  info.push(el("dt", {}, "State directory"), el("dd", { class: "mono" }, s.state_dir));
  $("#gateway-info").replaceChildren(...info);
  $("#sdk-hint").textContent =
    "from openai import OpenAI\nclient = OpenAI(base_url=\"" + here + "/v1\", api_key=\"gk_...\")";
  $("#relay-state").replaceChildren(...relayLines(s.relay));
  $("#cert-state").textContent = s.certificate.state + (s.certificate.expires_at ? " — expires " + formatTime(s.certificate.expires_at) : "");
  fillTable("#status-upstreams", s.upstreams.map(u => el("tr", {},
    el("td", {}, u.name), el("td", {}, u.provider), el("td", {}, healthBadge(u.health)), el("td", {}, keyText(u)))),
    "#status-empty");
}

async function loadUpstreams() {
  const data = await api("GET", "upstreams");
  const select = $("#upstream-form select[name=provider]");
  if (select.options.length === 0) {
    for (const p of data.providers) select.append(el("option", { value: p }, p));
    select.addEventListener("change", providerChanged);
    providerChanged();
  }
  fillTable("#upstreams-table", data.upstreams.map(u => el("tr", { "data-upstream": u.name },
    el("td", {}, el("strong", {}, u.name), u.enabled ? null : el("span", { class: "badge warn" }, " disabled")),
    el("td", {}, u.provider),
    el("td", { class: "mono" }, u.base_url),
    el("td", {}, (u.models || []).join(", ") || el("span", { class: "muted" }, "provider defaults")),
    el("td", { class: "api-key" }, keyText(u)),
    el("td", {}, healthBadge(u.health)),
    el("td", {}, layerBadge(u.origin)),
    el("td", {},
      el("button", { class: "secondary small", type: "button", onclick: () => startEdit(u) }, "Edit"), " ",
      el("button", { class: "danger small", type: "button", onclick: () => removeUpstream(u.name) }, "Remove")),
  )), "#upstreams-empty");
}

function providerChanged() {
  const form = $("#upstream-form");
  const p = form.provider.value;
  form.base_url.placeholder = BASE_URL_HINTS[p] || "provider default";
}

function startEdit(u) {
  const form = $("#upstream-form");
  editingUpstream = u.name;
  editingOriginal = u;
  form.name.value = u.name;
  form.name.readOnly = true;
  form.provider.value = u.provider;
  form.base_url.value = u.base_url;
  form.api_key.value = "";
  form.api_key.placeholder = u.api_key.set ? "(set; leave empty to keep it)" : "paste the provider's key";
  form.models.value = (u.models || []).join(", ");
  form.enabled.checked = u.enabled;
  $("#upstream-form-title").textContent = "Edit upstream " + u.name;
  $("#upstream-save").textContent = "Save changes";
  $("#upstream-cancel").hidden = false;
  form.scrollIntoView({ behavior: "smooth" });
}

function resetUpstreamForm() {
  const form = $("#upstream-form");
  form.reset();
  editingUpstream = null;
  editingOriginal = null;
  form.name.readOnly = false;
  form.api_key.placeholder = "paste the provider's key";
  $("#upstream-form-title").textContent = "Add an upstream";
  $("#upstream-save").textContent = "Add upstream";
  $("#upstream-cancel").hidden = true;
  providerChanged();
}

function modelList(text) {
  return text.split(",").map(m => m.trim()).filter(m => m).join(",");
}

async function saveUpstream(event) {
  event.preventDefault();
  const form = event.target;
  const body = {
    provider: form.provider.value,
    base_url: form.base_url.value.trim(),
    api_key: form.api_key.value.trim(),
    models: form.models.value,
    enabled: form.enabled.checked,
  };
  if (editingUpstream) {
    // Send only what changed, so values from other layers keep their origin.
    const u = editingOriginal;
    if (body.provider === u.provider) delete body.provider;
    if (body.base_url === u.base_url) delete body.base_url;
    if (modelList(body.models) === (u.models || []).join(",")) delete body.models;
    if (body.enabled === u.enabled) delete body.enabled;
    if (!body.api_key) delete body.api_key;
    if (Object.keys(body).length === 0) {
      showMessage("Nothing changed.", "ok");
      return;
    }
  } else {
    body.name = form.name.value.trim();
    if (!modelList(body.models)) delete body.models;
    if (body.enabled) delete body.enabled;
  }
  try {
    if (editingUpstream) await api("PUT", "upstreams/" + encodeURIComponent(editingUpstream), body);
    else await api("POST", "upstreams", body);
    showMessage("Upstream " + (editingUpstream || body.name) + " saved; it is in use now.", "ok");
    resetUpstreamForm();
    await loadUpstreams();
  } catch (e) {
    showMessage(e.message, "error");
  }
}

async function removeUpstream(name) {
  if (!window.confirm("Remove upstream " + name + "? It stays removed after a restart, even if a --config file defines it.")) return;
  try {
    await api("DELETE", "upstreams/" + encodeURIComponent(name));
    showMessage("Upstream " + name + " removed.", "ok");
    await loadUpstreams();
  } catch (e) { showMessage(e.message, "error"); }
}

async function loadModels() {
  const data = await api("GET", "models");
  fillTable("#models-table", data.models.map(m => el("tr", {},
    el("td", { class: "mono" }, m.model),
    el("td", {}, ...m.routes.map((r, i) => el("span", { class: "route" },
      (i + 1) + ". " + r.upstream + (r.upstream_model !== m.model ? " as " + r.upstream_model : "") + " ",
      el("span", { class: "muted" }, "(" + r.why + ")")))),
  )), "#models-empty");
}

let editingToken = null;

// The policy as short chips: models, rpm, tpm, budget, owner.
function policyChips(p) {
  const chips = [];
  if (p.models && p.models.length) chips.push("models " + p.models.join(", "));
  if (p.rpm) chips.push(p.rpm + " req/min");
  if (p.tpm) chips.push(p.tpm + " tokens/min");
  if (p.budget) chips.push("$" + Number(p.budget.usd).toFixed(2) + " / " + p.budget.period);
  if (!chips.length) chips.push("no limits");
  if (p.owner) chips.push("owner " + p.owner);
  return el("span", { class: "policy" }, ...chips.map(c => el("span", { class: "chip" }, c)));
}

async function loadTokens() {
  const data = await api("GET", "tokens");
  fillTable("#tokens-table", data.tokens.map(t => el("tr", { "data-id": t.id },
    el("td", { class: "mono" }, t.id),
    el("td", {}, t.name),
    el("td", {}, policyChips(t.policy || {})),
    el("td", {}, formatTime(t.created_at)),
    el("td", {}, t.expired ? el("span", { class: "badge bad" }, "expired") : formatTime(t.expires_at)),
    el("td", {}, el("span", { class: "row-actions" },
      el("button", { class: "secondary small", type: "button", onclick: () => editToken(t) }, "Edit"),
      el("button", { class: "danger small", type: "button", onclick: () => revokeToken(t) }, "Revoke"))),
  )), "#tokens-empty");
}

// The form's fields as the admin API's edit. Creating: empty fields are left out (no
// limit). Editing: an emptied field is `null` (the limit is removed).
function tokenBody(form, editing) {
  const body = {};
  const text = name => form[name].value.trim();
  const put = (name, value) => {
    if (value === "" || value === null) { if (editing) body[name] = null; }
    else body[name] = value;
  };
  body.name = text("name");
  put("models", text("models") === "" ? null : text("models"));
  put("rpm", text("rpm") === "" ? null : Number(text("rpm")));
  put("tpm", text("tpm") === "" ? null : Number(text("tpm")));
  put("budget", text("budget") === "" ? null : text("budget"));
  if (text("budget") !== "") body.period = form.period.value;
  put("owner", text("owner") === "" ? null : text("owner"));
  if (text("expires") !== "") body.expires = text("expires");
  return body;
}

function editToken(t) {
  const form = $("#token-form");
  const p = t.policy || {};
  editingToken = t.id;
  form.name.value = t.name;
  form.expires.value = "";
  form.expires.placeholder = t.expires_at ? "expires " + formatTime(t.expires_at) + " (e.g. 30d from now, or never)" : "never (e.g. 30d from now)";
  form.models.value = (p.models || []).join(", ");
  form.rpm.value = p.rpm || "";
  form.tpm.value = p.tpm || "";
  form.budget.value = p.budget ? p.budget.usd : "";
  form.period.value = p.budget ? p.budget.period : "month";
  form.owner.value = p.owner || "";
  $("#token-form-title").textContent = "Edit API key " + t.name + " (" + t.id + ")";
  $("#token-submit").textContent = "Save changes";
  $("#token-cancel").hidden = false;
  form.scrollIntoView({ behavior: "smooth" });
}

function resetTokenForm() {
  const form = $("#token-form");
  editingToken = null;
  form.reset();
  form.expires.placeholder = "e.g. 30d, 12h (empty: never)";
  $("#token-form-title").textContent = "Create an API key";
  $("#token-submit").textContent = "Create key";
  $("#token-cancel").hidden = true;
}

async function createToken(event) {
  event.preventDefault();
  const form = event.target;
  try {
    if (editingToken) {
      const id = editingToken;
      await api("PATCH", "tokens/" + encodeURIComponent(id), tokenBody(form, true));
      resetTokenForm();
      showMessage("API key " + id + " updated.", "ok");
      await loadTokens();
      return;
    }
    const created = await api("POST", "tokens", tokenBody(form, false));
    $("#new-token-value").textContent = created.token;
    $("#new-token-curl").textContent = await curlExample(created.token);
    $("#new-token").hidden = false;
    resetTokenForm();
    showMessage("", "ok");
    await loadTokens();
  } catch (e) { showMessage(e.message, "error"); }
}

const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2f5bea", "#1a7f4b", "#a15c07", "#b42318", "#6b4fbb", "#0e7490", "#7c6f00", "#c2410c"];

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A stacked bar chart: one bar per day, one colour per series; `points` are
// {day, series, value}. Values are drawn as given; `format` labels the axis.
function stackedBars(container, points, format) {
  container.replaceChildren();
  if (!points.length) { container.append(el("p", { class: "muted" }, "Nothing in this time.")); return; }
  const days = [...new Set(points.map(p => p.day))].sort();
  const totals = new Map();
  for (const p of points) totals.set(p.series, (totals.get(p.series) || 0) + p.value);
  const series = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a));
  const shown = series.slice(0, COLORS.length - 1);
  const colorOf = name => shown.includes(name) ? COLORS[shown.indexOf(name)] : COLORS[COLORS.length - 1];
  const perDay = new Map(days.map(d => [d, 0]));
  for (const p of points) perDay.set(p.day, perDay.get(p.day) + p.value);
  const max = Math.max(...perDay.values()) || 1;
  const W = 720, H = 220, left = 64, bottom = 24, top = 8;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const plotH = H - bottom - top, step = (W - left) / days.length, barW = Math.max(2, step * 0.7);
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH * (1 - f);
    svg.append(svgEl("line", { x1: left, x2: W, y1: y, y2: y, stroke: "#dde1e7" }));
    svg.append(svgEl("text", { x: left - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#5f6b7a" }, format(max * f)));
  }
  days.forEach((day, i) => {
    let y = top + plotH;
    const x = left + i * step + (step - barW) / 2;
    for (const p of points.filter(p => p.day === day).sort((a, b) => series.indexOf(a.series) - series.indexOf(b.series))) {
      const h = plotH * p.value / max;
      y -= h;
      const rect = svgEl("rect", { x, y, width: barW, height: Math.max(h, 0), fill: colorOf(p.series) });
      rect.append(svgEl("title", {}, `${day} ${p.series}: ${format(p.value)}`));
      svg.append(rect);
    }
    if (days.length <= 16 || i % Math.ceil(days.length / 8) === 0) {
      svg.append(svgEl("text", { x: x + barW / 2, y: H - 6, "text-anchor": "middle", "font-size": 11, fill: "#5f6b7a" }, day.slice(5)));
    }
  });
  const legend = el("div", { class: "legend" }, ...shown.map(name =>
    el("span", {}, el("span", { class: "swatch", style: "background:" + colorOf(name) }), name)));
  if (series.length > shown.length) legend.append(el("span", {}, el("span", { class: "swatch", style: "background:" + COLORS[COLORS.length - 1] }), "others"));
  container.append(svg, legend);
}

const usd = v => "$" + (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v.toFixed(4));
const count = v => v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(1) + "k" : String(Math.round(v));

async function loadUsage() {
  const since = $("#usage-since").value;
  const [summary, series, tokens] = await Promise.all([
    api("GET", "usage?by=key&since=" + encodeURIComponent(since)),
    api("GET", "usage/series?since=" + encodeURIComponent(since)),
    api("GET", "tokens"),
  ]);
  const budgets = tokens.tokens.filter(t => t.policy && t.policy.budget);
  $("#usage-budgets").replaceChildren(...budgets.map(t => {
    const limit = t.policy.budget.usd, spent = t.spent_usd || 0, held = t.held_usd || 0;
    const pct = v => Math.min(100, limit > 0 ? 100 * v / limit : 100);
    return el("div", { class: "budget" + (spent >= limit ? " over" : ""), "data-id": t.id },
      el("div", { class: "label" }, el("span", {}, t.name + " (" + t.id + ")"),
        el("span", {}, usd(spent) + " of " + usd(limit) + " this " + t.policy.budget.period + (held > 0 ? ", " + usd(held) + " in flight" : ""))),
      el("div", { class: "bar" },
        el("div", { class: "spent", style: `width:${pct(spent)}%` }),
        el("div", { class: "held", style: `width:${Math.max(0, pct(spent + held) - pct(spent))}%` })));
  }));
  $("#usage-budgets-empty").hidden = budgets.length > 0;
  stackedBars($("#usage-spend-chart"), series.spend.map(p => ({ day: p.day, series: p.name || p.key_id, value: p.cost_usd })), usd);
  stackedBars($("#usage-tokens-chart"), series.tokens.map(p => ({ day: p.day, series: p.model, value: p.input_tokens + p.output_tokens })), count);
  const rows = [...summary.rows].sort((a, b) => b.cost_usd - a.cost_usd || b.requests - a.requests);
  fillTable("#usage-keys", rows.map(r => el("tr", {},
    el("td", {}, (r.name ? r.name + " " : "") , el("span", { class: "muted mono" }, r.group || "")),
    el("td", {}, String(r.requests)),
    el("td", {}, count(r.input_tokens)),
    el("td", {}, count(r.output_tokens)),
    el("td", {}, usd(r.cost_usd) + (r.unknown_cost_requests ? " + unknown (" + r.unknown_cost_requests + ")" : "")),
    el("td", {}, String(r.errors)),
  )), "#usage-empty");
}

// A ready-to-paste request with a model the routes know (or a placeholder).
async function curlExample(token) {
  let model = "MODEL";
  try {
    const models = await api("GET", "models");
    if (models.models.length) model = models.models[0].model;
  } catch (_) { /* keep the placeholder */ }
  const body = JSON.stringify({ model, messages: [{ role: "user", content: "Hello!" }] });
  return "curl " + window.location.origin + "/v1/chat/completions \\\n" +
    "  -H 'Authorization: Bearer " + token + "' \\\n" +
    "  -H 'Content-Type: application/json' \\\n" +
    "  -d '" + body + "'";
}

async function revokeToken(t) {
  if (!window.confirm("Revoke API key " + t.name + " (" + t.id + ")? Clients using it stop working at once.")) return;
  try {
    await api("DELETE", "tokens/" + encodeURIComponent(t.id));
    showMessage("API key " + t.id + " revoked.", "ok");
    await loadTokens();
  } catch (e) { showMessage(e.message, "error"); }
}

function valueText(entry) {
  if (entry.removed) return el("span", { class: "muted" }, "(removed)");
  const v = entry.value;
  if (Array.isArray(v)) return v.join(", ");
  return v === null || v === undefined ? "" : String(v);
}

function originOf(entry) {
  const o = entry.origin || {};
  let detail = "";
  if (o.file) detail = o.file + ":" + o.line;
  else if (o.variable) detail = o.variable;
  else if (o.reason) detail = o.reason;
  return (o.layer || "defaults") + (detail ? " " + detail : "");
}

async function loadConfig() {
  const data = await api("GET", "config");
  showReloadError(data.last_reload_error);
  const keys = Object.keys(data.values).sort();
  $("#config-keys").replaceChildren(...keys.map(k => el("option", { value: k })));
  fillTable("#config-table", keys.map(k => {
    const entry = data.values[k];
    const layer = (entry.origin && entry.origin.layer) || "defaults";
    return el("tr", { "data-key": k, "data-layer": layer },
      el("td", { class: "mono" }, k),
      el("td", { class: "mono" }, valueText(entry)),
      el("td", {}, layerBadge(originOf(entry))),
      entry.removed
        ? el("td", {}, el("button", { class: "secondary small", type: "button", title: "Undo the removal: lower layers apply again", onclick: () => unsetKey(k) }, "Restore"))
        : el("td", {},
          el("button", { class: "secondary small", type: "button", onclick: () => editKey(k, entry) }, "Change"), " ",
          layer === "runtime"
            ? el("button", { class: "danger small", type: "button", title: "Remove this value from the runtime layer: lower layers apply again", onclick: () => unsetKey(k) }, "Reset")
            : null),
    );
  }));
}

function editKey(key, entry) {
  const form = $("#config-form");
  form.key.value = key;
  form.value.value = entry.value === "(set)" ? "" : (Array.isArray(entry.value) ? entry.value.join(", ") : (entry.value ?? ""));
  form.value.focus();
  form.scrollIntoView({ behavior: "smooth" });
}

async function saveKey(event) {
  event.preventDefault();
  const form = event.target;
  const key = form.key.value.trim();
  try {
    await api("PUT", "config/" + encodeURIComponent(key), { value: form.value.value });
    showMessage(key + " saved in the runtime configuration; it is in effect now.", "ok");
    form.reset();
    await loadConfig();
  } catch (e) { showMessage(e.message, "error"); }
}

async function unsetKey(key) {
  try {
    await api("DELETE", "config/" + encodeURIComponent(key));
    showMessage(key + ": the runtime layer no longer sets it; lower layers apply again.", "ok");
    await loadConfig();
  } catch (e) { showMessage(e.message, "error"); }
}

const LOADERS = { status: loadStatus, upstreams: loadUpstreams, models: loadModels, tokens: loadTokens, usage: loadUsage, config: loadConfig };

async function route() {
  const name = (window.location.hash || "#status").slice(1);
  const page = PAGES.includes(name) ? name : "status";
  for (const p of PAGES) $("#page-" + p).hidden = p !== page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  showMessage("", "ok");
  if (page !== "tokens") $("#new-token").hidden = true;
  try {
    await LOADERS[page]();
    if (page !== "config" && page !== "status") {
      const s = await api("GET", "reload");
      showReloadError(s.last_reload_error);
    }
  } catch (e) {
    showMessage(e.message, "error");
  }
  document.body.dataset.loaded = page;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#upstream-form").addEventListener("submit", saveUpstream);
  $("#upstream-cancel").addEventListener("click", resetUpstreamForm);
  $("#token-form").addEventListener("submit", createToken);
  $("#token-cancel").addEventListener("click", resetTokenForm);
  $("#usage-since").addEventListener("change", () => loadUsage().catch(e => showMessage(e.message, "error")));
  $("#config-form").addEventListener("submit", saveKey);
  $("#new-token-copy").addEventListener("click", () => navigator.clipboard.writeText($("#new-token-value").textContent));
  $("#logout").addEventListener("click", async () => {
    await fetch("/ui/logout", { method: "POST", headers: { "X-Gate-CSRF": "1" }, credentials: "same-origin" });
    window.location.href = "/ui/";
  });
  window.addEventListener("hashchange", route);
  route();
});
