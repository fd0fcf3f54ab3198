// Load on `crossmoe serve`, loopback only, bounded in count and time: C clients at once, each
// streaming R completions one after another. Prints one JSON line per concurrency: requests,
// generated tokens, wall seconds, tokens/s over all clients, time to first token and inter-token
// latency percentiles (ms). bench/serve_load.sh runs it against a batching server and a
// one-at-a-time server (--max-batch 1) in the same run.
// usage: node serve_load.cjs BASE_URL CLIENTS[,CLIENTS...] REQUESTS_PER_CLIENT MAX_TOKENS
const [base, clientsList, perClientText, maxTokensText] = process.argv.slice(2);
const perClient = Number(perClientText), maxTokens = Number(maxTokensText);
const words = 'the cat sat on a mat and looked at morning sun while she said that all people in town had gone to sea'.split(' ');

function prompt(seed) {
  let s = '';
  // Non-negative index: the warm-up's seed is -1, and % keeps the sign in JavaScript.
  for (let i = 0; i < 48; ++i) s += words[(((seed * 7 + i * 13 + (i * i) % 5) % words.length) + words.length) % words.length] + ' ';
  return s;
}

async function one(seed, ttft, itl) {
  const start = performance.now();
  const response = await fetch(base + '/v1/completions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: prompt(seed), max_tokens: maxTokens, temperature: 0, stream: true,
                           stream_options: { include_usage: true } }),
    signal: AbortSignal.timeout(600000) });
  if (!response.ok) throw new Error('HTTP ' + response.status + ': ' + await response.text());
  const decoder = new TextDecoder();
  let pending = '', last = null, tokens = 0;
  for await (const bytes of response.body) {
    pending += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = pending.indexOf('\n\n')) >= 0) {
      const event = pending.slice(0, end);
      pending = pending.slice(end + 2);
      if (event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice(6));
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      if (!chunk.choices.length || !chunk.choices[0].text) continue;
      const now = performance.now();
      if (last === null) ttft.push(now - start); else itl.push(now - last);
      last = now;
    }
  }
  return tokens;
}

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return Number(sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))].toFixed(1));
}

async function main() {
  await one(-1, [], []);  // warm-up: pages the weights in
  for (const clients of clientsList.split(',').map(Number)) {
    const ttft = [], itl = [];
    const start = performance.now();
    const counts = await Promise.all(Array.from({ length: clients }, async (_, c) => {
      let n = 0;
      for (let r = 0; r < perClient; ++r) n += await one(c * perClient + r, ttft, itl);
      return n;
    }));
    const seconds = (performance.now() - start) / 1000;
    const tokens = counts.reduce((a, b) => a + b, 0);
    console.log(JSON.stringify({ clients, requests: clients * perClient, tokens, seconds: Number(seconds.toFixed(2)),
      tokens_per_second: Number((tokens / seconds).toFixed(1)),
      ttft_ms: { p50: percentile(ttft, 50), p90: percentile(ttft, 90), p99: percentile(ttft, 99) },
      itl_ms: { p50: percentile(itl, 50), p90: percentile(itl, 90), p99: percentile(itl, 99) } }));
  }
}

main().catch((e) => { console.error('error: ' + (e.stack || e)); process.exit(1); });
