// picorag's page: BM25, dense and hybrid results side by side, a streamed answer with clickable
// sources, metadata filters and uploads. Plain JavaScript, no build step, no network beyond this server.
// Text from the KB is only ever put into the page with textContent, never parsed as HTML.
"use strict";

const MODES = ["bm25", "dense", "hybrid"];
const $ = (sel) => document.querySelector(sel);
const state = { dense: false, facets: [], filters: {} };
let apiKey = sessionStorage.getItem("picorag-key") || "";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function authHeaders(extra = {}) {
  return apiKey ? { ...extra, Authorization: "Bearer " + apiKey } : extra;
}

// fetch that turns JSON errors ({"error": {"message"}}) and a missing API key into exceptions
async function request(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: authHeaders(opts.headers) });
  if (r.status === 401) {
    $("#key-panel").hidden = false;
    throw new Error("this server needs an API key (enter it above)");
  }
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try { message = (await r.json()).error.message || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return r;
}

const api = async (path, opts) => (await request(path, opts)).json();
const postJSON = (path, body) =>
  request(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

function where() {
  return Object.keys(state.filters).length ? state.filters : null;
}

function fmtScore(s) {
  return Math.abs(s) >= 100 ? s.toFixed(0) : Number(s).toPrecision(3);
}

// -- KB info and filters ------------------------------------------------------------------------

async function loadKb() {
  const info = await api("/kb");
  state.dense = Boolean(info.dense);
  const how = state.dense ? `BM25 + dense (${info.dense.model.split("/").pop()})` : "BM25 only";
  $("#kb-info").textContent = `${info.docs} documents · ${info.chunks} chunks · ${how}`;
  fillSelect($("#ask-mode"), state.dense ? ["hybrid", "bm25", "dense"] : ["bm25"]);
  fillSelect($("#ask-strategy"), info.strategies || ["plain"]);
  $("#ask-strategy").hidden = (info.strategies || []).length < 2;
}

function fillSelect(select, values) {
  const current = select.value;
  select.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
  if (values.includes(current)) select.value = current;
}

async function loadFacets() {
  state.facets = (await api("/facets")).facets;
  const keySel = $("#facet-key");
  const current = keySel.value;
  keySel.replaceChildren(...state.facets.map((f) => el("option", { value: f.key }, f.key)));
  if (state.facets.some((f) => f.key === current)) keySel.value = current;
  $("#filters").hidden = state.facets.length === 0 && !where();
  fillValues();
}

function fillValues() {
  const facet = state.facets.find((f) => f.key === $("#facet-key").value);
  const values = facet ? facet.values : [];
  $("#facet-value").replaceChildren(
    ...values.map((v) => el("option", { value: v.value }, `${v.value} (${v.count})`)));
}

function addFilter() {
  const key = $("#facet-key").value, value = $("#facet-value").value;
  if (!key || !value) return;
  const values = state.filters[key] || (state.filters[key] = []);
  if (!values.includes(value)) values.push(value);
  renderChips();
  rerun();
}

function renderChips() {
  const chips = [];
  for (const [key, values] of Object.entries(state.filters)) {
    for (const value of values) {
      const remove = () => {
        state.filters[key] = state.filters[key].filter((v) => v !== value);
        if (!state.filters[key].length) delete state.filters[key];
        renderChips();
        rerun();
      };
      chips.push(el("span", { class: "chip" }, `${key} = ${value}`,
        el("button", { type: "button", title: "remove filter", "aria-label": "remove filter", onclick: remove }, "×")));
    }
  }
  $("#chips").replaceChildren(...chips);
}

function rerun() {
  if ($("#q").value.trim()) search($("#q").value.trim());
}

// -- search: three columns ----------------------------------------------------------------------

function hitItem(hit, rank) {
  const li = el("li", { class: "hit", tabindex: "0", "data-id": hit.id },
    el("div", { class: "hit-head" },
      el("span", { class: "rank" }, rank),
      el("span", { class: "cite-line" }, hit.citation || hit.id),
      el("span", { class: "score", title: "score" }, fmtScore(hit.score))),
    el("div", { class: "snippet" }, hit.text));
  li.addEventListener("click", () => showDetail(hit));
  li.addEventListener("keydown", (e) => { if (e.key === "Enter") showDetail(hit); });
  // the same chunk in the other columns lights up: where the methods agree
  li.addEventListener("mouseenter", () => markShared(hit.id, true));
  li.addEventListener("mouseleave", () => markShared(hit.id, false));
  return li;
}

function markShared(id, on) {
  for (const li of document.querySelectorAll(".hit")) {
    if (li.dataset.id === id) li.classList.toggle("shared", on);
  }
}

async function searchColumn(mode, query, k) {
  const col = document.querySelector(`.col[data-mode=${mode}]`);
  const list = col.querySelector(".hits"), took = col.querySelector(".took");
  took.textContent = "";
  if (mode !== "bm25" && !state.dense) {
    list.replaceChildren(el("li", { class: "note" }, "This KB has no vectors: dense and hybrid need ",
      el("code", {}, "--dense"), " (picorag build … --dense auto, or picorag add KB --dense auto)."));
    return 0;
  }
  list.replaceChildren(el("li", { class: "note" }, "searching…"));
  try {
    const r = await (await postJSON("/search", { query, k, mode, where: where() })).json();
    took.textContent = `${r.took_ms.toFixed(1)} ms`;
    list.replaceChildren(...(r.hits.length ? r.hits.map((h, i) => hitItem(h, i + 1))
      : [el("li", { class: "note" }, "no results")]));
    return r.hits.length;
  } catch (e) {
    list.replaceChildren(el("li", { class: "error" }, e.message));
    return 0;
  }
}

async function search(query) {
  const k = Number($("#k").value);
  $("#status").textContent = "";
  const counts = await Promise.all(MODES.map((m) => searchColumn(m, query, k)));
  const filters = where() ? " (filtered)" : "";
  $("#status").textContent = `“${query}”: ${counts.join(" / ")} results (BM25 / dense / hybrid)${filters}`;
  const url = new URL(location.href);
  url.searchParams.set("q", query);
  history.replaceState(null, "", url);
}

// -- ask: streamed answer with numbered sources ---------------------------------------------------

// server-sent events from a POST response: yields {event, data}
async function* sse(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      yield { event, data: data ? JSON.parse(data) : {} };
    }
  }
}

