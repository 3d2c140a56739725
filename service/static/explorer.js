// The alignment explorer: a page over the service's own routes, relative to where it is served.
// It only calls bounded routes (a prefix page of /entities, k candidates, k pairs), so it stays
// fast whatever the size of the KGs, and it builds every element from text (never HTML), since
// identifiers come from the data.
"use strict";

const KEY_STORAGE = "mimea-api-key";
const SUGGESTIONS = 20;
const TYPING_PAUSE_MS = 200;

const state = {key: sessionStorage.getItem(KEY_STORAGE) || "", modalities: [], entity: null};
const latest = {};  // the last request of each kind: answers to older ones are dropped

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, error) {
    super(error && error.message ? error.message : `HTTP ${status}`);
    this.status = status;
    this.code = error ? error.code : "http_error";
    this.details = error ? error.details : null;
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "—";
  const text = Number(value).toFixed(digits);
  return Number(text) === 0 ? (0).toFixed(digits) : text;  // no "-0.000"
}

// Identifiers hold slashes, '?', '#' and '%': one encoded path segment keeps them whole.
// Routes are relative to the page ("./": "align:batch" alone would read as a URL scheme).
function entityPath(route, entity) {
  return `${route}/${encodeURIComponent(entity)}`;
}

async function api(path, {method = "GET", body} = {}) {
  const headers = {};
  if (state.key) headers["X-API-Key"] = state.key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new ApiError(response.status, answer && answer.error);
    if (response.status === 401) askForKey(error.message);
    throw error;
  }
  return answer;
}

// Runs ``request`` as the newest of its kind; resolves to null once a newer one has started.
async function newest(kind, request) {
  const token = (latest[kind] || 0) + 1;
  latest[kind] = token;
  const answer = await request();
  return latest[kind] === token ? answer : null;
}

function debounce(fn) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), TYPING_PAUSE_MS);
  };
}

function showStatus(message) {
  const status = $("status");
  status.textContent = message || "";
  status.hidden = !message;
}

function askForKey(message) {
  $("key-status").textContent = `This service needs an API key (${message}).`;
  $("key-form").classList.add("wanted");
  $("api-key").focus();
}

function bar(value, kind) {
  if (value === null || value === undefined) return el("span", {class: "missing", text: "missing"});
  const fill = el("span", {class: `fill ${kind}${value < 0 ? " negative" : ""}`});
  fill.style.width = `${Math.min(1, Math.abs(value)) * 100}%`;
  return el("span", {class: "measure"}, el("span", {class: "bar"}, fill),
            el("span", {class: "value", text: fmt(value)}));
}

// A fusion weight from an /align breakdown; "missing" where the entity lacks the modality.
function weightBar(breakdown, side, modality) {
  const missing = breakdown[`${side}_missing`].includes(modality);
  return bar(missing ? null : breakdown[`${side}_weights`][modality], side);
}

function kgBadge(kg) {
  return el("span", {class: `badge kg${kg}`, text: `KG${kg}`});
}

function entityButton(entity) {
  return el("button", {type: "button", class: "link", title: "Explore this entity",
                       onclick: () => selectEntity(entity)}, entity);
}

// ------------------------------------------------------------------------------ the model

async function loadModel() {
  try {
    const info = await api("./model");
    state.modalities = info.modalities;
    $("model-info").textContent =
      `model ${info.model_version} · KG1 ${info.entities.kg1.toLocaleString()} and KG2 ` +
      `${info.entities.kg2.toLocaleString()} entities · ranking ${info.default_metric} by default`;
    const metric = $("candidates-metric");
    metric.replaceChildren(el("option", {value: "", text: `model default (${info.default_metric})`}),
                           ...info.available_metrics.map((m) => el("option", {value: m, text: m})));
    $("key-form").classList.remove("wanted");
    $("key-status").textContent = state.key ? "key accepted" : "";
    return true;
  } catch (error) {
    $("model-info").textContent = error.status === 401 ? "an API key is needed" : error.message;
    return false;
  }
}

// ------------------------------------------------------------------------------ search

async function search() {
  const prefix = $("search-prefix").value;
  const params = new URLSearchParams({prefix, limit: String(SUGGESTIONS)});
  if ($("search-kg").value) params.set("kg", $("search-kg").value);
  try {
    const page = await newest("search", () => api(`./entities?${params}`));
    if (page === null) return;
    $("search-results").replaceChildren(...page.entities.map((item) => el(
      "li", {}, kgBadge(item.kg), entityButton(item.entity))));
    $("search-more").hidden = !page.has_more;
    if (!page.entities.length) {
      $("search-results").append(el("li", {class: "muted", text: "no entity starts with this"}));
    }
    showStatus("");
  } catch (error) {
    showStatus(error.message);
  }
}

