// The chat page: conversations in the sidebar, one open; a reply streamed from the server's own API.
import { ConversationStore, exportConversation, parseConversation, userMessage } from "./store.js";
import { chunksOf, ReplyState } from "./stream.js";
import { DrawPacer, element, MarkdownView, stepNode, thoughtsNode, turnsOf, userNode } from "./view.js";

const $ = (id) => document.getElementById(id);
const KEY = "glm4-local:api-key";
const SETTINGS = "glm4-local:settings";
const store = new ConversationStore(localStorage);
// failures: conversation id -> why its last request failed (shown where the reply would be, never saved)
// formats: what the page must know of the model's family (its built-in tools' names, its citations)
const state = { conversation: null, tools: [], documents: [], controller: null, blobs: new Map(), context: null,
  failures: new Map(), formats: { code: null, browser: null, citation: null }, model: "" };

// -- the server ---------------------------------------------------------------------------------------
function headers(json = true) {
  const key = localStorage.getItem(KEY);
  return { ...(json ? { "Content-Type": "application/json" } : {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

function askKey(refused) {
  return new Promise((resolve) => {
    const dialog = $("key-dialog");
    $("key-note").textContent = refused ? "The server refused the key given: check its --api-key." : "";
    $("key").value = "";
    dialog.addEventListener("close", () => {
      if ($("key").value) localStorage.setItem(KEY, $("key").value.trim());
      resolve();
    }, { once: true });
    dialog.showModal();
  });
}

async function api(path, options = {}) {
  for (let tries = 0; ; tries += 1) {
    const response = await fetch(path, { ...options, headers: headers(options.body !== undefined) });
    if (response.status !== 401 || tries > 2) return response;
    await askKey(localStorage.getItem(KEY) !== null);
  }
}

async function failure(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `the server answered ${response.status}`;
  }
}

async function fetchFile(url) {
  if (!url) throw new Error("no address");
  if (state.blobs.has(url)) return state.blobs.get(url);
  const response = await api(url);
  if (!response.ok) throw new Error(await failure(response));
  const blob = URL.createObjectURL(await response.blob());
  state.blobs.set(url, blob);
  return blob;
}

// -- settings -----------------------------------------------------------------------------------------
function settings() {
  return JSON.parse(localStorage.getItem(SETTINGS) || "{}");
}

function saveSettings() {
  const kept = { tools: {} };
  for (const field of ["temperature", "top_p", "max_tokens"]) kept[field] = $(field).value;
  for (const box of document.querySelectorAll("#tool-choices input")) kept.tools[box.value] = box.checked;
  localStorage.setItem(SETTINGS, JSON.stringify(kept));
  const system = $("system").value.trim();
  const messages = state.conversation.messages.filter((m, i) => !(i === 0 && m.role === "system"));
  state.conversation.messages = system ? [{ role: "system", content: system }, ...messages] : messages;
  if (state.conversation.messages.length) store.save(state.conversation);
  showTools();
}

function toolName(tool) {
  return tool.type === "function" ? tool.function.name : tool.type;
}

function chosenTools() {
  const on = settings().tools || {};
  return state.tools.filter((t) => on[toolName(t)] !== false);
}

function showTools() {
  const names = chosenTools().map(toolName);
  $("tools-on").textContent = names.length ? `tools: ${names.join(", ")}` : "";
}

function fillSettings() {
  const kept = settings();
  for (const field of ["temperature", "top_p", "max_tokens"]) $(field).value = kept[field] || "";
  const first = state.conversation.messages[0];
  $("system").value = first && first.role === "system" ? first.content : "";
  const box = $("tool-choices");
  box.replaceChildren(element("legend", "", state.tools.length ? "Tools the server runs" :
    "Tools the server runs: none (serve --python, --browser, --mcp)"));
  for (const tool of state.tools) {
    const label = element("label");
    const input = Object.assign(element("input"), { type: "checkbox", value: toolName(tool),
      checked: (kept.tools || {})[toolName(tool)] !== false });
    label.append(input, document.createTextNode(` ${toolName(tool)}`));
    box.append(label);
  }
}

function samplingFields() {
  const kept = settings();
  const fields = {};
  if (kept.temperature !== undefined && kept.temperature !== "") fields.temperature = Number(kept.temperature);
  if (kept.top_p) fields.top_p = Number(kept.top_p);
  if (kept.max_tokens) fields.max_tokens = Number(kept.max_tokens);
  return fields;
}

// -- conversations ------------------------------------------------------------------------------------
function showList() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of store.list()) {
    const item = element("li", conversation.id === state.conversation.id ? "current" : "");
    const open = element("a", "", conversation.title);
    open.addEventListener("click", () => openConversation(store.get(conversation.id)));
    const remove = element("button", "", "🗑");
    remove.title = "Delete";
    remove.addEventListener("click", () => {
      store.remove(conversation.id);
      if (conversation.id === state.conversation.id) openConversation(store.create());
      else showList();
    });
    item.append(open, remove);
    list.append(item);
  }
}

function openConversation(conversation) {
  state.conversation = conversation;
  $("title").textContent = conversation.title;
  $("sidebar").classList.remove("open");
  draw();
  showList();
}

// -- drawing ------------------------------------------------------------------------------------------
function actions(node, buttons) {
  const bar = element("div", "actions");
  for (const [label, run] of buttons) {
    if (typeof run === "string") {
      bar.append(element("span", "stats", run));
      continue;
    }
    const button = element("button", "", label);
    button.type = "button";
    button.addEventListener("click", run);
    bar.append(button);
  }
  node.append(bar);
}

function copyText(text) {
  if (navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
}

function statsText(stats) {
  return stats ? `${stats.tokens} tokens · ${stats.tps.toFixed(1)} tokens/s` : "";
}

function draw() {
  const box = $("messages");
  box.replaceChildren();
  const turns = turnsOf(state.conversation.messages);
  const lastAnswer = turns.findLast((t) => t.kind === "answer");
  for (const turn of turns) {
    const node = element("div", `message ${turn.kind}`);
    node.dataset.index = turn.index;
    try {
      drawTurn(node, turn, lastAnswer);
    } catch {  // one message the page cannot draw is shown as its text; the others, and the page, go on
      node.replaceChildren(element("pre", "output", JSON.stringify(turn.message || turn.call, null, 1)));
    }
    box.append(node);
  }
  const failed = state.failures.get(state.conversation.id);
  if (failed) box.append(failureNode(failed));
  box.scrollTop = box.scrollHeight;
}

// why the last request failed, where its reply would be, and a way to send it again
function failureNode(message) {
  const node = element("div", "message answer failed");
  node.append(element("div", "error", `error: ${message}`));
  actions(node, [["Retry", () => generate()]]);
  return node;
}

function drawTurn(node, turn, lastAnswer) {
  if (turn.kind === "user") {
    node.append(userNode(turn.message));
    actions(node, [["Edit", () => editMessage(node, turn.index)], ["Copy", () => copyText(turn.message.content)]]);
  } else if (turn.kind === "step") {
    node.append(stepNode(turn.call, turn.results, turn.results.flatMap((r) => r.glm4_files || []), fetchFile,
      state.formats));
  } else {
    if (turn.message.reasoning_content) node.append(thoughtsNode(turn.message.reasoning_content));
    const view = new MarkdownView(turn.message.glm4_citations || {}, state.formats.citation);
    view.update(turn.message.content || "");
    node.append(view.node);
    const sources = view.sourceList();
    if (sources) node.append(sources);
    const buttons = [["Copy", () => copyText(turn.message.content || "")]];
    if (turn === lastAnswer) buttons.push(["Regenerate", regenerate]);
    const notes = [turn.message.interrupted ? "stopped" : "", statsText(turn.message.glm4_stats)];
    buttons.push(["", notes.filter(Boolean).join(" · ")]);
    actions(node, buttons);
  }
}

function editMessage(node, index) {
  const message = state.conversation.messages[index];
  const editor = element("textarea");
  editor.value = message.content;
  editor.rows = Math.min(12, message.content.split("\n").length + 1);
  editor.className = "edit";
  node.replaceChildren(editor);
  actions(node, [["Send", () => {
    state.conversation.messages = state.conversation.messages.slice(0, index);
    state.conversation.messages.push({ ...message, content: editor.value });
    generate();
  }], ["Cancel", draw]]);
  editor.focus();
}

function regenerate() {
  const messages = state.conversation.messages;
  let last = messages.length;
  while (last > 0 && messages[last - 1].role !== "user") last -= 1;
  if (!last) return;
  state.conversation.messages = messages.slice(0, last);
  generate();
}

// -- a reply ------------------------------------------------------------------------------------------
function liveStep(box, step) {
  const results = step.observations || [];
  const node = stepNode(step.call, results, step.files, fetchFile, state.formats, step.status === "running");
  const holder = element("div", "message step");
  holder.append(node);
  box.append(holder);
  return holder;
}

// the page's own notes on a message (stats, files, citations) stay in the browser
function forServer(message) {
  return Object.fromEntries(Object.entries(message).filter(([key]) => !key.startsWith("glm4_")));
}

async function generate() {
  const conversation = state.conversation;
  state.failures.delete(conversation.id);
  store.save(conversation);
  draw();
  const box = $("messages");
  const live = element("div", "message answer streaming");
  const view = new MarkdownView({}, state.formats.citation);
  live.append(view.node);
  box.append(live);
  const reply = new ReplyState();
  const stepNodes = [];
  const controller = (state.controller = new AbortController());
  busy(true);
  const body = { model: state.model, messages: conversation.messages.map(forServer), stream: true, stream_options: { include_usage: true },
    conversation_id: conversation.id, ...samplingFields() };
  const tools = chosenTools();
  if (tools.length) body.tools = tools;
  let first = null;
  let interrupted = false;
  let failed = null;
  const thinking = thoughtsNode("", true);  // a reasoning model's thoughts, open while it thinks
  thinking.hidden = true;
  live.prepend(thinking);
  const pacer = new DrawPacer(() => {
    if (reply.reasoning) {
      thinking.hidden = false;
      thinking.querySelector("pre").textContent = reply.reasoning;
      if (reply.content) thinking.open = false;
    }
    view.update(reply.content);
    box.scrollTop = box.scrollHeight;
  });
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body),
      signal: controller.signal });
    if (!response.ok) throw new Error(await failure(response));
    for await (const chunk of chunksOf(response)) {
      const step = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.glm4_step;
      if (reply.add(chunk)) {
        first = first || performance.now();
        pacer.request();
      }
      if (step) {
        const drawn = liveStep(box, step);
        if (stepNodes[step.index]) stepNodes[step.index].replaceWith(drawn);
        stepNodes[step.index] = drawn;
        box.append(live);
        box.scrollTop = box.scrollHeight;
      }
    }
  } catch (error) {
    interrupted = controller.signal.aborted;
    if (!interrupted) failed = error.message || String(error);
  } finally {
    pacer.cancel();
    busy(false);
    state.controller = null;
  }
  finish(conversation, reply, first, interrupted, failed);
}

