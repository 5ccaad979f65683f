// Ollama's own JavaScript client (the `ollama` npm package) against glm4-local serve: the calls an app
// makes, streamed and not, a tool call, structured output. Run by tests/test_ollama.py with the server's
// address and a JSON of what to check; prints one JSON object of what it saw.
import { Ollama } from "ollama";

const [host, mode] = process.argv.slice(2);
const client = new Ollama({ host });
const seen = {};
if (mode === "tools") {
  const tools = [{ type: "function", function: { name: "add", parameters: { type: "object" } } }];
  const ask = [{ role: "user", content: "add" }];
  const call = await client.chat({ model: "m", messages: ask, tools });
  seen.call = call.message.tool_calls;
  const follow = [...ask, call.message, { role: "tool", content: "42", tool_name: "add" }];
  let streamed = "";
  for await (const part of await client.chat({ model: "m", messages: follow, tools, stream: true })) {
    streamed += part.message.content;
    if (part.done) seen.done_reason = part.done_reason;
  }
  seen.answer = streamed;
  seen.tags = (await client.list()).models.map((m) => m.name);
  seen.version = (await client.version()).version;
} else {
  const schema = { type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"] };
  const reply = await client.chat({ model: "m", messages: [{ role: "user", content: "JSON" }], format: schema,
    options: { temperature: 0, num_predict: 100 } });
  seen.structured = JSON.parse(reply.message.content);
  let text = "";
  for await (const part of await client.generate({ model: "m", prompt: "hi", stream: true, options: { num_predict: 5 } })) {
    text += part.response;
    if (part.done) seen.eval_count = part.eval_count;
  }
  seen.generated = text;
}
console.log(JSON.stringify(seen));
