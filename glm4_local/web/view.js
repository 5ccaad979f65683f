// The conversation on screen: messages, tool steps and answers. Every piece of text from the model,
// a tool or a fetched page goes in as textContent or through markdown.js, never as HTML of its own.
import { citationContext, escapeHtml, safeBlock, safeUrl, splitBlocks } from "./markdown.js";

// how the page's updates went, for the browser tests and the benchmark
// (updates and their JS time; blocks rendered, and of those, blocks rendered again after they were finished;
// draws of a streamed answer and their time with the layout they force)
export const perf = { updates: 0, blockRenders: 0, staleRenders: 0, ms: 0, maxMs: 0, lastMs: 0, draws: 0, drawMs: 0 };
globalThis.glm4Perf = perf;

function highlight(code, lang) {
  const hljs = globalThis.hljs;
  if (!hljs || !lang || !hljs.getLanguage(lang)) return escapeHtml(code);
  return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
}

function math(tex, display) {
  const katex = globalThis.katex;
  if (!katex) return `<code class="math">${escapeHtml(tex)}</code>`;
  return katex.renderToString(tex, { displayMode: display, throwOnError: false, trust: false, strict: "ignore",
    maxExpand: 500 });
}

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Drawing shares the machine's cores with decoding (Chromium spends ~15 ms of CPU on a draw beyond the
// script's own): a streamed answer is drawn at most every MIN_DRAW_MS, and when one draw is slow (a long
// code block highlighted again) only after DRAW_SHARE times its cost, but at least every MAX_DRAW_MS.
// The first token is drawn at once.
const MIN_DRAW_MS = 100;
const MAX_DRAW_MS = 1000;
const DRAW_SHARE = 10;

export class DrawPacer {
  constructor(draw) {
    this.draw = draw;
    this.timer = 0;
    this.last = -Infinity;
    this.cost = 0;
  }

  request() {
    if (this.timer) return;
    const due = this.last + Math.min(MAX_DRAW_MS, Math.max(MIN_DRAW_MS, this.cost * DRAW_SHARE));
    this.timer = setTimeout(() => this.run(), Math.max(0, due - performance.now()));
  }

  run() {
    this.timer = 0;
    const started = performance.now();
    this.draw();
    this.last = performance.now();
    this.cost = this.last - started;
    perf.draws += 1;
    perf.drawMs += this.cost;
  }

  cancel() {
    clearTimeout(this.timer);
    this.timer = 0;
  }
}

// An answer that re-renders only the blocks whose source changed: while it streams, the last one.
export class MarkdownView {
  // citation: the pattern of the model's citations (from GET /v1/glm4/tools), or null
  constructor(sources = {}, citation = null) {
    this.node = element("div", "answer");
    this.citations = citationContext(sources);
    this.context = { highlight, math, cite: this.citations.cite, citation };
    this.blocks = [];
  }

  update(text) {
    const started = performance.now();
    const sources = splitBlocks(text);
    const shown = this.blocks.length;
    let rendered = 0;
    sources.forEach((source, i) => {
      const known = this.blocks[i];
      if (known && known.source === source) return;
      const node = known ? known.node : element("div", "block");
      node.innerHTML = safeBlock(source, this.context);
      if (!known) this.node.append(node);
      this.blocks[i] = { source, node };
      rendered += 1;
    });
    perf.blockRenders += rendered;
    // the blocks new since the last update, and the one that was being written: anything more is stale
    perf.staleRenders += Math.max(0, rendered - Math.max(0, sources.length - shown) - 1);
    for (const gone of this.blocks.splice(sources.length)) gone.node.remove();
    const took = performance.now() - started;
    perf.updates += 1;
    perf.ms += took;
    perf.maxMs = Math.max(perf.maxMs, took);
    perf.lastMs = took;
  }

  sourceList() {
    const cited = this.citations.cited.filter((c) => c.source);
    if (!cited.length) return null;
    const list = element("ol", "sources");
    for (const { source } of cited) {
      const item = element("li");
      const url = safeUrl(source.url);
      const title = element(url ? "a" : "span", "", source.title || source.url);
      if (url) Object.assign(title, { href: url, target: "_blank", rel: "noopener noreferrer" });
      item.append(title, document.createTextNode(` — ${source.url}`));
      list.append(item);
    }
    return list;
  }
}

function argumentsText(call) {
  return call.function.arguments || "";
}

// One tool call and its results, folded: code (or the browser's actions, or a function's arguments),
// then each result; plots and /mnt/data files are fetched with the key (`fetchFile`). `formats`: what the
// model's family calls its built-in tools ({code, browser}, from GET /v1/glm4/tools).
export function stepNode(call, results, files, fetchFile, formats, running = false) {
  const details = element("details", `step${running ? " running" : ""}`);
  const name = call.function.name;
  const first = argumentsText(call).split("\n")[0];
  details.append(element("summary", "", `${name} › ${first.length > 80 ? `${first.slice(0, 77)}…` : first}`));
  const body = element("div", "step-body");
  const code = element("pre");
  // the code interpreter runs Python; the browser's actions are plain text; a function's arguments JSON
  const lang = name === formats.code ? "python" : name === formats.browser ? "" : "json";
  code.innerHTML = highlight(argumentsText(call), lang);
  body.append(code);
  for (const result of results) {
    if (result.metadata) body.append(element("div", "meta", result.metadata));
    body.append(element("pre", "output", result.shown || result.content || ""));
    if (result.image) {
      const image = element("img");
      image.alt = "plot";
      body.append(image);
      fetchFile(result.image).then((url) => { image.src = url; }, () => { image.replaceWith(element("div", "error",
        "this plot is no longer on the server (the conversation's tools ended)")); });
    }
  }
  if (files && files.length) {
    const list = element("div", "files", "/mnt/data: ");
    for (const file of files) {
      const link = element("a", "", `${file.name} (${file.bytes} B)`);
      link.href = "#";
      link.addEventListener("click", (event) => {
        event.preventDefault();
        fetchFile(file.url).then((url) => Object.assign(element("a"), { href: url, download: file.name }).click(),
          () => link.replaceWith(element("span", "error", `${file.name}: gone with the conversation's tools`)));
      });
      list.append(link);
    }
    body.append(list);
  }
  details.append(body);
  return details;
}

// a reasoning model's thoughts before its answer: folded, as plain text
export function thoughtsNode(text, open = false) {
  const details = element("details", "thoughts");
  details.open = open;
  details.append(element("summary", "", "thoughts"), element("pre", "output", text));
  return details;
}

// a user message: its documents as chips, its question as text
export function userNode(message) {
  const node = element("div", "bubble");
  const documents = Array.isArray(message.documents) ? message.documents : [];
  for (const { name } of documents) node.append(element("span", "chip", String(name)), document.createTextNode(" "));
  node.append(document.createTextNode(`${documents.length ? "\n" : ""}${message.content || ""}`));
  return node;
}

// the turns to draw: a user message, a step (call + its tool messages), or an answer
export function turnsOf(messages) {
  const turns = [];
  messages.forEach((message, index) => {
    if (message.role === "system") return;
    if (message.role === "tool" || message.role === "observation") {
      const last = turns.at(-1);
      if (last && last.kind === "step") last.results.push(message);
      return;
    }
    if (message.role === "assistant" && message.tool_calls && message.tool_calls.length) {
      turns.push({ kind: "step", index, call: message.tool_calls[0], results: [], files: message.glm4_files });
    } else {
      turns.push({ kind: message.role === "user" ? "user" : "answer", index, message });
    }
  });
  return turns;
}