// what the reply left: its messages saved (a failed request's partial reply as stopped, nothing at all when
// nothing came: the user's message stays last, ready for Retry), and why it failed shown in its place
function finish(conversation, reply, first, interrupted, failed) {
  if (failed) state.failures.set(conversation.id, failed);
  const kept = reply.messages(interrupted || Boolean(failed));
  const answer = kept.at(-1);
  if (answer && answer.role === "assistant" && !answer.tool_calls && reply.usage && first) {
    const seconds = Math.max((performance.now() - first) / 1000, 1e-3);
    answer.glm4_stats = { tokens: reply.usage.completion_tokens, tps: reply.usage.completion_tokens / seconds };
  }
  for (const step of reply.steps.filter((s) => s && s.status === "done" && s.files && s.files.length)) {
    const results = step.messages.filter((m) => m.role === "tool");
    if (results.length) results.at(-1).glm4_files = step.files;
  }
  if ((interrupted || failed) && !reply.content && !reply.steps.length) kept.length = 0;
  conversation.messages.push(...kept);
  store.save(conversation);
  if (conversation === state.conversation) {
    $("title").textContent = conversation.title;
    draw();
    showList();
  }
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  if (!on) $("status").textContent = "";
}

function stop() {
  if (state.controller) state.controller.abort();
}

