// bge-triton web page: a client of the proxy's public API only (/v1/models, /v1/embeddings,
// /v1/similarity, /tokenize). No framework, no CDN: this file, index.html and style.css are all there is.
"use strict";

const KEY_STORAGE = "bge-triton-api-key";
const MAX_LINES = 200; // many-text mode: an N x N table gets unreadable (and slow) beyond this
const MAX_CHIPS = 1024; // tokens drawn per text (past the window mark); the rest are counted

const $ = (id) => document.getElementById(id);
const state = { models: [], mode: "two", thresholdTouched: false };
const HAN = /\p{Script=Han}/u; // Chinese characters: such texts are read with the model's Chinese score bands

// ---------------------------------------------------------------- API calls
class ApiError extends Error {
  constructor(status, message, type) {
    super(message);
    this.status = status;
    this.type = type || "";
  }
}

function apiUrl(path) {
  // relative to the page (/ui/ -> /), so the page also works behind a path prefix
  return new URL("../" + path.replace(/^\//, ""), window.location.href).href;
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function headers() {
  const h = { "content-type": "application/json" };
  if (apiKey()) h.authorization = "Bearer " + apiKey();
  return h;
}

async function api(path, body) {
  const init = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  let response;
  try {
    response = await fetch(apiUrl(path), init);
  } catch (err) {
    throw new ApiError(0, "could not reach the proxy (" + err.message + ")", "network_error");
  }
  const text = await response.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error;
    const message = error && error.message ? error.message : text || response.statusText;
    throw new ApiError(response.status, message, error ? error.type : "");
  }
  return { data, headers: response.headers };
}

// ---------------------------------------------------------------- errors and progress
function showError(err) {
  const box = $("error");
  const status = err instanceof ApiError && err.status ? err.status + " " : "";
  const type = err instanceof ApiError && err.type ? err.type : "error";
  box.textContent = "";
  const head = document.createElement("strong");
  head.textContent = status + type + ": ";
  const message = document.createElement("span");
  message.className = "error-message";
  message.textContent = err.message;
  box.append(head, message);
  if (err instanceof ApiError && err.status === 401) {
    const hint = document.createElement("div");
    hint.className = "small";
    hint.textContent = "Enter the proxy's API key at the top right; it is kept for this tab only.";
    box.append(hint);
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// the result box each mode's primary button fills: hidden when that action fails, so no stale result stays
const RESULTS = { compare: "two-result", matrix: "many-result", tokenize: "token-result", rerank: "rerank-result" };

async function action(button, work) {
  clearError();
  const buttons = document.querySelectorAll("button.primary");
  buttons.forEach((b) => (b.disabled = true));
  document.body.classList.add("busy");
  try {
    await work();
  } catch (err) {
    showError(err);
    if (button && RESULTS[button.id]) {
      $(RESULTS[button.id]).hidden = true;
      if (button.id === "matrix") state.matrix = null;
    }
  } finally {
    buttons.forEach((b) => (b.disabled = false));
    document.body.classList.remove("busy");
    document.body.dataset.seq = String(Number(document.body.dataset.seq || 0) + 1);
  }
}

// ---------------------------------------------------------------- models and settings
function currentModel() {
  return state.models.find((m) => m.id === $("model").value) || null;
}

function inputType() {
  return document.querySelector("input[name=input_type]:checked").value;
}

function instructionFor(card) {
  if (!card) return "";
  return (inputType() === "query" ? card.query_instruction : card.passage_instruction) || "";
}

async function loadModels() {
  const select = $("model");
  const previous = select.value;
  try {
    const { data } = await api("/v1/models");
    state.models = data.data.filter((card) => !card.parent); // NAME-query / NAME-passage are variants of NAME
    select.textContent = "";
    for (const card of state.models) {
      const option = document.createElement("option");
      option.value = card.id;
      option.textContent = card.id + (card.m3 ? "  (bge-m3)" : "");
      select.append(option);
    }
    if (state.models.some((m) => m.id === previous)) select.value = previous;
    showModelInfo();
    document.body.dataset.models = "loaded";
  } catch (err) {
    document.body.dataset.models = "error";
    showError(err);
  }
}

function showModelInfo() {
  const card = currentModel();
  const info = $("model-info");
  if (!card) {
    info.textContent = "";
    return;
  }
  const parts = [card.dimensions + "-dim", card.max_tokens + "-token window", card.pooling + " pooling"];
  if (card.m3) parts.push("dense · sparse · ColBERT");
  const prefix = instructionFor(card);
  if (prefix) parts.push(inputType() + " instruction “" + prefix + "”");
  info.textContent = parts.join(" · ");
}

function showKeyState() {
  $("key-state").textContent = apiKey() ? "key set for this tab" : "";
}

// ---------------------------------------------------------------- numbers
function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb || 1);
}

// ---------------------------------------------------------------- what a score means for this model
// Cosine scales differ between models, so the words come from the model's own scores on human-rated STS pairs,
// measured at export (card.score_bands, see export/score_bands.py): a score at or above thresholds.paraphrase
// reads like pairs people rated 4-5 of 5, at or above thresholds.related like pairs rated 2-4, below it like 0-2.
const LABEL_CLASS = { unrelated: "b-1", related: "b-3", paraphrase: "b-5" };
const LANGUAGE_NAMES = { zh: "Chinese", en: "English" };

function language(texts) {
  return texts.some((t) => HAN.test(t)) ? "zh" : "en";
}

function scoreBands(card, lang) {
  const bands = card && card.score_bands && card.score_bands.languages[lang];
  return bands && bands.ordered ? bands : null; // unordered: the model's scores do not separate the bands
}

function band(score, card, lang) {
  // [label, css class, note]; no words (label "") for a model without calibration
  const bands = scoreBands(card, lang);
  if (!bands) {
    const measured = card && card.score_bands && card.score_bands.languages[lang];
    const why = measured
      ? "this model's cosines do not rise with human scores of " + LANGUAGE_NAMES[lang] + " STS pairs"
      : "no score bands for this model";
    return ["", "", why + ": no words, compare the cosine with other pairs"];
  }
  let found = bands.bands[0];
  for (const b of bands.bands) if (b.label in bands.thresholds && score >= bands.thresholds[b.label]) found = b;
  const note =
    "for this model, like " + LANGUAGE_NAMES[lang] + " STS pairs people rated " + found.gold[0] + "–" +
    found.gold[1] + " of 5 (their median cosine: " + found.median.toFixed(3) + ")";
  return [found.label, LABEL_CLASS[found.label] || "b-3", note];
}

function duplicateThreshold(card, texts) {
  // the paraphrase threshold of the texts' language; null without calibration
  const bands = scoreBands(card, language(texts));
  return bands && "paraphrase" in bands.thresholds ? Math.round(bands.thresholds.paraphrase * 100) / 100 : null;
}

function lines(text) {
  return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length > 0);
}

// ---------------------------------------------------------------- requests of each mode
function embeddingBody(texts) {
  const body = { model: $("model").value, input: texts };
  if (inputType() === "query") body.input_type = "query";
  return body;
}

function currentTexts() {
  if (state.mode === "two") return [$("text-a").value, $("text-b").value];
  if (state.mode === "many") return lines($("many-texts").value);
  return lines($("token-texts").value);
}

function tokenizeBody(texts) {
  return { model: $("model").value, inputs: texts, input_type: inputType() };
}

function similarityBody() {
  return { model: $("model").value, query: $("text-a").value, passages: [$("text-b").value] };
}

async function embed(texts) {
  const { data } = await api("/v1/embeddings", embeddingBody(texts));
  return { vectors: data.data.map((d) => d.embedding), usage: data.usage };
}

// ---------------------------------------------------------------- two-text mode
function requireText(value, field) {
  if (!value.trim()) throw new ApiError(0, field + " is empty");
}

function namedInputs(err, names) {
  // the API counts inputs from 0 ("input 1 is an empty string"); the page names the fields the user filled
  if (err instanceof ApiError) {
    err.message = err.message.replace(/\binput (\d+)\b/g, (whole, i) => names[Number(i)] || whole);
  }
  return err;
}

async function compare() {
  const card = currentModel();
  const texts = [$("text-a").value, $("text-b").value];
  requireText(texts[0], "Text A");
  requireText(texts[1], "Text B");
  const m3 = Boolean(card && card.m3);
  const [dense, scores] = await Promise.all([
    embed(texts),
    m3 ? api("/v1/similarity", similarityBody()) : Promise.resolve(null),
  ]).catch((err) => {
    throw namedInputs(err, ["Text A", "Text B"]);
  });
  const score = cosine(dense.vectors[0], dense.vectors[1]);
  const [label, cls, note] = band(score, card, language(texts));
  $("cosine").textContent = score.toFixed(4);
  $("cosine").dataset.value = String(score);
  $("band").textContent = label;
  $("band").className = "band " + cls;
  $("band").hidden = !label;
  $("band-note").textContent = note;
  $("two-usage").textContent = dense.usage.prompt_tokens + " tokens · " + $("model").value + " · " + inputType();
  $("m3-scores").hidden = !m3;
  if (m3) {
    const s = scores.data.data[0];
    for (const [key, field] of [["dense", "dense"], ["sparse", "sparse"], ["colbert", "colbert"], ["hybrid", "hybrid"]]) {
      $("m3-" + key).textContent = s[field].toFixed(4);
      $("m3-" + key).dataset.value = String(s[field]);
    }
  }
  $("two-result").hidden = false;
}

// ---------------------------------------------------------------- many-text mode
const PALETTE = [
  [247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107],
];

function colour(t) {
  const x = Math.min(1, Math.max(0, t)) * (PALETTE.length - 1);
  const i = Math.min(PALETTE.length - 2, Math.floor(x));
  const f = x - i;
  const c = PALETTE[i].map((v, k) => Math.round(v + (PALETTE[i + 1][k] - v) * f));
  return ["rgb(" + c.join(",") + ")", t > 0.55];
}

function short(text, n) {
  const chars = Array.from(text);
  return chars.length > n ? chars.slice(0, n - 1).join("") + "…" : text;
}

async function heatmap() {
  const texts = lines($("many-texts").value);
  if (texts.length > MAX_LINES) {
    throw new ApiError(0, texts.length + " lines: the heatmap takes at most " + MAX_LINES, "too_many_lines");
  }
  if (texts.length < 2) throw new ApiError(0, "Texts: write at least two lines to compare");
  const { vectors } = await embed(texts).catch((err) => {
    throw namedInputs(err, texts.map((_, i) => "line " + (i + 1)));
  });
  const n = texts.length;
  const matrix = [];
  let low = 1;
  for (let i = 0; i < n; i++) {
    matrix.push([]);
    for (let j = 0; j < n; j++) {
      const value = i === j ? cosine(vectors[i], vectors[i]) : cosine(vectors[i], vectors[j]);
      matrix[i].push(value);
      if (i !== j) low = Math.min(low, value);
    }
  }
  if (n === 1) low = 0;
  low = Math.min(low, 0.999);
  state.matrix = { texts, matrix, low };
  calibrateThreshold(texts);
  drawHeatmap();
  updateDuplicates();
  $("many-result").hidden = false;
}

function drawHeatmap() {
  const { texts, matrix, low } = state.matrix;
  const n = texts.length;
  const table = $("heatmap");
  table.textContent = "";
  table.classList.toggle("compact", n > 12);
  const head = table.insertRow();
  head.append(document.createElement("th"));
  texts.forEach((text, j) => {
    const th = document.createElement("th");
    th.className = "col";
    th.title = text;
    const span = document.createElement("span");
    span.textContent = j + 1 + " " + short(text, 22);
    th.append(span);
    head.append(th);
  });
  texts.forEach((text, i) => {
    const row = table.insertRow();
    const th = document.createElement("th");
    th.className = "row";
    th.title = text;
    th.textContent = i + 1 + " · " + short(text, 34);
    row.append(th);
    for (let j = 0; j < n; j++) {
      const value = matrix[i][j];
      const cell = row.insertCell();
      cell.className = "cell";
      cell.dataset.i = String(i);
      cell.dataset.j = String(j);
      cell.dataset.value = String(value);
      const [bg, dark] = colour((value - low) / (1 - low));
      cell.style.backgroundColor = bg;
      if (dark) cell.classList.add("dark");
      if (n <= 12) cell.textContent = value.toFixed(2);
    }
  });
  $("legend-min").textContent = low.toFixed(2);
  $("legend-max").textContent = "1.00";
}

function threshold() {
  const value = Number($("threshold").value);
  return Number.isFinite(value) ? value : 1;
}

function updateDuplicates() {
  if (!state.matrix) return;
  const limit = threshold();
  const { texts, matrix } = state.matrix;
  const pairs = [];
  document.querySelectorAll("#heatmap td.cell").forEach((cell) => {
    const i = Number(cell.dataset.i);
    const j = Number(cell.dataset.j);
    const dup = i !== j && matrix[i][j] >= limit;
    cell.classList.toggle("dup", dup);
    if (dup && i < j) pairs.push([i, j, matrix[i][j]]);
  });
  pairs.sort((a, b) => b[2] - a[2]);
  $("dup-count").textContent = String(pairs.length);
  $("dup-threshold").textContent = limit.toFixed(2);
  const list = $("dup-list");
  list.textContent = "";
  for (const [i, j, value] of pairs.slice(0, 50)) {
    const item = document.createElement("li");
    item.textContent = value.toFixed(4) + "  #" + (i + 1) + " “" + short(texts[i], 40) + "” ↔ #" + (j + 1) + " “" + short(texts[j], 40) + "”";
    list.append(item);
  }
  if (pairs.length > 50) {
    const more = document.createElement("li");
    more.className = "muted";
    more.textContent = "… and " + (pairs.length - 50) + " more";
    list.append(more);
  }
}

function calibrateThreshold(texts) {
  // until the user moves it, the near-duplicate threshold is the model's paraphrase level for these texts
  if (state.thresholdTouched) return;
  const value = duplicateThreshold(currentModel(), texts);
  const lang = LANGUAGE_NAMES[language(texts)];
  if (value === null) {
    $("threshold-note").textContent = "";
    return;
  }
  $("threshold-range").value = String(value);
  $("threshold").value = String(value);
  $("threshold-note").textContent = "this model's paraphrase level (" + lang + " STS pairs rated 4–5 of 5)";
}

function setThreshold(value, from) {
  state.thresholdTouched = true;
  $("threshold-note").textContent = "";
  if (from !== "range") $("threshold-range").value = String(value);
  if (from !== "number") $("threshold").value = String(value);
  updateDuplicates();
}

function showTooltip(event) {
  const cell = event.target.closest("td.cell");
  const tip = $("tooltip");
  if (!cell || !state.matrix) {
    tip.hidden = true;
    return;
  }
  const i = Number(cell.dataset.i);
  const j = Number(cell.dataset.j);
  const { texts } = state.matrix;
  tip.textContent = "";
  const value = document.createElement("strong");
  value.textContent = Number(cell.dataset.value).toFixed(4) + "  (#" + (i + 1) + " ↔ #" + (j + 1) + ")";
  const a = document.createElement("div");
  a.textContent = "#" + (i + 1) + ": " + short(texts[i], 90);
  const b = document.createElement("div");
  b.textContent = "#" + (j + 1) + ": " + short(texts[j], 90);
  tip.append(value, a, b);
  tip.hidden = false;
  tip.style.left = event.pageX + 14 + "px";
  tip.style.top = event.pageY + 14 + "px";
}

async function readDroppedFile(file) {
  if (!file) return;
  const text = await file.text();
  $("many-texts").value = text;
  await action(null, heatmap);
}

// ---------------------------------------------------------------- tokens mode
async function tokenize() {
  const texts = lines($("token-texts").value);
  if (!texts.length) throw new ApiError(0, "Texts is empty: write one text per line");
  const card = currentModel();
  const { data, headers: responseHeaders } = await api("/tokenize", tokenizeBody(texts));
  const limit = Number(responseHeaders.get("x-max-tokens")) || (card ? card.max_tokens : 0);
  const prefix = Array.from(instructionFor(card)).length;
  const out = $("token-result");
  out.textContent = "";
  data.forEach((tokens, index) => out.append(tokenCard(texts[index], instructionFor(card), prefix, tokens, limit, index)));
  out.hidden = false;
}

function tokenCard(text, instruction, prefixLength, tokens, limit, index) {
  const count = tokens.length;
  const over = limit > 0 && count > limit;
  let suffix = 0; // special tokens the tokenizer puts at the end ([SEP], </s>): kept when a text is cut
  while (suffix < count && tokens[count - 1 - suffix].special) suffix++;
  const cut = over ? limit - suffix : count; // tokens [cut, count - suffix) are beyond the window

  const card = document.createElement("div");
  card.className = "tok-card" + (over ? " over" : "");
  card.dataset.count = String(count);
  card.dataset.limit = String(limit);
  const head = document.createElement("div");
  head.className = "tok-head";
  const title = document.createElement("span");
  title.className = "tok-title";
  title.textContent = "Text " + (index + 1);
  const counter = document.createElement("span");
  counter.className = "tok-count";
  counter.textContent = count + " / " + limit + " tokens";
  head.append(title, counter);
  if (over) {
    const warn = document.createElement("span");
    warn.className = "tok-over";
    warn.textContent =
      "over the window by " + (count - limit) + ": the model embeds the first " + cut + " tokens" +
      (suffix ? " and the closing special token" : "");
    head.append(warn);
  }
  card.append(head);

  // the text as tokenized: instruction (if any) + text, with the part beyond the window greyed
  const chars = Array.from(instruction + text);
  const cutChar = over && tokens[cut] && tokens[cut].start !== null ? tokens[cut].start : chars.length;
  const source = document.createElement("div");
  source.className = "tok-text";
  if (prefixLength) {
    const p = document.createElement("span");
    p.className = "instruction";
    p.title = "the model's instruction";
    p.textContent = chars.slice(0, prefixLength).join("");
    source.append(p);
  }
  source.append(document.createTextNode(chars.slice(prefixLength, Math.max(prefixLength, cutChar)).join("")));
  if (cutChar < chars.length) {
    const rest = document.createElement("span");
    rest.className = "beyond-text";
    rest.textContent = chars.slice(Math.max(prefixLength, cutChar)).join("");
    source.append(rest);
  }
  card.append(source);

  const chips = document.createElement("div");
  chips.className = "chips";
  const shown = Math.max(MAX_CHIPS, cut + 64);
  tokens.slice(0, shown).forEach((token, k) => {
    if (over && k === cut) {
      const marker = document.createElement("span");
      marker.className = "trunc-marker";
      marker.dataset.index = String(k);
      marker.textContent = "✂ window ends: " + limit + " tokens";
      marker.title = "the model sees the tokens before this mark (and the closing special token)";
      chips.append(marker);
    }
    const chip = document.createElement("span");
    chip.className = "chip" + (token.special ? " special" : "") + (over && k >= cut && k < count - suffix ? " beyond" : "");
    chip.title = token.special ? "special token" : "“" + token.text + "” chars " + token.start + "–" + token.stop;
    const piece = document.createElement("span");
    piece.className = "piece";
    piece.textContent = token.token !== undefined ? token.token : token.text;
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = String(token.id);
    chip.append(piece, id);
    chips.append(chip);
  });
  if (count > shown) {
    const more = document.createElement("span");
    more.className = "muted small";
    more.textContent = "… " + (count - shown) + " more tokens not drawn";
    chips.append(more);
  }
  card.append(chips);
  return card;
}

// ---------------------------------------------------------------- copy and download
function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

function curlCommand(path, body) {
  const auth = apiKey() ? " \\\n  -H \"Authorization: Bearer $BGE_TRITON_API_KEY\"" : "";
  return "curl -s " + apiUrl(path) + " -H 'content-type: application/json'" + auth + " \\\n  -d " + shellQuote(JSON.stringify(body));
}

function pyValue(value) {
  return JSON.stringify(value); // JSON strings and lists of strings are Python literals as well
}

function snippets() {
  const texts = currentTexts();
  const key = apiKey() ? 'os.environ["BGE_TRITON_API_KEY"]' : '"EMPTY"';
  const imports = apiKey() ? "import os\n\n" : "";
  if (state.mode === "tokens") {
    const body = tokenizeBody(texts);
    const auth = apiKey() ? ', headers={"Authorization": "Bearer " + os.environ["BGE_TRITON_API_KEY"]}' : "";
    return {
      curl: curlCommand("/tokenize", body),
      python:
        "# /tokenize is not an OpenAI endpoint: plain HTTP (httpx comes with the openai SDK)\n" +
        (apiKey() ? "import os\n\n" : "") +
        "import httpx\n\n" +
        "tokens = httpx.post(" + pyValue(apiUrl("/tokenize")) + ", json=" + pyValue(body) + auth + ").json()\n" +
        "for text in tokens:\n    print(len(text), [t[\"text\"] for t in text])\n",
    };
  }
  const body = embeddingBody(texts);
  let curl = curlCommand("/v1/embeddings", body);
  let python =
    imports +
    "from openai import OpenAI\n\n" +
    "client = OpenAI(base_url=" + pyValue(apiUrl("/v1")) + ", api_key=" + key + ")\n" +
    "resp = client.embeddings.create(\n    model=" + pyValue(body.model) + ",\n    input=" + pyValue(texts) + ",\n" +
    (body.input_type ? '    extra_body={"input_type": "query"},\n' : "") +
    ")\nvectors = [d.embedding for d in resp.data]\n";
  const card = currentModel();
  if (state.mode === "two" && card && card.m3) {
    curl += "\n\n# bge-m3: dense, sparse, ColBERT and hybrid scores\n" + curlCommand("/v1/similarity", similarityBody());
    python +=
      "\n# bge-m3: dense, sparse, ColBERT and hybrid scores (not an OpenAI endpoint)\nimport httpx\n\n" +
      "scores = httpx.post(" + pyValue(apiUrl("/v1/similarity")) + ", json=" + pyValue(similarityBody()) +
      (apiKey() ? ', headers={"Authorization": "Bearer " + os.environ["BGE_TRITON_API_KEY"]}' : "") +
      ").json()[\"data\"][0]\n";
  }
  return { curl, python };
}

async function copyText(kind) {
  const text = snippets()[kind];
  const pre = $("snippet");
  pre.textContent = text;
  pre.dataset.kind = kind;
  pre.hidden = false;
  let copied = false;
  try {
    await navigator.clipboard.writeText(text);
    copied = true;
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents(pre);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    copied = document.execCommand("copy");
  }
  $("copy-state").textContent = copied ? "copied to the clipboard" : "select the text below to copy it";
}

async function download() {
  const texts = currentTexts();
  const body = embeddingBody(texts);
  const { data } = await api("/v1/embeddings", body);
  const payload = {
    model: body.model,
    input_type: inputType(),
    instruction: instructionFor(currentModel()),
    dimensions: data.data.length ? data.data[0].embedding.length : 0,
    usage: data.usage,
    data: data.data.map((d) => ({ index: d.index, text: texts[d.index], embedding: d.embedding })),
  };
  const blob = new Blob([JSON.stringify(payload)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "vectors-" + body.model.replace(/[^\w.-]+/g, "_") + ".json";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  $("copy-state").textContent = "downloaded " + payload.data.length + " vector(s)";
}

// ---------------------------------------------------------------- rerank (shown when the proxy serves a reranker)
async function loadRerankers() {
  let data = { data: [] };
  try {
    data = (await api("/v1/rerank/models")).data;
  } catch (_) {
    data = { data: [] }; // an older proxy, or Triton down: no rerank tab
  }
  const select = $("reranker");
  select.textContent = "";
  for (const card of data.data) {
    const option = document.createElement("option");
    option.value = card.id;
    option.textContent = card.id;
    option.dataset.maxTokens = String(card.max_tokens);
    select.append(option);
  }
  $("tab-rerank").hidden = data.data.length === 0;
  const chosen = select.selectedOptions[0];
  $("reranker-info").textContent = chosen ? chosen.dataset.maxTokens + "-token window per query + document" : "";
  document.body.dataset.rerankers = String(data.data.length);
}

async function rerank() {
  requireText($("rerank-query").value, "query");
  const query = $("rerank-query").value.trim();
  const documents = lines($("rerank-documents").value);
  if (!documents.length) throw new ApiError(0, "enter at least one document, one per line", "documents");
  const { data } = await api("/v1/rerank", { model: $("reranker").value, query, documents, return_documents: true });
  const list = $("rerank-list");
  list.textContent = "";
  for (const result of data.results) {
    const item = document.createElement("li");
    const score = document.createElement("span");
    score.className = "rerank-score";
    score.textContent = result.relevance_score.toFixed(4);
    const text = document.createElement("span");
    text.className = "rerank-text";
    text.textContent = result.document.text;
    item.dataset.index = String(result.index);
    item.append(score, text);
    list.append(item);
  }
  $("rerank-usage").textContent = data.usage.total_tokens + " tokens";
  $("rerank-result").hidden = false;
}

// ---------------------------------------------------------------- wiring
function selectMode(mode) {
  state.mode = mode;
  for (const tab of document.querySelectorAll("[role=tab]")) tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  for (const name of ["two", "many", "tokens", "rerank"]) $("mode-" + name).hidden = name !== mode;
  $("snippet").hidden = true;
  $("copy-state").textContent = "";
}

function init() {
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => selectMode(tab.dataset.mode));
  $("model").addEventListener("change", () => {
    state.thresholdTouched = false;
    showModelInfo();
  });
  for (const radio of document.querySelectorAll("input[name=input_type]")) radio.addEventListener("change", showModelInfo);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    showKeyState();
    clearError();
    loadModels();
  });
  $("compare").addEventListener("click", () => action($("compare"), compare));
  $("matrix").addEventListener("click", () => action($("matrix"), heatmap));
  $("tokenize").addEventListener("click", () => action($("tokenize"), tokenize));
  $("rerank").addEventListener("click", () => action($("rerank"), rerank));
  $("copy-curl").addEventListener("click", () => action(null, () => copyText("curl")));
  $("copy-python").addEventListener("click", () => action(null, () => copyText("python")));
  $("download").addEventListener("click", () => action(null, download));
  $("threshold").addEventListener("input", () => setThreshold($("threshold").value, "number"));
  $("threshold-range").addEventListener("input", () => setThreshold($("threshold-range").value, "range"));
  $("heatmap").addEventListener("mousemove", showTooltip);
  $("heatmap").addEventListener("mouseleave", () => ($("tooltip").hidden = true));
  $("many-file").addEventListener("change", (event) => readDroppedFile(event.target.files[0]));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) readDroppedFile(file);
  });
  showKeyState();
  loadModels();
  loadRerankers();
}

init();
