// Server-sent events of /v1/chat/completions, read from a fetch() response, and the steps of
// glm4-local's extension gathered as they come (README, "Tools in the server").

// complete events in `buffer` and what is left of it: each event's data lines, joined
export function parseEvents(buffer) {
  const events = [];
  const parts = buffer.replace(/\r\n/g, "\n").split("\n\n");
  const rest = parts.pop();
  for (const part of parts) {
    const data = part.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
    if (data.length) events.push(data.join("\n"));
  }
  return { events, rest };
}

export async function* chunksOf(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const { events, rest } = parseEvents(buffer);
    buffer = rest;
    for (const data of events) {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "the server failed");
      yield chunk;
    }
  }
}

// A reply as it streams: content, a reasoning model's thoughts, tool steps (by index, running then done),
// citations, usage.
export class ReplyState {
  constructor() {
    this.content = "";
    this.reasoning = "";
    this.steps = [];
    this.citations = {};
    this.usage = null;
    this.finish = null;
    this.toolCalls = [];
  }

  add(chunk) {
    if (chunk.usage) this.usage = chunk.usage;
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) return "";
    const delta = choice.delta || {};
    if (choice.finish_reason) this.finish = choice.finish_reason;
    if (delta.glm4_step) this.steps[delta.glm4_step.index] = delta.glm4_step;
    if (delta.glm4_citations) this.citations = delta.glm4_citations;
    for (const call of delta.tool_calls || []) {
      const known = this.toolCalls[call.index] || (this.toolCalls[call.index] = { id: "", type: "function",
        function: { name: "", arguments: "" } });
      if (call.id) known.id = call.id;
      if (call.function && call.function.name) known.function.name += call.function.name;
      if (call.function && call.function.arguments) known.function.arguments += call.function.arguments;
    }
    this.reasoning += delta.reasoning_content || "";
    this.content += delta.content || "";
    return (delta.content || "") + (delta.reasoning_content || "");
  }

  // the messages the conversation keeps: each step's call and results, then the answer
  messages(interrupted) {
    const kept = this.steps.filter((s) => s && s.status === "done").flatMap((s) => s.messages);
    if (this.toolCalls.length) {
      kept.push({ role: "assistant", content: null, tool_calls: this.toolCalls });
    } else if (this.content || !kept.length || interrupted) {
      const answer = { role: "assistant", content: this.content };
      if (this.reasoning) answer.reasoning_content = this.reasoning;  // shown folded; the model never rereads it
      if (Object.keys(this.citations).length) answer.glm4_citations = this.citations;
      if (interrupted) answer.interrupted = true;
      kept.push(answer);
    }
    return kept;
  }
}