// -- sending ------------------------------------------------------------------------------------------
function send() {
  const text = $("input").value;
  if (state.controller || (!text.trim() && !state.documents.length)) return;
  state.conversation.messages.push(userMessage(text, state.documents));
  $("input").value = "";
  state.documents = [];
  showDocuments();
  generate();
}

async function attach(files) {
  for (const file of files) {
    $("status").textContent = `reading ${file.name}…`;
    const bytes = new Uint8Array(await file.arrayBuffer());  // read on the server, as chat --file reads it
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    const response = await api("/v1/glm4/documents", { method: "POST",
      body: JSON.stringify({ name: file.name, data: btoa(binary) }) });
    if (!response.ok) {
      $("status").textContent = `${file.name}: ${await failure(response)}`;
      continue;
    }
    state.documents.push(await response.json());
    $("status").textContent = "";
  }
  showDocuments();
}

function showDocuments() {
  const box = $("documents");
  box.replaceChildren();
  const total = state.documents.reduce((sum, doc) => sum + doc.tokens, 0);
  state.documents.forEach((doc, i) => {
    const chip = element("span", "chip", `${doc.name} · ${doc.tokens.toLocaleString()} tokens`);
    if (state.context && total >= state.context) {  // the server would refuse it: say so before sending
      chip.classList.add("too-long");
      chip.title = `does not fit: the context holds ${state.context.toLocaleString()} tokens (the server's --ctx)`;
      chip.append(element("span", "warn", ` · too long for the context of ${state.context.toLocaleString()}`));
    }
    const remove = element("button", "", "✕");
    remove.type = "button";
    remove.addEventListener("click", () => {
      state.documents.splice(i, 1);
      showDocuments();
    });
    chip.append(remove);
    box.append(chip);
  });
}

