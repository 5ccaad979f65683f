// Conversations kept in the browser (localStorage), and moved in and out as the JSON that
// `glm4-local chat` saves: {"messages": OpenAI-style messages, the system prompt first, "tools": [...]}.

const INDEX = "glm4-local:conversations";
const PREFIX = "glm4-local:conversation:";
const ROLES = new Set(["system", "user", "assistant", "tool", "observation"]);

export function newId() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function titleOf(messages) {
  const asked = (m) => m.role === "user" && ((typeof m.content === "string" && m.content.trim()) ||
    (Array.isArray(m.documents) && m.documents.length));
  const first = messages.find(asked);
  if (!first) return "New conversation";
  // the question's first line, or the first document's name when it came alone
  const question = (typeof first.content === "string" && first.content.trim().split("\n")[0]) ||
    String(first.documents[0].name);
  return question.length > 60 ? `${question.slice(0, 57)}…` : question;
}

export class ConversationStore {
  constructor(storage) {
    this.storage = storage;
  }

  list() {
    const ids = JSON.parse(this.storage.getItem(INDEX) || "[]");
    return ids.map((id) => this.get(id)).filter(Boolean).sort((a, b) => b.updated - a.updated);
  }

  get(id) {
    const text = this.storage.getItem(PREFIX + id);
    return text ? JSON.parse(text) : null;
  }

  create(messages = [], tools = [], context = null) {
    const now = Date.now();
    return { id: newId(), title: titleOf(messages), created: now, updated: now, messages, tools, context };
  }

  save(conversation) {
    conversation.updated = Date.now();
    conversation.title = titleOf(conversation.messages);
    this.storage.setItem(PREFIX + conversation.id, JSON.stringify(conversation));
    const ids = JSON.parse(this.storage.getItem(INDEX) || "[]");
    if (!ids.includes(conversation.id)) {
      ids.push(conversation.id);
      this.storage.setItem(INDEX, JSON.stringify(ids));
    }
  }

  remove(id) {
    this.storage.removeItem(PREFIX + id);
    const ids = JSON.parse(this.storage.getItem(INDEX) || "[]").filter((i) => i !== id);
    this.storage.setItem(INDEX, JSON.stringify(ids));
  }
}

// what `glm4-local chat` saves and loads (its --resume files); the page's own notes on a message (glm4_stats,
// glm4_citations, glm4_files) ride along: the terminal keeps them as they are and never sends them to the model
export function exportConversation(conversation) {
  return { messages: conversation.messages, tools: conversation.tools || [], context: conversation.context ?? null };
}

// a saved conversation (the object above, or a bare list of messages); throws with a reason
export function parseConversation(data) {
  const messages = Array.isArray(data) ? data : data && data.messages;
  if (!Array.isArray(messages)) throw new Error('expected {"messages": [...], "tools": [...]} or a list of messages');
  messages.forEach((m, i) => {
    if (!m || typeof m !== "object" || !ROLES.has(m.role)) throw new Error(`messages[${i}]: needs a role`);
    const content = m.content;
    if (content !== undefined && content !== null && typeof content !== "string" && !Array.isArray(content)) {
      throw new Error(`messages[${i}].content: must be text`);
    }
  });
  const tools = Array.isArray(data) ? [] : data.tools || [];
  if (!Array.isArray(tools)) throw new Error("tools: must be a list");
  // the tokens of context the terminal chat held it in (kept for its --resume); nothing else reads it
  const held = Array.isArray(data) ? null : data.context;
  const context = Number.isInteger(held) && held > 0 ? held : null;
  return { messages: messages.map(textContent), tools, context };
}

function textContent(message) {
  if (!Array.isArray(message.content)) return message;
  const text = message.content.filter((p) => p && p.type === "text").map((p) => p.text).join("");
  return { ...message, content: text };
}

// A user message with the files that go with it: as data ({name, text} each), which the server has the
// model's family write into the prompt in the form the model was trained on (as `glm4-local chat` does).
export function userMessage(question, documents) {
  const message = { role: "user", content: question };
  if (documents.length) message.documents = documents.map(({ name, text }) => ({ name, text }));
  return message;
}
