// The Responses API through the official Node `openai` SDK, unchanged: one plain answer,
// the same answer streamed (`stream: true`, raw events) and through the `responses.stream`
// helper, and one forced function call.
// Usage: node openai_responses.mjs BASE_URL MODEL   (prints a JSON summary)
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "none", maxRetries: 0 });
const ask = {
  model,
  instructions: "Be brief.",
  input: [{ role: "user", content: [{ type: "input_text", text: "Hello!" }] }],
  max_output_tokens: 6,
  temperature: 0,
};
const textOf = (response) =>
  response.output
    .filter((item) => item.type === "message")
    .flatMap((item) => item.content)
    .filter((part) => part.type === "output_text")
    .map((part) => part.text)
    .join("");

const plain = await client.responses.create(ask);

const stream = await client.responses.create({ ...ask, stream: true });
const types = [];
const sequence = [];
let text = "";
let final = null;
for await (const event of stream) {
  types.push(event.type);
  sequence.push(event.sequence_number);
  if (event.type === "response.output_text.delta") text += event.delta;
  if (event.type === "response.completed" || event.type === "response.incomplete") final = event.response;
}

const helper = await client.responses.stream(ask).finalResponse();

const getTime = {
  type: "function",
  name: "get_time",
  description: "Local time",
  parameters: {
    type: "object",
    properties: { zone: { type: "string", enum: ["UTC", "CET"] } },
    required: ["zone"],
    additionalProperties: false,
  },
  strict: true,
};
const tool = await client.responses.create({
  model,
  input: "What time is it?",
  tools: [getTime],
  tool_choice: { type: "function", name: "get_time" },
  max_output_tokens: 100,
  temperature: 0,
});
const call = tool.output.find((item) => item.type === "function_call") ?? {};

console.log(JSON.stringify({
  plain: {
    id: plain.id,
    object: plain.object,
    status: plain.status,
    text: plain.output_text,
    item_types: plain.output.map((item) => item.type),
    output_tokens: plain.usage.output_tokens,
  },
  stream: {
    text,
    deltas: types.filter((t) => t === "response.output_text.delta").length,
    first: types[0],
    last: types[types.length - 1],
    sequence_consecutive: sequence.every((n, i) => i === 0 || n === sequence[i - 1] + 1),
    final_text: final ? textOf(final) : null,
    final_status: final ? final.status : null,
  },
  helper: { text: textOf(helper) },
  tool: {
    status: tool.status,
    item_types: tool.output.map((item) => item.type),
    name: call.name,
    call_id: call.call_id,
    arguments: call.arguments,
  },
}));