function download(name, text) {
  const link = Object.assign(element("a"), { href: URL.createObjectURL(new Blob([text], { type: "application/json" })),
    download: name });
  link.click();
}

async function importFile(file) {
  let parsed;
  try {
    parsed = parseConversation(JSON.parse(await file.text()));
  } catch (error) {
    const why = error instanceof SyntaxError ? "not JSON" : error.message;
    $("status").textContent = `${file.name} is not a conversation glm4-local saved (${why})`;
    return;
  }
  const conversation = store.create(parsed.messages, parsed.tools, parsed.context);
  store.save(conversation);
  openConversation(conversation);
}

// -- wiring -------------------------------------------------------------------------------------------
function wire() {
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
  });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape" && state.controller) stop(); });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", () => openConversation(store.create([], state.tools)));
  $("open-side").addEventListener("click", () => $("sidebar").classList.add("open"));
  $("close-side").addEventListener("click", () => $("sidebar").classList.remove("open"));
  $("open-settings").addEventListener("click", () => { fillSettings(); $("settings").showModal(); });
  $("settings").addEventListener("close", saveSettings);
  $("attach").addEventListener("change", (event) => { attach([...event.target.files]); event.target.value = ""; });
  $("import").addEventListener("change", (event) => { importFile(event.target.files[0]); event.target.value = ""; });
  $("export").addEventListener("click", () => download(`glm4-${state.conversation.id}.json`,
    JSON.stringify(exportConversation(state.conversation), null, 2)));
  const composer = $("composer");
  composer.addEventListener("dragover", (event) => { event.preventDefault(); composer.classList.add("dragging"); });
  composer.addEventListener("dragleave", () => composer.classList.remove("dragging"));
  composer.addEventListener("drop", (event) => {
    event.preventDefault();
    composer.classList.remove("dragging");
    attach([...event.dataTransfer.files]);
  });
  $("messages").addEventListener("click", (event) => {
    const button = event.target.closest(".copy-code");
    if (button) copyText(button.closest(".code").querySelector("code").textContent);
  });
}

async function start() {
  wire();
  openConversation(store.list()[0] || store.create());
  const response = await api("/v1/glm4/tools");
  if (response.ok) {
    const served = await response.json();
    state.tools = served.tools;
    state.context = served.context_tokens;
    state.formats = served.formats;
    draw();  // the conversation again, now that its tools' names and citations are known
  } else {
    $("status").textContent = `error: ${await failure(response)}`;
  }
  const models = await api("/v1/models");
  if (models.ok) state.model = (await models.json()).data?.[0]?.id ?? "";
  $("model-name").textContent = state.model;
  showTools();
  document.body.dataset.ready = "true";
}

start();
