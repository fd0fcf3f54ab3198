// Drives `crossmoe serve` with OpenAI's official Node client, greedy, and prints what came back
// as one JSON object (test_serve.cpp compares it with `crossmoe generate` and `crossmoe chat`).
// usage: node openai_client.cjs NODE_MODULES BASE_URL API_KEY PROMPT MESSAGE MAX_TOKENS
const [modules, baseURL, apiKey, prompt, message, maxTokensText] = process.argv.slice(2);
const OpenAI = require(require('path').join(modules, 'openai'));
const maxTokens = Number(maxTokensText);

async function collect(stream, pick) {
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.choices.length === 0) continue;
    text += pick(chunk.choices[0]) ?? '';
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  return { text, finish };
}

async function main() {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
  const out = {};
  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);

  const completion = await client.completions.create({ model: out.models[0], prompt, max_tokens: maxTokens, temperature: 0, seed: 1 });
  out.completion = { text: completion.choices[0].text, finish: completion.choices[0].finish_reason, usage: completion.usage };
  out.completion_stream = await collect(
    await client.completions.create({ model: out.models[0], prompt, max_tokens: maxTokens, temperature: 0, stream: true }),
    (c) => c.text);

  const messages = [{ role: 'user', content: message }];
  const chat = await client.chat.completions.create({ model: out.models[0], messages, max_completion_tokens: maxTokens, temperature: 0 });
  out.chat = { text: chat.choices[0].message.content, finish: chat.choices[0].finish_reason, usage: chat.usage };
  out.chat_stream = await collect(
    await client.chat.completions.create({ model: out.models[0], messages, max_tokens: maxTokens, temperature: 0, stream: true }),
    (c) => c.delta.content);

  // Requests at once, decoded together by the server, against the same requests one by one.
  const prompts = ['The', 'It was', 'In the morning', 'She said that', 'Of all the', prompt];
  const ask = (p) => client.completions.create({ model: out.models[0], prompt: p, max_tokens: maxTokens, temperature: 0 })
    .then((r) => r.choices[0].text);
  out.together = await Promise.all(prompts.map(ask));
  out.one_by_one = [];
  for (const p of prompts) out.one_by_one.push(await ask(p));

  try {
    await new OpenAI({ baseURL, apiKey: 'wrong', maxRetries: 0 }).models.list();
    out.wrong_key_status = 200;
  } catch (e) {
    out.wrong_key_status = e.status;
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(`error: ${e.stack || e}\n`);
  process.exit(1);
});