// ------------------------------------------------------------------------------ an entity

async function selectEntity(entity) {
  state.entity = entity;
  if (decodeURIComponent(location.hash.slice(1)) !== entity) {
    history.replaceState(null, "", `#${encodeURIComponent(entity)}`);
  }
  $("entity-panel").hidden = false;
  $("entity-title").textContent = entity;
  $("entity-kg").textContent = "";
  $("compare-source").value = entity;
  await Promise.all([loadDecision(entity), loadCandidates(entity)]);
}

async function loadDecision(entity) {
  const panel = $("decision-panel");
  try {
    const decision = await newest("decision", () => api(entityPath("./alignment", entity)));
    if (decision === null) return;
    panel.replaceChildren(...describeDecision(decision));
    panel.className = `decision ${decision.decision}`;
    panel.hidden = false;
  } catch (error) {
    // 404: this checkpoint stores no decided alignment (or predates it): nothing to show.
    if (state.entity === entity) panel.hidden = true;
  }
}

function describeDecision(d) {
  const parts = [];
  if (d.decision === "seed") {
    parts.push(el("strong", {text: "Seed pair"}), " (a training label) with ",
               entityButton(d.counterpart));
  } else if (d.decision === "match") {
    parts.push(el("strong", {text: "Decided counterpart"}), " ", entityButton(d.counterpart),
               el("span", {class: "probability",
                           text: ` probability ${fmt(d.probability)} (threshold ${fmt(d.threshold)})`}));
  } else {
    parts.push(el("strong", {text: "No counterpart"}), d.probability === null ?
      " (the one-to-one decoding paired it with nothing)" :
      ` (its pairing's probability ${fmt(d.probability)} is under the threshold ${fmt(d.threshold)})`);
  }
  if (d.runner_up) {
    parts.push(el("span", {class: "muted", text: d.decision === "no_match" ? " · best candidate "
                                                                           : " · runner-up "}),
               entityButton(d.runner_up));
  }
  return parts;
}

async function loadCandidates(entity) {
  const k = $("candidates-k").value;
  const params = new URLSearchParams({k});
  if ($("candidates-metric").value) params.set("metric", $("candidates-metric").value);
  $("candidates-status").textContent = "ranking…";
  try {
    const answer = await newest("candidates", async () => {
      const list = await api(`${entityPath("./candidates", entity)}?${params}`);
      const pairs = list.candidates.map((c) => ({source: entity, target: c.entity}));
      const scored = pairs.length ? await api("./align:batch", {method: "POST", body: {pairs}})
                                  : {results: []};
      return {list, scored: scored.results};
    });
    if (answer === null) return;
    renderCandidates(answer.list, answer.scored);
    showStatus("");
  } catch (error) {
    $("candidates").replaceChildren();
    $("source-weights").replaceChildren();
    $("candidates-status").textContent = error.message;
  }
}

function renderCandidates(list, scored) {
  $("entity-kg").replaceChildren(kgBadge(list.kg));
  const first = scored.find((r) => !r.error);
  $("source-weights").replaceChildren(...(first ? [
    el("span", {class: "muted", text: "fusion weights of this entity: "}),
    ...Object.keys(first.modalities.source_weights).map((m) => el(
      "span", {class: "weight"}, el("span", {class: "name", text: m}),
      weightBar(first.modalities, "source", m)))] : []));
  $("candidates-status").textContent =
    `${list.candidates.length} candidates from KG${list.target_kg}, ranked by ${list.metric}`;
  $("candidates").replaceChildren(...list.candidates.map((c, i) => candidateCard(c, scored[i])));
}

function candidateCard(c, pair) {
  const weights = pair && !pair.error ? pair.modalities : null;
  const head = el("div", {class: "head"},
    el("span", {class: "rank", text: `#${c.rank}`}),
    el("div", {class: "name"}, entityButton(c.entity), " ",
       weights && pair.mutual_nearest ? el("span", {class: "badge mutual", text: "mutual best"}) : null,
       el("div", {class: "scores", text:
         `score ${fmt(c.score)} · plan share ${fmt(c.probability)} · cosine ${fmt(c.cosine)}`})),
    el("button", {type: "button", onclick: () => compare(state.entity, c.entity), text: "compare"}));
  const rows = Object.entries(c.modality_similarity).map(([m, sim]) => el("tr", {},
    el("th", {text: m}), el("td", {}, bar(sim, "similarity")),
    el("td", {}, weights ? weightBar(weights, "source", m) : "—"),
    el("td", {}, weights ? weightBar(weights, "target", m) : "—")));
  const table = el("table", {class: "modalities"},
    el("thead", {}, el("tr", {}, el("th", {text: "modality"}), el("th", {text: "similarity"}),
                       el("th", {text: "weight (entity)"}), el("th", {text: "weight (candidate)"}))),
    el("tbody", {}, ...rows));
  return el("li", {class: "candidate"}, head, table);
}

