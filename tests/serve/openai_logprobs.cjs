// Asks `crossmoe serve` for log-probabilities through OpenAI's official Node client, greedy, in
// both APIs' shapes, streaming and not, and prints them as one JSON object (test_serve.cpp checks
// them against the log-softmax of full forward passes).
// usage: node openai_logprobs.cjs NODE_MODULES BASE_URL API_KEY PROMPT MESSAGE MAX_TOKENS TOP
const [modules, baseURL, apiKey, prompt, message, maxTokensText, topText] = process.argv.slice(2);
const OpenAI = require(require('path').join(modules, 'openai'));
const maxTokens = Number(maxTokensText), top = Number(topText);

async function main() {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
  const model = (await client.models.list()).data[0].id;
  const out = {};

  // Completions: logprobs N; the stream's lists are concatenated over its chunks.
  const completion = await client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0, logprobs: top });
  out.completion = { text: completion.choices[0].text, logprobs: completion.choices[0].logprobs };
  const merged = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  let text = '';
  for await (const chunk of await client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0,
                                                               logprobs: top, stream: true })) {
    if (!chunk.choices.length) continue;
    text += chunk.choices[0].text;
    const l = chunk.choices[0].logprobs;
    if (l) for (const key of Object.keys(merged)) merged[key].push(...l[key]);
  }
  out.completion_stream = { text, logprobs: merged };

  // Chat: logprobs true and top_logprobs N.
  const messages = [{ role: 'user', content: message }];
  const chat = await client.chat.completions.create({ model, messages, max_completion_tokens: maxTokens, temperature: 0,
                                                      logprobs: true, top_logprobs: top });
  out.chat = { text: chat.choices[0].message.content, content: chat.choices[0].logprobs.content };
  const content = [];
  text = '';
  for await (const chunk of await client.chat.completions.create({ model, messages, max_tokens: maxTokens, temperature: 0,
                                                                   logprobs: true, top_logprobs: top, stream: true })) {
    if (!chunk.choices.length) continue;
    text += chunk.choices[0].delta.content ?? '';
    if (chunk.choices[0].logprobs) content.push(...chunk.choices[0].logprobs.content);
  }
  out.chat_stream = { text, content };
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(`error: ${e.stack || e}\n`);
  process.exit(1);
});
