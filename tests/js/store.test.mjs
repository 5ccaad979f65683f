// Conversations in the browser's storage, and the JSON that moves them to and from `glm4-local chat`.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { ConversationStore, exportConversation, parseConversation, titleOf, userMessage }
  from "../../glm4_local/web/store.js";
import { parseEvents, ReplyState } from "../../glm4_local/web/stream.js";

class MemoryStorage {
  constructor() { this.items = new Map(); }
  getItem(key) { return this.items.has(key) ? this.items.get(key) : null; }
  setItem(key, value) { this.items.set(key, String(value)); }
  removeItem(key) { this.items.delete(key); }
}

const CHAT = {
  messages: [
    { role: "system", content: "Be brief." },
    { role: "user", content: "run it" },
    { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function",
      function: { name: "python", arguments: "print(6 * 7)" } }] },
    { role: "tool", content: "42\n", tool_call_id: "call_1" },
    { role: "assistant", content: "42" },
  ],
  tools: [{ type: "python" }],
  context: 8192,
};

test("saved, listed newest first, reopened, removed", () => {
  const store = new ConversationStore(new MemoryStorage());
  const a = store.create([{ role: "user", content: "first question\nmore" }]);
  store.save(a);
  const b = store.create([{ role: "user", content: "second" }]);
  b.created = a.created;
  store.save(b);
  a.messages.push({ role: "assistant", content: "ok" });
  store.save(a);
  assert.deepEqual(store.list().map((c) => c.title), ["first question", "second"]);
  assert.deepEqual(store.get(a.id).messages, a.messages);
  store.remove(a.id);
  assert.deepEqual(store.list().map((c) => c.id), [b.id]);
  assert.notEqual(a.id, b.id);
});

test("export is exactly what the terminal chat saves, and imports back", () => {
  const store = new ConversationStore(new MemoryStorage());
  const conversation = store.create(CHAT.messages, CHAT.tools, CHAT.context);
  const exported = JSON.parse(JSON.stringify(exportConversation(conversation)));
  assert.deepEqual(Object.keys(exported), ["messages", "tools", "context"]);
  assert.deepEqual(exported, CHAT);
  assert.deepEqual(parseConversation(exported), CHAT);
  assert.deepEqual(parseConversation(CHAT.messages), { messages: CHAT.messages, tools: [], context: null });
  assert.equal(exportConversation(store.create(CHAT.messages)).context, null);
});

const FROM_PYTHON = { skip: !process.env.GLM4_CHAT_SAVED && "needs the files tests/test_page_js.py writes" };

test("a conversation saved by `glm4-local chat` imports, and exports byte for byte as it was", FROM_PYTHON, () => {
  const text = readFileSync(process.env.GLM4_CHAT_SAVED, "utf8");
  const parsed = parseConversation(JSON.parse(text));
  assert.equal(parsed.messages.at(-1).role, "assistant");
  assert.equal(JSON.stringify(exportConversation(parsed), null, 2), text.trimEnd());
});

test("broken files are refused with a reason", () => {
  assert.throws(() => parseConversation({ messages: "x" }), /expected/);
  assert.throws(() => parseConversation({ messages: [{ role: "hacker" }] }), /messages\[0\]: needs a role/);
  assert.throws(() => parseConversation({ messages: [{ role: "user", content: 3 }] }), /content/);
});

test("documents go with the message as data, as the terminal sends them", () => {
  const docs = [{ name: "a.md", text: "alpha", tokens: 3, kind: "text" }, { name: "b.txt", text: "beta", tokens: 2 }];
  const message = userMessage(" what? ", docs);
  assert.deepEqual(message, { role: "user", content: " what? ",
    documents: [{ name: "a.md", text: "alpha" }, { name: "b.txt", text: "beta" }] });
  if (process.env.GLM4_USER_MESSAGE) assert.deepEqual(message, JSON.parse(process.env.GLM4_USER_MESSAGE));  // Python's
  assert.deepEqual(userMessage("q", []), { role: "user", content: "q" });
  assert.equal(titleOf([message]), "what?");
  assert.equal(titleOf([userMessage("", docs)]), "a.md");  // a document sent alone is named by it
});

test("server-sent events: split across reads, steps and citations gathered", () => {
  const { events, rest } = parseEvents('data: {"a":1}\n\ndata: [DONE]\n\ndata: {"b"');
  assert.deepEqual(events, ['{"a":1}', "[DONE]"]);
  assert.equal(rest, 'data: {"b"');
  const reply = new ReplyState();
  const step = { index: 0, status: "done", messages: CHAT.messages.slice(2, 4) };
  reply.add({ choices: [{ delta: { role: "assistant", content: "" } }] });
  reply.add({ choices: [{ delta: { glm4_step: { index: 0, status: "running", messages: [] } } }] });
  reply.add({ choices: [{ delta: { glm4_step: step } }] });
  reply.add({ choices: [{ delta: { content: "4" } }] });
  reply.add({ choices: [{ delta: { content: "2" } }] });
  reply.add({ choices: [{ delta: { glm4_citations: {} }, finish_reason: "stop" }] });
  reply.add({ choices: [], usage: { completion_tokens: 5 } });
  assert.deepEqual(reply.messages(false), [...CHAT.messages.slice(2, 4), { role: "assistant", content: "42" }]);
  assert.equal(reply.finish, "stop");
  assert.equal(reply.usage.completion_tokens, 5);
  assert.deepEqual(reply.messages(true).at(-1), { role: "assistant", content: "42", interrupted: true });
});
