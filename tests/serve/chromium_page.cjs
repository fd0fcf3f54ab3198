// Loads a page in headless Chromium, driven over the DevTools protocol (--remote-debugging-pipe),
// waits until a condition (a JavaScript expression) holds on the page or a deadline passes, then
// prints the page's DOM and saves a screenshot. It waits on the page's own state because
// --dump-dom's virtual-time budget counts the wait for a streamed body as idle: under load it
// dumped the chat page before its answer had arrived (or had finished arriving).
// On failure it exits 1 with the reason and Chromium's stderr.
// usage: node chromium_page.cjs URL CONDITION DEADLINE_S USER_DATA_DIR SCREENSHOT_PNG
const { spawn } = require('child_process');
const fs = require('fs');
const [url, condition, deadlineText, userDataDir, screenshot] = process.argv.slice(2);
const deadlineMs = Number(deadlineText) * 1000;

const chromium = spawn('chromium', ['--headless', '--no-sandbox', '--disable-gpu', '--remote-debugging-pipe',
                                    '--window-size=900,600', '--user-data-dir=' + userDataDir, 'about:blank'],
                       { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
let chromiumStderr = '';
chromium.stderr.on('data', (d) => { chromiumStderr += d; });

function fail(why) {
  process.stderr.write(why + '\n--- chromium stderr ---\n' + chromiumStderr);
  chromium.kill('SIGKILL');
  process.exit(1);
}
chromium.on('exit', (code, signal) => fail('chromium exited early (' + (signal || code) + ')'));
chromium.on('error', (e) => fail('chromium did not start: ' + e.message));

// The pipe carries NUL-terminated JSON messages: commands on fd 3, replies and events on fd 4.
let nextId = 1, received = '';
const pending = new Map();
chromium.stdio[4].on('data', (data) => {
  received += data;
  for (let end; (end = received.indexOf('\0')) >= 0;) {
    const message = JSON.parse(received.slice(0, end));
    received = received.slice(end + 1);
    const waiter = pending.get(message.id);
    if (!waiter) continue;
    pending.delete(message.id);
    if (message.error) waiter.reject(new Error(JSON.stringify(message.error)));
    else waiter.resolve(message.result);
  }
});
function command(method, params = {}, sessionId = undefined) {
  const id = nextId++;
  chromium.stdio[3].write(JSON.stringify({ id, method, params, sessionId }) + '\0');
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

async function main() {
  const start = Date.now();
  setTimeout(() => fail('no answer from chromium within ' + deadlineText + ' s'), deadlineMs).unref();
  const { targetId } = await command('Target.createTarget', { url: 'about:blank' });
  const { sessionId } = await command('Target.attachToTarget', { targetId, flatten: true });
  await command('Page.navigate', { url }, sessionId);
  const evaluate = async (expression) =>
    (await command('Runtime.evaluate', { expression, returnByValue: true }, sessionId)).result.value;
  while ((await evaluate(condition)) !== true) {
    if (Date.now() - start > deadlineMs) {
      fail('after ' + deadlineText + ' s the page still fails `' + condition + '`; its DOM:\n' +
           (await evaluate('document.documentElement.outerHTML')));
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const dom = await evaluate('document.documentElement.outerHTML');
  const shot = await command('Page.captureScreenshot', { format: 'png' }, sessionId);
  fs.writeFileSync(screenshot, Buffer.from(shot.data, 'base64'));
  process.stdout.write(dom);
  chromium.removeAllListeners('exit');
  chromium.kill('SIGTERM');
}
main().catch((e) => fail(String(e.stack || e)));
