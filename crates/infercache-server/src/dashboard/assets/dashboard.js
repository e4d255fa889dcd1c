// The infercache dashboard: polls /dashboard/data every few seconds and draws it with uPlot.
// Counters arrive cumulative; rates and per-interval hit rates are differences between
// consecutive samples. `window.dashboard` exposes the charts for tests and curious people.
(() => {
  'use strict';

  const KEY = 'infercache-admin-key';
  const KEEP_MS = 3600 * 1000;
  const COLORS = ['#1f77b4', '#2ca02c', '#d62728', '#ff7f0e', '#9467bd', '#8c564b',
    '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
  const INVALIDATION = '#d62728';
  const BREAKER = '#ff7f0e';

  const dash = {
    key: null,
    models: [],
    samples: [],
    marks: [],
    now: null,
    since: 0,
    intervalMs: 2000,
    charts: {},
    updates: 0,
    ready: false,
  };
  window.dashboard = dash;

  // ---- the admin key ----------------------------------------------------------------
  function readKey() {
    const m = location.hash.match(/(?:^#|&)key=([^&]*)/);
    if (m) {
      sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
      history.replaceState(null, '', location.pathname + location.search);
    }
    return sessionStorage.getItem(KEY);
  }

  function askKey(status) {
    const form = document.getElementById('key-form');
    form.hidden = false;
    document.getElementById('key-error').textContent =
      dash.key ? (status === 403 ? 'That key is not an admin key.' : 'That key was refused.') : '';
  }

  document.getElementById('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    dash.key = document.getElementById('key-input').value.trim();
    sessionStorage.setItem(KEY, dash.key);
    document.getElementById('key-form').hidden = true;
    poll();
  });

  // ---- series from samples ------------------------------------------------------------
  const points = () => (dash.now ? dash.samples.concat([dash.now]) : dash.samples.slice());
  const xs = (p) => p.map((s) => s.t / 1000);

  // Per second between consecutive samples of `f(sample)`.
  function rate(p, f) {
    return p.map((s, i) => {
      if (i === 0) return null;
      const a = f(p[i - 1]);
      const b = f(s);
      const dt = (s.t - p[i - 1].t) / 1000;
      if (a == null || b == null || dt <= 0) return null;
      return Math.max(0, b - a) / dt;
    });
  }

  // The share, in percent, of `hits` among `hits + misses` between consecutive samples.
  function ratio(p, hits, misses) {
    return p.map((s, i) => {
      if (i === 0) return null;
      const h = hits(s) - hits(p[i - 1]);
      const n = h + misses(s) - misses(p[i - 1]);
      return n > 0 ? (100 * h) / n : null;
    });
  }

  // `num(sample) / den(sample)` of the differences between consecutive samples.
  function perDelta(p, num, den) {
    return p.map((s, i) => {
      if (i === 0) return null;
      const a = num(p[i - 1]);
      const b = num(s);
      const c = den(p[i - 1]);
      const d = den(s);
      if (a == null || b == null || c == null || d == null) return null;
      return d - c > 0 ? (b - a) / (d - c) : null;
    });
  }

  const model = (s, i) => s.models[i];
  const modelHits = (m) => m.memory_hits + m.disk_hits + m.remote_hits;
  const sum = (s, f) => s.models.reduce((acc, m) => acc + f(m), 0);
  const tier = (name) => (s) => s[name];
  const tierHits = (name) => (s) => (s[name] ? s[name].hits : null);
  const MiB = 1024 * 1024;

  // Each chart: id, title, and `series(p)` giving [{label, values}], or null when the
  // chart does not apply (the tier is not configured), with a reason.
  const CHARTS = [
    {
      id: 'hit-rate-models', title: 'Hit rate per model (%)',
      series: (p) => dash.models.map((name, i) => ({
        label: name,
        values: ratio(p, (s) => modelHits(model(s, i)), (s) => model(s, i).misses),
      })),
    },
    {
      id: 'hit-rate-tiers', title: 'Hit rate per tier (%)',
      series: (p) => ['memory', 'disk', 'redis']
        .filter((t) => last(p)[t])
        .map((t) => ({
          label: t,
          values: ratio(p, (s) => (s[t] ? s[t].hits : 0), (s) => (s[t] ? s[t].misses : 0)),
        })),
    },
    {
      id: 'requests', title: 'Requests per second by outcome',
      series: (p) => ['hit', 'partial', 'miss', 'stale', 'error'].map((o) => ({
        label: o,
        values: rate(p, (s) => sum(s, (m) => m.requests[o])),
      })),
    },
    {
      id: 'latency', title: 'Latency of hits and misses (ms)',
      series: (p) => [['hit_p50', 'hit p50'], ['hit_p99', 'hit p99'],
        ['miss_p50', 'miss p50'], ['miss_p99', 'miss p99']].map(([k, label]) => ({
        label,
        values: p.map((s) => (s.latency[k] == null ? null : s.latency[k])),
      })),
    },
    {
      id: 'bytes', title: 'Bytes per tier against capacity (MiB)',
      series: (p) => ['memory', 'disk'].filter((t) => last(p)[t]).flatMap((t) => [
        { label: t, values: p.map((s) => (s[t] ? s[t].bytes / MiB : null)) },
        { label: `${t} capacity`, values: p.map((s) => (s[t] ? s[t].capacity / MiB : null)), dash: true },
      ]),
    },
    {
      id: 'index', title: 'Disk tier index in memory (MiB)',
      absent: (p) => (last(p).disk ? null : 'The disk tier is not configured.'),
      series: (p) => [
        { label: 'disk index', values: p.map((s) => (s.disk ? s.disk.index_bytes / MiB : null)) },
      ],
    },
    {
      id: 'entries', title: 'Entries per tier',
      series: (p) => ['memory', 'disk'].filter((t) => last(p)[t]).map((t) => ({
        label: t, values: p.map((s) => (s[t] ? s[t].entries : null)),
      })),
    },
    {
      id: 'churn', title: 'Evictions, expirations, corrupt records, I/O errors per second',
      series: (p) => ['memory', 'disk'].filter((t) => last(p)[t]).flatMap((t) => [
        { label: `${t} evictions`, values: rate(p, (s) => (s[t] ? s[t].evictions : null)) },
        { label: `${t} expirations`, values: rate(p, (s) => (s[t] ? s[t].expirations : null)) },
        { label: `${t} corrupt`, values: rate(p, (s) => (s[t] ? s[t].corrupt : null)) },
      ]).concat(last(p).disk ? [
        { label: 'disk I/O errors', values: rate(p, (s) => (s.disk ? s.disk.io_errors : null)) },
      ] : []),
    },
    {
      id: 'redis', title: 'Redis: round-trip time (ms) and errors per second',
      absent: (p) => (last(p).redis ? null : 'The Redis tier is not configured.'),
      series: (p) => [
        {
          label: 'round trip (ms)',
          values: perDelta(p, (s) => s.redis && s.redis.round_trip_micros / 1000,
            (s) => s.redis && s.redis.round_trips),
        },
        { label: 'errors/s', values: rate(p, (s) => s.redis && s.redis.errors) },
        { label: 'breaker open (1)', values: p.map((s) => (s.redis ? (s.redis.breaker === 'closed' ? 0 : 1) : null)) },
      ],
    },
    {
      id: 'batches', title: 'Rows per model call (batch size)',
      series: (p) => dash.models.map((name, i) => ({
        label: name,
        values: last(p).models[i].invocations != null
          ? perDelta(p, (s) => model(s, i).texts, (s) => model(s, i).invocations)
          : perDelta(p, (s) => model(s, i).rows, (s) => model(s, i).calls),
      })),
    },
    {
      id: 'queue', title: 'Queue depth: rows waiting for the cache or the model',
      series: (p) => dash.models.map((name, i) => ({
        label: name, values: p.map((s) => model(s, i).in_flight),
      })),
    },
    {
      id: 'upstream-errors', title: 'Upstream errors per second by status',
      series: (p) => {
        const labels = [];
        dash.models.forEach((name, i) => {
          Object.keys(last(p).models[i].upstream_errors).forEach((st) => labels.push([name, i, st]));
        });
        return [{
          label: 'all',
          values: rate(p, (s) => sum(s, (m) => Object.values(m.upstream_errors).reduce((a, b) => a + b, 0))),
        }].concat(labels.map(([name, i, st]) => ({
          label: `${name} ${st}`,
          values: rate(p, (s) => model(s, i).upstream_errors[st] || 0),
        })));
      },
    },
    {
      id: 'saved', title: 'Inference time saved by hits (s)',
      series: (p) => dash.models.map((name, i) => ({
        label: name, values: p.map((s) => model(s, i).saved_ms / 1000),
      })),
    },
  ];

  const last = (p) => p[p.length - 1];

  // ---- marks --------------------------------------------------------------------------
  function allMarks() {
    const p = points();
    const marks = dash.marks.map((m) => ({ t: m.t, what: m.what, color: INVALIDATION }));
    for (let i = 1; i < p.length; i++) {
      const a = p[i - 1].redis;
      const b = p[i].redis;
      if (a && b && a.breaker !== b.breaker) {
        marks.push({ t: p[i].t, what: `Redis breaker ${a.breaker} → ${b.breaker}`, color: BREAKER });
      }
    }
    return marks.sort((x, y) => x.t - y.t);
  }

  const marksPlugin = {
    hooks: {
      draw: [(u) => {
        const { ctx } = u;
        const { left, top, width, height } = u.bbox;
        ctx.save();
        ctx.lineWidth = 2 * devicePixelRatio;
        ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
        for (const m of allMarks()) {
          const x = u.valToPos(m.t / 1000, 'x', true);
          if (x < left || x > left + width) continue;
          ctx.strokeStyle = m.color;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
        }
        ctx.restore();
      }],
    },
  };

  // ---- drawing ------------------------------------------------------------------------
  function chartWidth(el) {
    return Math.max(300, el.clientWidth - 12);
  }

  function draw() {
    const p = points();
    if (p.length === 0) return;
    const root = document.getElementById('charts');
    for (const spec of CHARTS) {
      let box = document.getElementById(`chart-${spec.id}`);
      if (!box) {
        box = document.createElement('div');
        box.className = 'chart';
        box.id = `chart-${spec.id}`;
        box.innerHTML = `<h3>${spec.title}</h3><div class="plot"></div>`;
        root.appendChild(box);
      }
      const plot = box.querySelector('.plot');
      const absent = spec.absent ? spec.absent(p) : null;
      if (absent) {
        if (dash.charts[spec.id]) {
          dash.charts[spec.id].destroy();
          delete dash.charts[spec.id];
        }
        plot.innerHTML = `<div class="empty">${absent}</div>`;
        continue;
      }
      const series = spec.series(p);
      const data = [xs(p)].concat(series.map((s) => s.values));
      const labels = series.map((s) => s.label).join('\u0000');
      let u = dash.charts[spec.id];
      if (u && u.labels !== labels) {
        u.destroy();
        u = null;
      }
      if (!u) {
        plot.innerHTML = '';
        u = new uPlot({
          width: chartWidth(box),
          height: 200,
          plugins: [marksPlugin],
          scales: { x: { time: true } },
          axes: [{}, { size: 56 }],
          series: [{}].concat(series.map((s, i) => ({
            label: s.label,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            dash: s.dash ? [6, 4] : undefined,
            spanGaps: true,
            points: { show: true, size: 4 },
          }))),
        }, data, plot);
        u.labels = labels;
        dash.charts[spec.id] = u;
      } else {
        u.setData(data);
      }
    }
  }

  function fmtPct(x) {
    return `${(100 * x).toFixed(1)} %`;
  }

  function fmtBytes(b) {
    if (b >= 1024 * MiB) return `${(b / 1024 / MiB).toFixed(2)} GiB`;
    if (b >= MiB) return `${(b / MiB).toFixed(1)} MiB`;
    return `${(b / 1024).toFixed(1)} KiB`;
  }

  function figure(label, value, attrs) {
    const extra = Object.entries(attrs || {})
      .map(([k, v]) => ` ${k}="${String(v).replace(/"/g, '&quot;')}"`).join('');
    return `<div class="figure"><div class="label">${label}</div><div class="value"${extra}>${value}</div></div>`;
  }

  function escape(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
  }

  function drawFigures() {
    const s = dash.now;
    if (!s) return;
    let html = '';
    dash.models.forEach((name, i) => {
      const m = s.models[i];
      html += figure(`hit rate, ${escape(name)}`, fmtPct(m.hit_rate),
        { 'data-hit-rate-model': name, 'data-value': m.hit_rate });
      html += figure(`requests, ${escape(name)}`,
        Object.values(m.requests).reduce((a, b) => a + b, 0));
      html += figure(`inference saved, ${escape(name)}`, `${(m.saved_ms / 1000).toFixed(2)} s`);
    });
    for (const t of ['memory', 'disk']) {
      if (!s[t]) continue;
      const reserved = s[t].reserved_bytes ? `, ${fmtBytes(s[t].reserved_bytes)} of it to the disk index` : '';
      html += figure(`${t} used`, `${fmtBytes(s[t].bytes)} of ${fmtBytes(s[t].capacity)}${reserved}`);
    }
    if (s.disk) html += figure('disk tier', s.disk.degraded ? 'degraded' : 'ok', { 'data-disk': s.disk.degraded ? 'degraded' : 'ok' });
    if (s.redis) html += figure('Redis breaker', s.redis.breaker);
    document.getElementById('figures').innerHTML = html;
  }

  function drawStatus() {
    const s = dash.now;
    const el = document.getElementById('status');
    const lines = [];
    let level = 'warn';
    if (s.draining) {
      lines.push('Draining: this server is shutting down and refuses new requests (503).');
      level = 'bad';
    }
    if (s.disk && s.disk.degraded) {
      lines.push(`Disk tier degraded: its reads or writes fail (${s.disk.io_errors} I/O errors); it is skipped, requests are served from memory and the model, until the disk answers.`);
    }
    if (s.redis && s.redis.breaker !== 'closed') {
      lines.push(`Redis tier degraded: its circuit breaker is ${s.redis.breaker.replace('_', '-')}; lookups there miss and writes are dropped.`);
    } else if (s.redis && !s.redis.connected) {
      lines.push('Redis tier degraded: not in use until it answers and this node\u2019s epochs are in sync.');
    }
    el.hidden = lines.length === 0;
    el.className = level;
    el.innerHTML = lines.map((l) => `<p>${escape(l)}</p>`).join('');
  }

  function drawMarks() {
    const ul = document.getElementById('marks');
    const marks = allMarks();
    ul.innerHTML = marks.length === 0
      ? '<li class="muted">none in the last hour</li>'
      : marks.slice().reverse().map((m) =>
        `<li><span style="color:${m.color}">\u25cf</span> ${new Date(m.t).toLocaleTimeString()} ${escape(m.what)}</li>`).join('');
  }

  // ---- polling ------------------------------------------------------------------------
  function setUpdated(text, bad) {
    const el = document.getElementById('updated');
    el.textContent = text;
    el.className = bad ? 'bad' : 'muted';
  }

  let timer = null;
  async function poll() {
    clearTimeout(timer);
    const headers = dash.key ? { Authorization: `Bearer ${dash.key}` } : {};
    try {
      const r = await fetch(`/dashboard/data?since=${dash.since}`, { headers, cache: 'no-store' });
      if (r.status === 401 || r.status === 403) {
        askKey(r.status);
        setUpdated('needs an admin key', true);
        return;
      }
      if (!r.ok) {
        setUpdated(`the server answered ${r.status}`, true);
      } else {
        take(await r.json());
        draw();
        drawFigures();
        drawStatus();
        drawMarks();
        dash.updates += 1;
        dash.ready = true;
        setUpdated(`updated ${new Date(dash.now.t).toLocaleTimeString()}`, false);
      }
    } catch (e) {
      setUpdated(`the server does not answer (${e.message})`, true);
    }
    timer = setTimeout(poll, dash.intervalMs);
  }

  function take(d) {
    dash.intervalMs = d.interval_ms;
    dash.models = d.models;
    for (const s of d.samples) {
      if (dash.samples.length === 0 || s.t > dash.samples[dash.samples.length - 1].t) dash.samples.push(s);
    }
    for (const m of d.marks) {
      if (!dash.marks.some((x) => x.t === m.t && x.what === m.what)) dash.marks.push(m);
    }
    const oldest = d.now.t - KEEP_MS;
    dash.samples = dash.samples.filter((s) => s.t >= oldest);
    dash.marks = dash.marks.filter((m) => m.t >= oldest);
    if (dash.samples.length > 0) dash.since = dash.samples[dash.samples.length - 1].t;
    dash.now = d.now;
  }

  window.addEventListener('resize', () => {
    for (const [id, u] of Object.entries(dash.charts)) {
      u.setSize({ width: chartWidth(document.getElementById(`chart-${id}`)), height: 200 });
    }
  });

  dash.key = readKey();
  poll();
})();
