// One chat and one stream through the official Node `openai` SDK, unchanged.
// Usage: node openai_sdk.mjs BASE_URL MODEL   (prints a JSON summary)
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "none", maxRetries: 0 });
const messages = [{ role: "developer", content: "Be brief." }, { role: "user", content: "Hello!" }];

const chat = await client.chat.completions.create({ model, messages, max_tokens: 5, temperature: 0 });
const stream = await client.chat.completions.create({ model, messages, max_tokens: 5, temperature: 0, stream: true });
let text = "", chunks = 0, finish = null;
for await (const chunk of stream) {
  chunks += 1;
  const choice = chunk.choices[0];
  if (choice?.delta?.content) text += choice.delta.content;
  if (choice?.finish_reason) finish = choice.finish_reason;
}
console.log(JSON.stringify({
  chat: { text: chat.choices[0].message.content, finish_reason: chat.choices[0].finish_reason,
          completion_tokens: chat.usage.completion_tokens },
  stream: { text, chunks, finish_reason: finish },
}));
