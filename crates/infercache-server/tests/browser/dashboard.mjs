// Opens the dashboard in Debian's Chromium (headless) and reports what a person would see,
// as one JSON object on stdout: console errors, every chart's drawn points and inked
// pixels, the hit-rate figures, the status banner. Writes a screenshot.
//
// usage: node dashboard.mjs URL SCREENSHOT [CHROMIUM]
// URL is the page's full address, e.g. http://127.0.0.1:PORT/dashboard#key=ADMIN_KEY.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, screenshot, executablePath = '/usr/bin/chromium'] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node dashboard.mjs URL SCREENSHOT [CHROMIUM]');
  process.exit(2);
}

// The flags this machine's Chromium needs: no sandbox as root, no GPU, and no background
// connections (the network is closed), in a fresh profile.
const profile = mkdtempSync(join(tmpdir(), 'infercache-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const errors = [];
try {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`page: ${e.message}`));
  page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  await page.goto(url, { waitUntil: 'load' });
  // Two updates: the first draw, and one poll after it.
  await page.waitForFunction(() => window.dashboard && window.dashboard.updates >= 2,
    null, { timeout: 30000 });
  const report = await page.evaluate(() => {
    const d = window.dashboard;
    const charts = {};
    for (const box of document.querySelectorAll('.chart')) {
      const id = box.id.replace(/^chart-/, '');
      const u = d.charts[id];
      const canvas = box.querySelector('canvas');
      let inked = 0;
      if (canvas) {
        // Pixels of the plot area that a series or mark coloured (not white, not grey grid).
        const ctx = canvas.getContext('2d');
        const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
        for (let i = 0; i < data.length; i += 4) {
          const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
          if (a > 0 && (Math.max(r, g, b) - Math.min(r, g, b)) > 40) inked += 1;
        }
      }
      charts[id] = {
        title: box.querySelector('h3').textContent,
        empty: box.querySelector('.empty')?.textContent ?? null,
        series: u ? u.series.length - 1 : 0,
        x: u ? u.data[0].length : 0,
        points: u ? u.data.slice(1).reduce((n, ys) => n + ys.filter((y) => y != null).length, 0) : 0,
        inked,
      };
    }
    const hitRates = {};
    for (const el of document.querySelectorAll('[data-hit-rate-model]')) {
      hitRates[el.dataset.hitRateModel] = { text: el.textContent, value: Number(el.dataset.value) };
    }
    const status = document.getElementById('status');
    return {
      charts,
      hitRates,
      status: status.hidden ? '' : status.textContent,
      marks: [...document.querySelectorAll('#marks li')].map((li) => li.textContent),
      address: location.href,
    };
  });
  await page.screenshot({ path: screenshot, fullPage: true });
  report.errors = errors;
  process.stdout.write(`${JSON.stringify(report)}\n`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