function renderAnswer(text, citations, hits) {
  const byN = new Map(citations.map((c) => [c.n, hits.find((h) => h.id === c.id) || c]));
  const parts = [];
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    const hit = byN.get(Number(m[1]));
    if (!hit) continue;
    parts.push(text.slice(last, m.index));
    parts.push(el("a", { class: "marker", href: "#", title: hit.citation || hit.id,
      onclick: (e) => { e.preventDefault(); showDetail(hit); } }, m[0]));
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  $("#answer").replaceChildren(...parts);
  $("#sources").replaceChildren(...citations.map((c) => {
    const hit = byN.get(c.n);
    return el("li", {}, el("span", { class: "n" }, `[${c.n}]`),
      el("a", { href: "#", "data-id": c.id, onclick: (e) => { e.preventDefault(); showDetail(hit); } },
        c.citation || c.id));
  }));
}

async function askQuestion(question) {
  const answer = $("#answer"), button = $("#ask-button");
  answer.replaceChildren();
  answer.classList.add("streaming");
  $("#sources").replaceChildren();
  button.disabled = true;
  try {
    const body = { question, stream: true, k: Number($("#k").value), mode: $("#ask-mode").value, where: where(),
      strategy: $("#ask-strategy").value || "plain" };
    const response = await postJSON("/ask", body);
    for await (const { event, data } of sse(response)) {
      if (event === "token") answer.append(data.text);
      else if (event === "sources") renderAnswer(data.answer, data.citations, data.retrieval);
      else if (event === "error") throw new Error(data.message);
    }
    if (!answer.textContent) answer.textContent = "(no answer)";
  } catch (e) {
    answer.append(el("div", { class: "error" }, e.message));
  } finally {
    answer.classList.remove("streaming");
    button.disabled = false;
  }
}

// -- the cited chunk ----------------------------------------------------------------------------

function showDetail(hit) {
  $("#detail-title").textContent = hit.citation || hit.id;
  const score = hit.score === undefined ? "" : ` · score ${fmtScore(hit.score)}`;
  $("#detail-id").textContent = `chunk ${hit.id}` + (hit.doc_id ? ` · document ${hit.doc_id}` : "") + score;
  $("#detail-text").textContent = hit.text || "";
  const rows = Object.entries(hit.meta || {}).filter(([, v]) => v !== "" && v !== null);
  $("#detail-meta").replaceChildren(...rows.map(([k, v]) =>
    el("tr", {}, el("th", {}, k), el("td", {}, typeof v === "object" ? JSON.stringify(v) : v))));
  const dialog = $("#detail");
  if (!dialog.open) dialog.showModal();
}

// -- upload ---------------------------------------------------------------------------------------

async function upload(files) {
  const status = $("#upload-status");
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  status.textContent = `uploading ${files.length} file(s)…`;
  try {
    const r = await (await request("/documents", { method: "POST", body: form })).json();
    const ids = r.chunk_ids.slice(0, 5).join(", ") + (r.chunk_ids.length > 5 ? ", …" : "");
    status.textContent = `added ${r.added}, replaced ${r.replaced}, unchanged ${r.unchanged} document(s); ` +
      `${r.chunks} new chunk(s)${ids ? ": " + ids : ""}` + (r.warnings.length ? ` (${r.warnings.join("; ")})` : "");
    $("#upload-form").reset();
    await Promise.all([loadKb(), loadFacets()]);
  } catch (e) {
    status.replaceChildren(el("span", { class: "error" }, e.message));
  }
}

// -- wiring ---------------------------------------------------------------------------------------

async function start() {
  try {
    await Promise.all([loadKb(), loadFacets()]);
    $("#key-panel").hidden = true;
  } catch (e) {
    $("#kb-info").textContent = e.message;
    return;
  }
  const q = new URL(location.href).searchParams.get("q");
  if (q) {
    $("#q").value = q;
    $("#question").value = q;
    search(q);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("#q").value.trim();
    if (!q) return;
    if (!$("#question").value.trim()) $("#question").value = q;
    search(q);
  });
  $("#ask-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("#question").value.trim();
    if (q) askQuestion(q);
  });
  $("#upload-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const files = $("#files").files;
    if (files.length) upload(files);
  });
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = $("#api-key").value.trim();
    sessionStorage.setItem("picorag-key", apiKey);
    start();
  });
  $("#facet-key").addEventListener("change", fillValues);
  $("#add-filter").addEventListener("click", addFilter);
  start();
});