// ------------------------------------------------------------------------------ compare

async function compare(source, target) {
  $("compare-source").value = source;
  $("compare-target").value = target;
  const result = $("compare-result");
  try {
    const pair = await newest("compare", () => api("./align", {method: "POST", body: {source, target}}));
    if (pair === null) return;
    result.replaceChildren(...describePair(pair));
  } catch (error) {
    const suggestions = (error.details && error.details.suggestions) || [];
    result.replaceChildren(el("p", {class: "error", text: error.message}), ...suggestions.map(
      (s) => el("button", {type: "button", class: "link", text: s, onclick: () => compare(
        source === error.details.entity ? s : source, target === error.details.entity ? s : target)})));
  }
  $("compare-panel").scrollIntoView({block: "nearest"});
}

function describePair(p) {
  const metrics = ["cosine", "csls", "sinkhorn"];
  const summary = el("p", {class: "scores"},
    `${p.source.entity} (KG${p.source.kg}) and ${p.target.entity} (KG${p.target.kg}): `,
    `cosine ${fmt(p.cosine)} · csls ${fmt(p.csls)} · sinkhorn ${fmt(p.sinkhorn)} · plan share ` +
    `${fmt(p.probability)}`,
    p.match_probability === null || p.match_probability === undefined ? "" :
      ` · match probability ${fmt(p.match_probability)}`,
    p.mutual_nearest ? el("span", {class: "badge mutual", text: "mutual best"}) : "");
  const ranks = el("table", {class: "ranks"},
    el("thead", {}, el("tr", {}, el("th", {text: "rank"}),
                       ...metrics.map((m) => el("th", {text: m})))),
    el("tbody", {},
       el("tr", {}, el("th", {text: "target among the source's candidates"}),
          ...metrics.map((m) => el("td", {text: p.target_rank[m] ?? "—"}))),
       el("tr", {}, el("th", {text: "source among the target's candidates"}),
          ...metrics.map((m) => el("td", {text: p.source_rank[m] ?? "—"})))));
  const mods = p.modalities;
  const table = el("table", {class: "modalities"},
    el("thead", {}, el("tr", {}, el("th", {text: "modality"}), el("th", {text: "similarity"}),
                       el("th", {text: "weight (source)"}), el("th", {text: "weight (target)"}))),
    el("tbody", {}, ...Object.keys(mods.similarity).map((m) => el("tr", {},
      el("th", {text: m}), el("td", {}, bar(mods.similarity[m], "similarity")),
      el("td", {}, weightBar(mods, "source", m)), el("td", {}, weightBar(mods, "target", m))))));
  return [summary, ranks, table];
}

async function suggestPairs(input) {
  const params = new URLSearchParams({prefix: input.value, limit: String(SUGGESTIONS)});
  try {
    const page = await newest("suggest", () => api(`./entities?${params}`));
    if (page === null) return;
    $("compare-suggestions").replaceChildren(
      ...page.entities.map((e) => el("option", {value: e.entity, text: `KG${e.kg}`})));
  } catch (error) {
    showStatus(error.message);
  }
}

// ------------------------------------------------------------------------------ wiring

async function start() {
  $("api-key").value = state.key;
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.key);
    if (await loadModel()) begin();
  });
  const typed = debounce(search);
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  $("search-prefix").addEventListener("input", typed);
  $("search-kg").addEventListener("change", search);
  for (const id of ["candidates-k", "candidates-metric"]) {
    $(id).addEventListener("change", () => state.entity && loadCandidates(state.entity));
  }
  const suggest = debounce(suggestPairs);
  for (const id of ["compare-source", "compare-target"]) {
    $(id).addEventListener("input", (event) => suggest(event.target));
  }
  $("compare-form").addEventListener("submit", (event) => {
    event.preventDefault();
    compare($("compare-source").value.trim(), $("compare-target").value.trim());
  });
  if (await loadModel()) begin();
}

// Once the API answers: the search list, and the entity shown last or named by the address.
function begin() {
  search();
  const named = location.hash.length > 1 ? decodeURIComponent(location.hash.slice(1)) : null;
  if (state.entity || named) selectEntity(state.entity || named);
}

document.addEventListener("DOMContentLoaded", start);
